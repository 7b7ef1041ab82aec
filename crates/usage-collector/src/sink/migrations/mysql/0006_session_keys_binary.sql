-- Session ids and service names of sessions compare byte for byte, as the collector compares
-- them (and as SQLite does): under the tables' case- and accent-insensitive collation, `ABC`
-- and `abc` were one key to MySQL but two sessions to the collector, whose insert of the
-- second then collided with the first. Existing rows stay as they are (keys unique without
-- regard to case are unique byte for byte too); from now on ids that differ only in case,
-- accents or trailing spaces are separate sessions. One statement: it applies whole or not at
-- all.
ALTER TABLE ide_sessions
    MODIFY session_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY service VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
