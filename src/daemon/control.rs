//! The control socket and the Prometheus listener.
//!
//! Control socket: a Unix stream socket, mode 0600 in a 0700 directory, so
//! only its owner (root) can connect; the peer's credentials are checked
//! too. A client sends one request line and reads one JSON answer and a
//! newline; the daemon then closes the connection. `status` (or nothing:
//! end of file) answers a [`crate::status::Snapshot`]; `reload` re-reads
//! the config file the daemon was started with and answers a
//! [`crate::status::ReloadAnswer`]: it is the one request that changes
//! anything, and it takes no argument (the file is the daemon's own).
//!
//! Prometheus: an HTTP/1.1 responder on a loopback address that answers
//! `GET /metrics` with the OpenMetrics text of a fresh snapshot and
//! anything else with 404. Requests are read with a size and time limit.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{RunError, Shared};
use crate::status::{ReloadAnswer, metrics};

/// Longest control request line read.
const MAX_CONTROL_REQUEST: usize = 64;
/// Longest HTTP request head read.
const MAX_REQUEST: usize = 8192;
/// A client gets this long to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound control socket; the file is removed on drop.
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Bind `path` (creating its directory, mode 0700, if needed). A socket
    /// another daemon still answers on is an error; a stale one is replaced.
    pub fn bind(path: &Path) -> Result<ControlSocket, RunError> {
        let io_err =
            |what: &str, source: io::Error| RunError::Io { what: format!("{what} {}", path.display()), source };
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err("creating the directory of the control socket", e))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(RunError::Fatal(format!(
                    "another mpvr answers on the control socket {}: stop it, or give this one its own \
                     (control.socket in the config, or --socket)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| io_err("removing the stale control socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| io_err("binding the control socket", e))?;
        let socket = ControlSocket { path: path.to_path_buf(), listener: Some(listener) };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("restricting the control socket to its owner", e))?;
        Ok(socket)
    }

    /// Answer clients until the task is aborted.
    pub fn serve(
        &mut self,
        shared: Arc<Shared>,
        reload: mpsc::Sender<ReloadRequest>,
    ) -> impl Future<Output = ()> + use<> {
        let listener = self.listener.take();
        async move {
            let Some(listener) = listener else { return };
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(answer(stream, shared.clone(), reload.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

async fn answer(mut stream: UnixStream, shared: Arc<Shared>, reload: mpsc::Sender<ReloadRequest>) {
    // The socket's mode already keeps others out; this also covers a
    // directory with looser permissions than ours.
    let me = effective_uid();
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => {}
        Ok(c) => {
            debug!(uid = c.uid(), "control socket client refused");
            let _ = stream.write_all(b"{\"error\":\"permission denied\"}\n").await;
            return;
        }
        Err(e) => {
            debug!(error = %e, "control socket client without credentials");
            return;
        }
    }
    let request = match tokio::time::timeout(CLIENT_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        _ => return,
    };
    let encoded = match request.as_str() {
        "" | "status" => serde_json::to_vec(&shared.snapshot()),
        "reload" => {
            let (tx, rx) = oneshot::channel();
            let outcome = match reload.send(tx).await {
                Ok(()) => rx.await.unwrap_or_else(|_| Err("the daemon is stopping".into())),
                Err(_) => Err("the daemon is stopping".into()),
            };
            serde_json::to_vec(&ReloadAnswer::from(outcome))
        }
        other => {
            debug!(request = other, "unknown control request");
            serde_json::to_vec(&serde_json::json!({ "error": format!("unknown request {other:?}: status or reload") }))
        }
    };
    let mut json = match encoded {
        Ok(j) => j,
        Err(e) => {
            warn!(error = %e, "cannot encode the control answer");
            return;
        }
    };
    json.push(b'\n');
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.write_all(&json)).await;
    let _ = stream.shutdown().await;
}

/// A reload asked on the control socket: the main loop answers on it.
pub(super) type ReloadRequest = oneshot::Sender<super::reload::Outcome>;

/// The client's request line (at most [`MAX_CONTROL_REQUEST`] bytes; end
/// of file ends it too).
async fn read_request(stream: &mut UnixStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    while buf.len() < MAX_CONTROL_REQUEST {
        if stream.read(&mut byte).await? == 0 || byte[0] == b'\n' {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

impl From<super::reload::Outcome> for ReloadAnswer {
    fn from(o: super::reload::Outcome) -> ReloadAnswer {
        match o {
            Ok(changes) => ReloadAnswer { ok: true, changes, error: None },
            Err(e) => ReloadAnswer { ok: false, changes: Vec::new(), error: Some(e) },
        }
    }
}

/// The effective user id (from /proc, to keep this module free of unsafe code).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(0)
}

/// Bind the Prometheus listener.
pub async fn bind_metrics(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Io {
        what: format!("listening for Prometheus on {addr} (control.prometheus; is the port taken?)"),
        source,
    })
}

/// Answer Prometheus scrapes until aborted.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(scrape(stream, shared.clone()));
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn scrape(mut stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, io::Error>(())
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return;
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let response = if method == b"GET" && (target == b"/metrics" || target.starts_with(b"/metrics?")) {
        let body = metrics::render(&shared.snapshot());
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "mpvr serves its metrics at /metrics\n";
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}
