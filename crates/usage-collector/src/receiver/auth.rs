//! Bearer tokens bound to the services they may write as.
//!
//! The tokens file holds one token a line, optionally followed by the `service.name` values it
//! may write as (comma-separated; none or `*`: any service); `#` starts a comment:
//!
//! ```text
//! # web IDE pods
//! 3f9c…e1  web-ide
//! 77aa…02  billing, billing-batch
//! c0de…ff  *
//! ```
//!
//! With a tokens file, a request without `authorization: Bearer <token>` or with an unknown
//! token gets `UNAUTHENTICATED`; a request with a resource whose `service.name` its token may
//! not write as gets `PERMISSION_DENIED`, and nothing of it is written. Tokens are compared in
//! constant time and never logged or put in a metric. The file is read again when it changes
//! (a rotated Kubernetes secret), checked every [`RELOAD_EVERY`]; a file that no longer parses
//! is logged and the tokens read before stay in force.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::Status;

/// How often the tokens file is checked for changes.
pub use crate::net::tls::RELOAD_EVERY;

/// The services a caller may write as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Any service (no tokens file, or a token bound to `*`).
    Any,
    /// Only these `service.name` values.
    Services(BTreeSet<String>),
}

impl Allowed {
    /// True when `service` may be written as.
    pub fn permits(&self, service: &str) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Services(services) => services.contains(service),
        }
    }
}

#[derive(Debug)]
struct Entry {
    token: SecretString,
    allowed: Allowed,
}

/// The tokens file cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// It cannot be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a token (and no token is printed).
    #[error("tokens file {path}: line {line}: {problem}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The tokens in force, read from a file and read again when it changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    entries: RwLock<Vec<Entry>>,
    /// (modified, length) of the file last read.
    seen: RwLock<Option<(SystemTime, u64)>>,
}

/// Why a request was refused, as a metric's reason label.
pub const REASONS: [&str; 2] = ["unauthenticated", "permission_denied"];

fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, AuthError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (token, services) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(t, s)| (t, s.trim()));
        if token.len() < 16 {
            return Err(AuthError::Parse {
                path: path.to_owned(),
                line: index + 1,
                problem: "a token must be at least 16 characters",
            });
        }
        let names: BTreeSet<String> = services
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let allowed = if names.is_empty() || names.contains("*") {
            Allowed::Any
        } else {
            Allowed::Services(names)
        };
        entries.push(Entry {
            token: SecretString::from(token.to_owned()),
            allowed,
        });
    }
    Ok(entries)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Tokens {
    /// Reads the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let tokens = Self {
            path: path.to_owned(),
            entries: RwLock::default(),
            seen: RwLock::default(),
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// Reads the file again; the tokens in force change only if it parses.
    fn reload(&self) -> Result<usize, AuthError> {
        let seen = stamp(&self.path);
        let text = std::fs::read_to_string(&self.path).map_err(|source| AuthError::Read {
            path: self.path.clone(),
            source,
        })?;
        let entries = parse(&self.path, &text)?;
        let count = entries.len();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = seen;
        Ok(count)
    }

    /// Reads the file again whenever it changes, until the task is aborted.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            let now = stamp(&self.path);
            if now == *self.seen.read().unwrap_or_else(|e| e.into_inner()) {
                continue;
            }
            match self.reload() {
                Ok(count) => {
                    tracing::info!(file = %self.path.display(), tokens = count, "tokens file read again")
                }
                Err(error) => {
                    // Keep what is in force; retry when the file changes again.
                    *self.seen.write().unwrap_or_else(|e| e.into_inner()) = now;
                    tracing::error!(error = %error, "tokens file changed but cannot be used; the tokens read before stay in force");
                }
            }
        }
    }

    /// The services the bearer of the request's `authorization` header may write as.
    pub fn check(&self, authorization: Option<&http::HeaderValue>) -> Result<Allowed, Status> {
        let presented = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this collector needs `authorization: Bearer <token>` (see its tokens file)",
                )
            })?;
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        // Every entry is compared, in constant time, so the time taken tells nothing.
        let mut found = None;
        for entry in entries.iter() {
            let matches: bool = entry
                .token
                .expose_secret()
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .into();
            if matches && found.is_none() {
                found = Some(entry.allowed.clone());
            }
        }
        found.ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_services_and_comments_are_ignored() {
        let path = Path::new("tokens");
        let entries = parse(
            path,
            "# web\nabcdefghijklmnop  web-ide\nqrstuvwxyz012345 billing, batch # two\n0123456789abcdef *\n\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert!(entries[0].allowed.permits("web-ide"));
        assert!(!entries[0].allowed.permits("billing"));
        assert!(entries[1].allowed.permits("batch"));
        assert_eq!(entries[2].allowed, Allowed::Any);
        let error = parse(path, "short web-ide\n").unwrap_err().to_string();
        assert!(
            error.contains("line 1") && !error.contains("short"),
            "{error}"
        );
    }
}
