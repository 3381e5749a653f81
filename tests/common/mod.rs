//! Helpers for the namespace tests: root check, namespaces and veths that
//! clean up after themselves, the real `mpvr` binary as a child process
//! (stopped by pid), and UDP streams sent from inside a namespace.
#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The simulator time `n` milliseconds after its start.
pub fn at_ms(n: u64) -> mpvr::proto::Time {
    mpvr::proto::Time::from_duration(ms(n))
}

/// Normal approximation of the binomial 99.9 % interval for `n` trials at
/// `p` (3.29 standard deviations): wide enough that a change in how many
/// random draws a run takes (a new message type, say) does not fail a
/// check by chance one time in twenty, narrow enough to tell 5 % from
/// 0.25 %.
pub fn binomial_999(n: u64, p: f64) -> (u64, u64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    ((mean - 3.29 * sd).floor() as u64, (mean + 3.29 * sd).ceil() as u64)
}

/// A simulated stream delivered nothing twice and nothing modified.
pub fn assert_clean(r: &mpvr::sim::StreamReport) {
    assert_eq!(r.delivered_twice, 0, "a packet was delivered twice");
    assert_eq!(r.mangled, 0, "a modified packet was delivered");
}

/// Namespace tests run one at a time (they are CPU-bound on 2 cores).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when running as root. Otherwise: fail under CI (which runs as root,
/// so this is a broken CI) and skip, saying why, on a developer's machine.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: namespace tests need root, and CI runs as root: run them as root");
    }
    eprintln!("SKIPPED {test}: namespace tests need root; run `sudo scripts/test.sh`");
    false
}

/// Run a command; panic with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command in a namespace.
pub fn nsh(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("mpvrt{}-{n}{tag}", std::process::id() % 100_000);
        sh(&["ip", "netns", "add", &name]);
        nsh(&name, &["ip", "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn sh(&self, args: &[&str]) -> String {
        nsh(&self.name, args)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.sh(&["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair from `a` (named `an`, address `aaddr`) to `b`.
pub fn veth(a: &Netns, an: &str, aaddr: &str, b: &Netns, bn: &str, baddr: &str) {
    sh(&["ip", "link", "add", an, "netns", &a.name, "type", "veth", "peer", "name", bn, "netns", &b.name]);
    for (ns, dev, addr) in [(a, an, aaddr), (b, bn, baddr)] {
        ns.sh(&["ip", "addr", "add", addr, "dev", dev]);
        ns.sh(&["ip", "link", "set", dev, "up"]);
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mpvr-test-{}-{n}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The binary under test: this build's, or `MPVR_TEST_BIN` (the static
/// musl build, which scripts/test.sh runs a few end-to-end tests with).
pub fn mpvr() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("MPVR_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mpvr").to_string()))
}

pub fn linkemu() -> &'static str {
    env!("CARGO_BIN_EXE_mpvr-linkemu")
}

/// The testbed script with its own namespace prefix, torn down on drop.
pub struct Testbed {
    pub prefix: String,
}

impl Testbed {
    pub fn new(tag: &str) -> Testbed {
        Testbed { prefix: format!("mt{}{tag}", std::process::id() % 10_000) }
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testbed/netns.sh"))
            .args(args)
            .env("TESTBED_PREFIX", &self.prefix)
            .env("MPVR_LINKEMU", linkemu())
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// A fresh private key file (mode 600) and its public key.
pub fn keypair(dir: &TempDir, name: &str) -> (PathBuf, String) {
    let private = sh(&[mpvr(), "genkey"]);
    let path = dir.write(name, &private);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(mpvr()).arg("pubkey").stdin(fs::File::open(&path).unwrap()).output().unwrap();
    assert!(out.status.success());
    (path, String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// `mpvr run` inside a namespace, stopped with SIGTERM (by pid) on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Its control socket (next to its log).
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Netns, config: &Path, log: PathBuf) -> Daemon {
        Daemon::start_with_env(ns, config, log, &[])
    }

    /// [`Daemon::start`] with more environment variables.
    pub fn start_with_env(ns: &Netns, config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_under(ns, config, log, env, &[])
    }

    /// [`Daemon::start_with_env`] under `wrapper` (a command that runs the
    /// rest in its place, as `setpriv` does: the pid stays the daemon's).
    pub fn start_under(ns: &Netns, config: &Path, log: PathBuf, env: &[(&str, &str)], wrapper: &[&str]) -> Daemon {
        let socket = log.with_extension("sock");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(wrapper)
            .args([mpvr(), "run", "-c"])
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .envs(env.iter().copied())
            .env("MPVR_LOG", "info,mpvr::daemon=debug")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child: Some(child), log, socket }
    }

    /// `mpvr status` with `args` against this daemon: its standard output.
    pub fn status(&self, args: &[&str]) -> String {
        let out = Command::new(mpvr()).arg("status").arg("-s").arg(&self.socket).args(args).output().unwrap();
        assert!(out.status.success(), "mpvr status failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The daemon's status snapshot.
    pub fn snapshot(&self) -> mpvr::status::Snapshot {
        serde_json::from_str(&self.status(&["--json"])).unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log has `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize, within: Duration) {
        let t = Instant::now();
        while self.log().matches(needle).count() < n {
            assert!(t.elapsed() < within, "no {n} x {needle:?} in the log within {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait; SIGKILL if it does not stop. Returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // `ip netns exec` execs the command, so this pid is mpvr's.
        // SAFETY: kill(2) on a pid this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run `f` on a thread that has entered namespace `ns` (sockets it opens
/// belong to that namespace).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd, affecting only this thread.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// What a UDP stream delivered.
#[derive(Debug, Clone)]
pub struct StreamResult {
    pub sent: u64,
    pub received: u64,
    pub duplicates: u64,
    pub missing: Vec<u64>,
}

/// Send `count` sequence-numbered UDP packets of `size` bytes, one every
/// `interval`, from namespace `from_ns` to `to` (a tunnel address; the
/// receiver listens in `to_ns`). `during(i)` is called before packet `i` is
/// sent, so a test can cut links mid-stream.
/// DSCP EF on what `s` sends to `to`: the test stream is real-time media,
/// copied onto every path like the calls it stands for.
pub fn mark_realtime(s: &UdpSocket, to: SocketAddr) {
    let tos = u32::from(mpvr::sim::traffic::EF) << 2;
    let r = socket2::SockRef::from(s);
    if to.is_ipv4() { r.set_tos_v4(tos).unwrap() } else { r.set_tclass_v6(tos).unwrap() }
}

pub fn udp_stream(
    from_ns: &str,
    to_ns: &str,
    to: SocketAddr,
    count: u64,
    interval: Duration,
    size: usize,
    mut during: impl FnMut(u64) + Send + 'static,
) -> StreamResult {
    let rx = in_netns(to_ns, move || {
        let s = UdpSocket::bind(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut seen = vec![0u32; count as usize];
        let mut buf = [0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            if n >= 8 {
                let i = u64::from_be_bytes(buf[..8].try_into().unwrap());
                if let Some(c) = seen.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(200));
    let tx = in_netns(from_ns, move || {
        let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        mark_realtime(&s, to);
        let mut buf = vec![0u8; size.max(8)];
        let start = Instant::now();
        for i in 0..count {
            during(i);
            let due = start + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            buf[..8].copy_from_slice(&i.to_be_bytes());
            s.send_to(&buf, to).unwrap();
        }
    });
    tx.join().unwrap();
    let seen = rx.join().unwrap();
    StreamResult {
        sent: count,
        received: seen.iter().filter(|c| **c > 0).count() as u64,
        duplicates: seen.iter().map(|c| u64::from(c.saturating_sub(1))).sum(),
        missing: seen.iter().enumerate().filter(|(_, c)| **c == 0).map(|(i, _)| i as u64).collect(),
    }
}

/// A child killed (by pid) and reaped on drop, unless its output was taken.
pub struct Proc(pub Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn spawn(ns: &str, args: &[&str]) -> Proc {
    Proc(Some(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}")),
    ))
}

/// Wait for `p` to end; its standard output (it must succeed).
pub fn output(mut p: Proc) -> String {
    let out = p.0.take().expect("not taken yet").wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The daemons of hosts a and b of a testbed's pair layout; their logs
/// are printed if the test fails.
pub struct PairDaemons {
    pub da: Daemon,
    pub db: Daemon,
}

impl Drop for PairDaemons {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.da.stop();
            self.db.stop();
            eprintln!("--- host A log ---\n{}\n--- host B log ---\n{}", self.da.log(), self.db.log());
        }
    }
}

/// Start `mpvr run` with configs `ca` and `cb` in `tb`'s namespaces a and
/// b (logs in `dir`, named with `tag`), and wait until each has both links up.
pub fn start_pair(tb: &Testbed, dir: &TempDir, ca: &Path, cb: &Path, tag: &str) -> PairDaemons {
    // The namespaces belong to the testbed: handles that do not delete them.
    let (a, b) = (Netns { name: tb.ns("a") }, Netns { name: tb.ns("b") });
    let da = Daemon::start(&a, ca, dir.0.join(format!("a{tag}.log")));
    let db = Daemon::start(&b, cb, dir.0.join(format!("b{tag}.log")));
    std::mem::forget(a);
    std::mem::forget(b);
    for d in [&da, &db] {
        d.wait_log("link up", 2, Duration::from_secs(10));
    }
    PairDaemons { da, db }
}
