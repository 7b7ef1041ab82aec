//! Which collector releases a schema serves, for rolling upgrades.
//!
//! Migrations are expand-then-contract: a migration that only adds (a table, a column with a
//! default, a key) lets the previous release keep writing beside the new one, and the last
//! collectors of the previous release can finish their spools while the new ones start. Each
//! migration records, in `schema_releases`, the oldest release that writes correctly beside
//! it; a schema serves every release from the newest of those up to the newest release that
//! knows all its migrations. A migration that removes or changes what an older release uses
//! (a contract step) records the first release that no longer needs it, and ships a release
//! after the one that stopped using it.

use std::cmp::Ordering;

/// This collector's release.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// `a` compared with `b` as dotted release numbers (`0.10.0` after `0.9.1`).
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    let parts = |r: &str| -> Vec<u64> {
        r.split(['.', '-'])
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// What a schema serves, as `check` and `status` say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serves {
    /// The highest migration applied.
    pub schema_version: i64,
    /// The highest migration this collector has.
    pub own_version: i64,
    /// The oldest release that may write on it (from `schema_releases`).
    pub oldest_release: String,
}

impl Serves {
    /// True when this release may write on the schema: it has every migration applied (or
    /// those it lacks let it write), and none applied needs a newer release.
    pub fn serves_this_release(&self) -> bool {
        compare_releases(&self.oldest_release, RELEASE) != Ordering::Greater
    }

    /// One line: the versions and the releases served.
    pub fn describe(&self) -> String {
        let newest = if self.schema_version > self.own_version {
            "newer releases (it has migrations this one does not know)".to_owned()
        } else {
            format!("{RELEASE} (this one)")
        };
        format!(
            "schema version {} (this collector's: {}); it serves collector releases {} to {newest}",
            self.schema_version, self.own_version, self.oldest_release
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_by_number() {
        assert_eq!(compare_releases("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_releases("0.1.0", "0.1.0"), Ordering::Equal);
        assert_eq!(compare_releases("0.1", "0.1.0"), Ordering::Less);
        let serves = Serves {
            schema_version: 8,
            own_version: 8,
            oldest_release: "0.1.0".into(),
        };
        assert!(serves.serves_this_release());
        assert!(
            serves
                .describe()
                .ends_with("serves collector releases 0.1.0 to 0.2.0 (this one)")
        );
        let newer = Serves {
            oldest_release: "9.0.0".into(),
            ..serves
        };
        assert!(!newer.serves_this_release());
    }
}
