//! The catalogue's settings: which tracking plan, what becomes of records that are not usage
//! events, and what is kept of the people behind the events. They are declared here, beside
//! the code that reads them; `config` only gathers them into the collector's settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use usage_tracker::catalog::plan::{self, Plan, PlanError};

/// Which events the collector writes and what it does with other records.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CatalogSettings {
    /// The tracking plan (a TOML file, docs/tracking-plan.md): events, tables and columns;
    /// read again on SIGHUP and when it changes [default: the built-in plan]
    #[arg(
        id = "catalog.file",
        long = "catalog-file",
        env = "USAGE_CATALOG_FILE",
        global = true
    )]
    pub file: Option<PathBuf>,
    /// Records that are not usage events (an app's own spans: no event name, not declared,
    /// not under the usage-tracker's scope): refused and counted (`refuse`), or stored in
    /// usage_events as before (`store`)
    #[arg(
        id = "catalog.non_usage_records",
        long = "non-usage-records",
        env = "USAGE_NON_USAGE_RECORDS",
        value_enum,
        default_value = "refuse",
        global = true
    )]
    pub non_usage_records: NonUsageRecords,
}

/// The tracking plan cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read the tracking plan {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid plan.
    #[error("tracking plan {path}: {error}")]
    Plan {
        /// The file.
        path: PathBuf,
        /// Every problem in it.
        error: PlanError,
    },
}

impl CatalogSettings {
    /// The plan these settings name: the file's, or the built-in one.
    pub fn load(&self) -> Result<Arc<Plan>, LoadError> {
        match &self.file {
            None => Ok(Arc::new(plan::built_in().clone())),
            Some(path) => read_plan(path).map(Arc::new),
        }
    }
}

/// Reads and checks a plan file.
pub fn read_plan(path: &Path) -> Result<Plan, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Plan::parse(&text).map_err(|error| LoadError::Plan {
        path: path.to_owned(),
        error,
    })
}

/// What becomes of a record that is not a usage event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NonUsageRecords {
    /// It writes no row: it is counted, and the sender hears it through partial success.
    #[default]
    Refuse,
    /// It is stored in `usage_events`, named by its span name.
    Store,
}

/// What the collector keeps of the people behind the events.
#[derive(Debug, Clone, clap::Args)]
pub struct PrivacySettings {
    /// Client addresses: stored as sent (`off`), cut to their network (`truncate`: IPv4 /24,
    /// IPv6 /48), or not stored (`drop`); applied before the spool
    #[arg(
        id = "privacy.ip_anonymization",
        long = "ip-anonymization",
        env = "USAGE_IP_ANONYMIZATION",
        value_enum,
        default_value = "off",
        global = true
    )]
    pub ip_anonymization: IpAnonymization,
}

/// What is kept of a client address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IpAnonymization {
    /// As sent (what the old tracker stored, and its users' queries expect).
    #[default]
    Off,
    /// Its network only: IPv4 /24 (`203.0.113.77` → `203.0.113.0`), IPv6 /48
    /// (`2001:db8:abcd:12::1` → `2001:db8:abcd::`); a value that is not an address is dropped.
    Truncate,
    /// Nothing: stored as NULL.
    Drop,
}

impl IpAnonymization {
    /// What is kept of `address`.
    pub fn apply(self, address: String) -> Option<String> {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        match self {
            IpAnonymization::Off => Some(address),
            IpAnonymization::Drop => None,
            IpAnonymization::Truncate => {
                let ip = address
                    .parse::<IpAddr>()
                    .or_else(|_| address.parse::<SocketAddr>().map(|s| s.ip()))
                    .ok()?;
                Some(match ip {
                    IpAddr::V4(v4) => {
                        let [a, b, c, _] = v4.octets();
                        Ipv4Addr::new(a, b, c, 0).to_string()
                    }
                    IpAddr::V6(v6) => {
                        let s = v6.segments();
                        Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_cut_to_their_network_or_dropped() {
        let truncate = |a: &str| IpAnonymization::Truncate.apply(a.to_owned());
        assert_eq!(truncate("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            truncate("2001:db8:abcd:12::1").as_deref(),
            Some("2001:db8:abcd::")
        );
        assert_eq!(
            truncate("203.0.113.77:5050").as_deref(),
            Some("203.0.113.0")
        );
        assert_eq!(truncate("not-an-address"), None);
        assert_eq!(IpAnonymization::Drop.apply("203.0.113.77".into()), None);
        assert_eq!(
            IpAnonymization::Off.apply("203.0.113.77".into()).as_deref(),
            Some("203.0.113.77")
        );
    }
}
