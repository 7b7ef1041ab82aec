//! The summaries the collector keeps, against a recount from the raw rows: the queries, and an
//! assertion that they agree (the built-in plan's counts; both databases).

use crate::db::TestDb;

/// Per day and service: sessions started, page visits, program runs, failed runs, feature uses and
/// other events, counted from the raw rows.
pub const RECOUNT_DAYS: &str = "SELECT CAST(day AS CHAR), service, CAST(SUM(s) AS CHAR), \
    CAST(SUM(p) AS CHAR), CAST(SUM(r) AS CHAR), CAST(SUM(e) AS CHAR), CAST(SUM(f) AS CHAR), \
    CAST(SUM(o) AS CHAR) FROM ( \
    SELECT DATE(start_time) AS day, service, COUNT(*) AS s, 0 AS p, 0 AS r, 0 AS e, 0 AS f, \
        0 AS o FROM ide_sessions GROUP BY DATE(start_time), service \
    UNION ALL SELECT DATE(`timestamp`), service, 0, COUNT(*), 0, 0, 0, 0 FROM page_visits \
        GROUP BY DATE(`timestamp`), service \
    UNION ALL SELECT DATE(`timestamp`), service, 0, 0, COUNT(*), \
        SUM(CASE WHEN success THEN 0 ELSE 1 END), 0, 0 FROM program_executions \
        GROUP BY DATE(`timestamp`), service \
    UNION ALL SELECT DATE(`timestamp`), service, 0, 0, 0, 0, COUNT(*), 0 FROM feature_usage \
        GROUP BY DATE(`timestamp`), service \
    UNION ALL SELECT DATE(`timestamp`), service, 0, 0, 0, 0, 0, COUNT(*) FROM usage_events \
        GROUP BY DATE(`timestamp`), service \
    ) AS raw GROUP BY day, service ORDER BY 1, 2";

/// The same columns, as `daily_usage_by_service` holds them (days with any count).
pub const ROLLUP_DAYS: &str = "SELECT CAST(`date` AS CHAR), service, CAST(SUM(sessions) AS CHAR), \
    CAST(SUM(page_visits) AS CHAR), CAST(SUM(programs_run) AS CHAR), \
    CAST(SUM(program_errors) AS CHAR), CAST(SUM(features_used) AS CHAR), \
    CAST(SUM(other_events) AS CHAR) FROM daily_usage_by_service GROUP BY `date`, service \
    HAVING SUM(sessions) <> 0 OR SUM(page_visits) <> 0 OR SUM(programs_run) <> 0 \
    OR SUM(program_errors) <> 0 OR SUM(features_used) <> 0 OR SUM(other_events) <> 0 \
    ORDER BY 1, 2";

/// Per session: runs, lines executed, failed runs, page visits, feature uses and the earliest
/// row's time, counted from the raw rows.
pub const RECOUNT_SESSIONS: &str = "SELECT s.service, s.session_id, \
    CAST((SELECT COUNT(*) FROM program_executions p WHERE p.service = s.service \
        AND p.session_id = s.session_id) AS CHAR), \
    CAST((SELECT COALESCE(SUM(p.lines_executed), 0) FROM program_executions p \
        WHERE p.service = s.service AND p.session_id = s.session_id) AS CHAR), \
    CAST((SELECT COUNT(*) FROM program_executions p WHERE p.service = s.service \
        AND p.session_id = s.session_id AND NOT p.success) AS CHAR), \
    CAST((SELECT COUNT(*) FROM page_visits p WHERE p.service = s.service \
        AND p.session_id = s.session_id) AS CHAR), \
    CAST((SELECT COUNT(*) FROM feature_usage f WHERE f.service = s.service \
        AND f.session_id = s.session_id) AS CHAR), \
    CAST((SELECT MIN(t) FROM (SELECT `timestamp` AS t, service, session_id FROM page_visits \
        UNION ALL SELECT `timestamp`, service, session_id FROM program_executions \
        UNION ALL SELECT `timestamp`, service, session_id FROM feature_usage \
        UNION ALL SELECT `timestamp`, service, session_id FROM usage_events) AS e \
        WHERE e.service = s.service AND e.session_id = s.session_id) AS CHAR) \
    FROM ide_sessions s ORDER BY 1, 2";

/// The same columns, as `ide_sessions` holds them (the last: its start).
pub const SESSION_COUNTERS: &str = "SELECT service, session_id, CAST(programs_run AS CHAR), \
    CAST(lines_executed AS CHAR), CAST(errors_encountered AS CHAR), CAST(page_visits AS CHAR), \
    CAST(features_used AS CHAR), CAST(start_time AS CHAR) FROM ide_sessions ORDER BY 1, 2";

/// Asserts that `daily_usage_by_service` and every session's counters equal a recount from the
/// raw rows.
pub async fn assert_summaries_match(db: &TestDb) {
    assert_eq!(
        db.texts(ROLLUP_DAYS).await,
        db.texts(RECOUNT_DAYS).await,
        "daily rollup = recount from the raw rows"
    );
    let kept = db.texts(SESSION_COUNTERS).await;
    let counted = db.texts(RECOUNT_SESSIONS).await;
    assert_eq!(kept.len(), counted.len());
    for (kept, counted) in kept.iter().zip(&counted) {
        assert_eq!(kept[..7], counted[..7], "session counters = recount");
    }
}

/// A row read back, every column as text.
pub type Texts = Vec<Option<String>>;

/// Where the summaries differ from a recount of the raw rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatches {
    /// (day, service) rows of the rollup that differ from the recount (either side's).
    pub days: Vec<Texts>,
    /// Sessions whose counters differ from the recount: (kept, recounted).
    pub sessions: Vec<(Texts, Texts)>,
    /// (day, service) pairs recounted (0 means the raw tables are empty).
    pub days_counted: usize,
    /// Sessions recounted.
    pub sessions_counted: usize,
}

impl Mismatches {
    /// Counter mismatches in all: rollup rows and sessions.
    pub fn count(&self) -> usize {
        self.days.len() + self.sessions.len()
    }
}

/// Compares the rollup and every session's counters (programs run, lines executed, errors,
/// page visits, features used; the start to the second) with a recount of the raw rows.
pub async fn mismatches(db: &TestDb) -> Mismatches {
    let kept = db.texts(ROLLUP_DAYS).await;
    let recount = db.texts(RECOUNT_DAYS).await;
    let mut days: Vec<Texts> = kept
        .iter()
        .filter(|row| !recount.contains(row))
        .chain(recount.iter().filter(|row| !kept.contains(row)))
        .cloned()
        .collect();
    days.dedup();
    let sessions = db.texts(SESSION_COUNTERS).await;
    let counted = db.texts(RECOUNT_SESSIONS).await;
    let mut wrong = Vec::new();
    for (kept, counted) in sessions.iter().zip(&counted) {
        let start = |row: &Texts| row[7].as_deref().map(|t| t[..19].to_owned());
        if kept[..7] != counted[..7] || start(kept) != start(counted) {
            wrong.push((kept.clone(), counted.clone()));
        }
    }
    assert_eq!(sessions.len(), counted.len(), "one recount per session");
    Mismatches {
        days,
        sessions: wrong,
        days_counted: recount.len(),
        sessions_counted: counted.len(),
    }
}
