//! The catalogue in force, which a reload of the tracking plan replaces while the collector
//! runs.
//!
//! Each stage takes the catalogue once per unit of work (a request, a round of spool records)
//! and uses that one throughout: rows mapped by one catalogue are placed in its tables, and the
//! [generation](super::Catalog::generation) tells the writer whether the receiver's cached rows
//! were mapped by the catalogue it writes with (if not, it decodes them from the spool record,
//! which names its tables and columns).

use std::sync::{Arc, RwLock};

use super::Catalog;

/// A shared handle to the catalogue in force.
#[derive(Debug, Clone)]
pub struct Current {
    inner: Arc<RwLock<Arc<Catalog>>>,
}

impl Current {
    /// A handle starting with `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(catalog))),
        }
    }

    /// The catalogue in force now.
    pub fn get(&self) -> Arc<Catalog> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `catalog` in force; work already under way finishes with the one it took.
    pub fn replace(&self, catalog: Catalog) {
        *self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(catalog);
    }
}

impl From<Arc<Catalog>> for Current {
    fn from(catalog: Arc<Catalog>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(catalog)),
        }
    }
}

impl From<Catalog> for Current {
    fn from(catalog: Catalog) -> Self {
        Self::new(catalog)
    }
}
