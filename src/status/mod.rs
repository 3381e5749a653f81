//! What `mpvr status` shows: a [`Snapshot`] of the node (built by the
//! daemon from the core's state, sent as JSON on the control socket), its
//! text table ([`render_text`]), the live view ([`watch`]) and the
//! Prometheus exposition ([`metrics`]).
//!
//! The snapshot is the stable interface for scripts (`mpvr status --json`):
//! fields are added, never renamed or removed, within one `version`.
//!
//! Parts: the snapshot's types (`snapshot`), building one from a node
//! (`build`), reading one from a daemon ([`fetch`]), the text table
//! (`render`).

mod build;
pub mod metrics;
mod render;
mod snapshot;
pub mod watch;

use std::time::Duration;

pub use build::{ShellInfo, snapshot};
pub use render::{PATH_COLUMNS, human_bytes, human_duration, human_ms, human_pct, path_cells, render_text};
pub use snapshot::*;

/// Seconds of the recent window that data loss is also given over.
pub const RECENT_WINDOW_S: f64 = 30.0;

/// Each path's data counts sampled over time, so that status can give the
/// loss of the last [`RECENT_WINDOW_S`] seconds beside the lifetime one
/// (the daemon samples every few seconds).
#[derive(Debug, Default)]
pub struct LossWindow {
    samples: std::collections::BTreeMap<PathKey, std::collections::VecDeque<Sample>>,
}

/// A path: its peer, link and remote address.
type PathKey = (u32, String, String);
/// Seconds, then inbound delivered and missing, outbound delivered and missing.
type Sample = (f64, [u64; 4]);

impl LossWindow {
    /// Record `s`'s counts at `now_s` (seconds on any steady clock), and
    /// forget what is older than the window.
    pub fn record(&mut self, s: &Snapshot, now_s: f64) {
        let mut seen = std::collections::BTreeSet::new();
        for p in &s.peers {
            for x in &p.paths {
                let key = (p.id, x.link.clone(), x.remote.clone());
                let counts = [x.inbound.delivered, x.inbound.missing, x.outbound.delivered, x.outbound.missing];
                let q = self.samples.entry(key.clone()).or_default();
                q.push_back((now_s, counts));
                // Keep one sample at least the window old: it is the base.
                while q.len() > 2 && q[1].0 <= now_s - RECENT_WINDOW_S {
                    q.pop_front();
                }
                seen.insert(key);
            }
        }
        self.samples.retain(|k, _| seen.contains(k));
    }

    /// Fill in `s`'s recent losses from the samples.
    pub fn fill(&self, s: &mut Snapshot) {
        for p in &mut s.peers {
            for x in &mut p.paths {
                let Some(base) = self.samples.get(&(p.id, x.link.clone(), x.remote.clone())).and_then(|q| q.front())
                else {
                    continue;
                };
                let ratio = |delivered: u64, missing: u64, b: (u64, u64)| {
                    let (d, m) = (delivered.saturating_sub(b.0), missing.saturating_sub(b.1));
                    (d + m > 0).then(|| m as f64 / (d + m) as f64)
                };
                let b = base.1;
                x.inbound.recent_loss = ratio(x.inbound.delivered, x.inbound.missing, (b[0], b[1]));
                x.outbound.recent_loss = ratio(x.outbound.delivered, x.outbound.missing, (b[2], b[3]));
            }
        }
    }
}

/// Why a snapshot could not be read from a daemon.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No socket file.
    #[error(
        "no mpvr daemon runs with the control socket {0}: start it with `mpvr run`; a daemon with \
         another TUN has another socket (mpvr status -i NAME, or -s PATH)"
    )]
    NotRunning(String),
    /// The socket exists but nobody listens.
    #[error("{0} exists but no daemon listens on it (did mpvr stop uncleanly?): start `mpvr run` again")]
    Stale(String),
    /// Not allowed.
    #[error("cannot open the control socket {0}: permission denied; it is root's: run `sudo mpvr status`")]
    Denied(String),
    /// Any other I/O error.
    #[error("reading the control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon's answer is not a snapshot.
    #[error(
        "the daemon at {path} sent something that is not a status snapshot ({reason}): is it the same mpvr version?"
    )]
    Garbled {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What a daemon answers to `reload` on its control socket.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReloadAnswer {
    /// The new config applies.
    pub ok: bool,
    /// What changed, one kind per line ("no change" if nothing did).
    pub changes: Vec<String>,
    /// Why it was refused (then nothing changed).
    pub error: Option<String>,
}

/// Send `request` to the daemon listening on `socket`; its answer (one line of JSON).
fn ask(socket: &std::path::Path, request: &str, timeout: Duration) -> Result<String, FetchError> {
    use std::io::{ErrorKind, Read, Write};
    let path = socket.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound => FetchError::NotRunning(path.clone()),
        ErrorKind::ConnectionRefused => FetchError::Stale(path.clone()),
        ErrorKind::PermissionDenied => FetchError::Denied(path.clone()),
        _ => FetchError::Io { path: path.clone(), source: e },
    })?;
    let io = |e| FetchError::Io { path: path.clone(), source: e };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(format!("{request}\n").as_bytes()).map_err(io)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(io)?;
    if text.contains("\"error\":\"permission denied\"") {
        return Err(FetchError::Denied(path));
    }
    Ok(text)
}

/// Read one snapshot from the daemon listening on `socket`.
pub fn fetch(socket: &std::path::Path) -> Result<Snapshot, FetchError> {
    let text = ask(socket, "status", Duration::from_secs(5))?;
    serde_json::from_str(&text)
        .map_err(|e| FetchError::Garbled { path: socket.display().to_string(), reason: e.to_string() })
}

/// Ask the daemon listening on `socket` to reload its config file.
pub fn reload(socket: &std::path::Path) -> Result<ReloadAnswer, FetchError> {
    let text = ask(socket, "reload", Duration::from_secs(30))?;
    serde_json::from_str(&text)
        .map_err(|e| FetchError::Garbled { path: socket.display().to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_loss_is_over_the_window_only() {
        let mut s = build::simulated();
        let mut w = LossWindow::default();
        let set = |s: &mut Snapshot, delivered: u64, missing: u64| {
            let d = &mut s.peers[0].paths[0].inbound;
            (d.delivered, d.missing) = (delivered, missing);
        };
        // 50 % lost long ago, then 1000 delivered and 10 missing in the last 30 s.
        set(&mut s, 1000, 1000);
        w.record(&s, 0.0);
        w.record(&s, 30.0);
        set(&mut s, 2000, 1010);
        w.record(&s, 60.0);
        w.fill(&mut s);
        let r = s.peers[0].paths[0].inbound.recent_loss.unwrap();
        assert!((r - 10.0 / 1010.0).abs() < 1e-9, "{r}");
        // Nothing counted in the window: no figure rather than 0 %.
        w.record(&s, 100.0);
        w.fill(&mut s);
        assert_eq!(s.peers[0].paths[0].inbound.recent_loss, None);
    }
}
