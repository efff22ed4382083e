//! Noticing that files changed: polled fingerprints and SIGHUP.
//!
//! What a process rereads while it runs (the hub's tokens file, certificates, CA bundles and
//! trusted keys) is watched the same way: a fingerprint (modification time, length, inode) of
//! each file compared every second, plus SIGHUP. Polling needs no extra crate, works on every
//! file system (network and overlay mounts, where inotify is silent) and sees the symlink swaps
//! by which Kubernetes updates mounted Secrets and ConfigMaps. One `stat` per file per second
//! costs nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::ConfigError;
use crate::ops::CommonMetrics;

/// How often watched files are examined.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the poller compares to notice that a file changed. The length catches most edits even
/// on file systems with coarse timestamps, and the inode catches editors and Kubernetes
/// ConfigMaps that replace the file (or a symlink) instead of writing in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// `None` when the file cannot be examined (missing, unreadable directory).
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    // `metadata` follows symlinks, so a swapped symlink target shows up as a new inode.
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// A set of files and their fingerprints when last read.
#[derive(Debug, Clone)]
pub struct Watched {
    files: Vec<(PathBuf, Option<Fingerprint>)>,
}

impl Watched {
    /// Fingerprints `paths` now: what a load that starts next will read.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Watched {
            files: paths
                .into_iter()
                .map(|p| {
                    let f = fingerprint(&p);
                    (p, f)
                })
                .collect(),
        }
    }

    /// Whether any file looks different from when this set was made.
    pub fn changed(&self) -> bool {
        self.files.iter().any(|(p, f)| fingerprint(p) != *f)
    }
}

/// Waits for the next reason to reload: a change among `watched` (polled every
/// [`POLL_INTERVAL`]) or a SIGHUP; says which.
pub async fn next_change(watched: &Watched, hangups: &mut Hangups) -> &'static str {
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {
                if watched.changed() {
                    return "file changed";
                }
            }
            () = hangups.next() => return "SIGHUP",
        }
    }
}

/// The value in force of something a reload replaces (a config, a verifier, a TLS
/// configuration): readers take a snapshot per use, and a reload swaps in a whole new value,
/// never editing one in place.
pub struct InForce<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for InForce<T> {
    fn clone(&self) -> Self {
        InForce(Arc::clone(&self.0))
    }
}

impl<T> InForce<T> {
    pub fn new(value: T) -> Self {
        InForce(Arc::new(RwLock::new(Arc::new(value))))
    }

    pub fn current(&self) -> Arc<T> {
        // Held only to clone or swap an Arc; a poisoned lock still holds a whole value.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `value` in force for every snapshot taken from now on.
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

/// Which material a failed config load concerns, for the metrics' `what`: the first of
/// `by_field` (field prefix, what) whose prefix the refused field has, else `config`.
pub fn concerns(e: &ConfigError, by_field: &[(&str, &'static str)]) -> &'static str {
    match e {
        ConfigError::Invalid { field, .. } => by_field
            .iter()
            .find(|(prefix, _)| field.starts_with(prefix))
            .map_or("config", |(_, what)| what),
        _ => "config",
    }
}

/// Why a reload failed: the material it concerns (`what`) and the error.
pub type Failed = (&'static str, String);

/// Reloads on a change among `files` or on SIGHUP, until the task is dropped.
///
/// `reload(cause)` reads everything again and puts it in force (logging what it did), and
/// returns the files to watch from then on; or it changes nothing and says why. A failure is
/// logged (`reload failed; the previous <material> stay in force`) and turns
/// `mosaic_reload_ok{what}` to 0; a success sets every one of `whats` back to 1. Files are
/// fingerprinted before each reload reads them, so a change during a read is seen at the next
/// poll.
pub async fn follow(
    material: &str,
    whats: &[&'static str],
    config: &Path,
    mut files: Vec<PathBuf>,
    metrics: &CommonMetrics,
    mut reload: impl FnMut(&'static str) -> Result<Vec<PathBuf>, Failed>,
) {
    let mut hangups = Hangups::install(material);
    for what in whats {
        metrics.reloaded(what, true);
    }
    let mut watched = Watched::new(files.clone());
    loop {
        let cause = next_change(&watched, &mut hangups).await;
        watched = Watched::new(files.clone());
        match reload(cause) {
            Ok(now) => {
                for what in whats {
                    metrics.reloaded(what, true);
                }
                if now != files {
                    files = now;
                    watched = Watched::new(files.clone());
                }
            }
            Err((what, error)) => {
                metrics.reloaded(what, false);
                tracing::error!(
                    path = %config.display(),
                    cause,
                    %error,
                    what,
                    "reload failed; the previous {material} stay in force"
                );
            }
        }
    }
}

/// SIGHUP deliveries, or nothing where they cannot be had (non-Unix, or installation failed;
/// the poller still works then). Installing it is what keeps a SIGHUP from ending the process.
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Listens for SIGHUP; `what` names what it reloads, for the warning if it cannot.
    pub fn install(what: &str) -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; {what} reload only when the files change");
                    None
                }
            };
            Hangups { signal }
        }
        #[cfg(not(unix))]
        {
            let _ = what;
            Hangups {}
        }
    }

    /// The next SIGHUP (never, if there are none to be had).
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            // The signal driver is gone (runtime shutting down): stop listening.
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_replaced_or_removed_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let w = Watched::new([a.clone(), b.clone()]);
        assert!(!w.changed());
        std::fs::write(&a, "one!").unwrap();
        assert!(w.changed(), "a longer file");
        let w = Watched::new([a.clone(), b.clone()]);
        // Replaced by rename, same length: a new inode.
        let c = dir.path().join("c");
        std::fs::write(&c, "owt").unwrap();
        std::fs::rename(&c, &b).unwrap();
        assert!(w.changed(), "a replaced file");
        let w = Watched::new([a.clone(), b.clone()]);
        std::fs::remove_file(&a).unwrap();
        assert!(w.changed(), "a removed file");
        let w = Watched::new([a.clone()]);
        assert!(!w.changed(), "still missing is no change");
    }
}
