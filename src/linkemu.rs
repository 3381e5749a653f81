//! The link emulator behind `mpvr-linkemu`: relays Ethernet frames between
//! two interfaces (AF_PACKET), each direction through the simulator's own
//! [`Channel`] model, so a namespace testbed gets exactly the delay, jitter,
//! loss, bursts, blackouts, reordering, duplication, corruption and rate
//! limits the simulator has. This kernel has no netem; this replaces it.
//!
//! Per direction two threads: one reads frames and asks the channel when
//! (and whether, and how many times) each arrives; one holds frames in a
//! time-ordered queue and sends each when it is due. Models change at run
//! time through a control socket (one text command per connection):
//!
//! - `set ab|ba|both SPEC` — a new model (the `mpvr sim --link` syntax);
//!   blackout times in a SPEC count from the emulator's start
//! - `blackout ab|ba|both on|off|DURATION` — cut now, restore, or cut for a while
//! - `show` — models and counters

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::proto::Time;
use crate::sim::LinkModel;
use crate::sim::link::{Channel, Handover};
use crate::sys::packet::PacketSocket;
use crate::units::parse_duration;

/// Largest frame relayed (jumbo frames included).
const FRAME_MAX: usize = 65_536;

/// One direction: its channel and counters.
struct Dir {
    name: &'static str,
    channel: Mutex<Channel>,
    relayed: AtomicU64,
    send_errors: AtomicU64,
}

/// A running emulator.
pub struct Emulator {
    dirs: [Arc<Dir>; 2],
    epoch: Instant,
}

impl Emulator {
    fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    fn dirs(&self, which: &str) -> Result<Vec<&Arc<Dir>>, String> {
        match which {
            "ab" => Ok(vec![&self.dirs[0]]),
            "ba" => Ok(vec![&self.dirs[1]]),
            "both" => Ok(self.dirs.iter().collect()),
            other => Err(format!("unknown direction {other:?}: use ab, ba or both")),
        }
    }

    /// Carry out one control command; the reply text.
    pub fn command(&self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set", which, spec] => {
                let model: LinkModel = spec.parse().map_err(|e| format!("{e}"))?;
                for d in self.dirs(which)? {
                    d.channel.lock().unwrap_or_else(|e| e.into_inner()).model = model.clone();
                }
                Ok("ok".into())
            }
            ["blackout", which, what] => {
                let now = self.now();
                for d in self.dirs(which)? {
                    let mut ch = d.channel.lock().unwrap_or_else(|e| e.into_inner());
                    let b = &mut ch.model.blackouts;
                    match *what {
                        "on" => b.push((now, Time::from_nanos(u64::MAX))),
                        "off" => b.retain(|&(s, e)| !(s <= now && now < e)),
                        d => {
                            let d = parse_duration(d).ok_or(format!("{d:?} is not on, off or a duration like 2s"))?;
                            b.push((now, now + d));
                        }
                    }
                }
                Ok("ok".into())
            }
            ["show"] => {
                let mut out = String::new();
                for d in &self.dirs {
                    let ch = d.channel.lock().unwrap_or_else(|e| e.into_inner());
                    out.push_str(&format!(
                        "{}: {} | relayed {} send_errors {} | {:?}\n",
                        d.name,
                        ch.model,
                        d.relayed.load(Ordering::Relaxed),
                        d.send_errors.load(Ordering::Relaxed),
                        ch.stats
                    ));
                }
                Ok(out.trim_end().to_string())
            }
            _ => Err(format!(
                "unknown command {line:?}: use `set ab|ba|both SPEC`, `blackout ab|ba|both on|off|DURATION` or `show`"
            )),
        }
    }
}

fn spawn_direction(
    emu: Arc<Emulator>,
    index: usize,
    input: PacketSocket,
    output: PacketSocket,
    seed: u64,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Time, u64, Vec<u8>)>();
    let dir = emu.dirs[index].clone();
    let epoch = emu.epoch;
    std::thread::Builder::new().name(format!("{}-in", dir.name)).spawn({
        let dir = dir.clone();
        let emu = emu.clone();
        move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut buf = vec![0u8; FRAME_MAX];
            let mut copies: Vec<Handover> = Vec::new();
            let mut order = 0u64;
            loop {
                let n = match input.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                    Err(e) => {
                        eprintln!("mpvr-linkemu: {}: reading failed: {e}", dir.name);
                        return;
                    }
                };
                copies.clear();
                dir.channel.lock().unwrap_or_else(|e| e.into_inner()).transit(&mut rng, emu.now(), n, &mut copies);
                for c in &copies {
                    let mut frame = buf[..n].to_vec();
                    if let Some(bit) = c.flip_bit {
                        frame[bit / 8] ^= 1 << (bit % 8);
                    }
                    order += 1;
                    if tx.send((c.at, order, frame)).is_err() {
                        return;
                    }
                }
            }
        }
    })?;
    std::thread::Builder::new().name(format!("{}-out", dir.name)).spawn(move || {
        let mut queue: BinaryHeap<Reverse<(Time, u64, Vec<u8>)>> = BinaryHeap::new();
        loop {
            let now = Time::from_duration(epoch.elapsed());
            let wait = queue.peek().map_or(Duration::from_millis(100), |Reverse((at, _, _))| *at - now);
            match rx.recv_timeout(wait) {
                Ok(item) => queue.push(Reverse(item)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Time::from_duration(epoch.elapsed());
            while queue.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                let Some(Reverse((_, _, frame))) = queue.pop() else { break };
                match output.send(&frame) {
                    Ok(_) => dir.relayed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => dir.send_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    })?;
    Ok(())
}

/// Start relaying between interfaces `a` and `b` with the given models
/// (`ab`: frames from a to b), serving commands on `control`. Returns once
/// the relay threads run; the control socket is served on the calling thread
/// by [`serve`].
pub fn start(a: &str, b: &str, ab: LinkModel, ba: LinkModel, seed: u64) -> io::Result<Arc<Emulator>> {
    let emu = Arc::new(Emulator {
        dirs: [
            Arc::new(Dir {
                name: "ab",
                channel: Mutex::new(Channel::new(ab)),
                relayed: AtomicU64::new(0),
                send_errors: AtomicU64::new(0),
            }),
            Arc::new(Dir {
                name: "ba",
                channel: Mutex::new(Channel::new(ba)),
                relayed: AtomicU64::new(0),
                send_errors: AtomicU64::new(0),
            }),
        ],
        epoch: Instant::now(),
    });
    let (a_in, a_out, b_in, b_out) =
        (PacketSocket::bind(a)?, PacketSocket::bind(a)?, PacketSocket::bind(b)?, PacketSocket::bind(b)?);
    spawn_direction(emu.clone(), 0, a_in, b_out, seed)?;
    spawn_direction(emu.clone(), 1, b_in, a_out, seed.wrapping_add(1))?;
    Ok(emu)
}

/// Serve control commands on the Unix socket `path` forever.
pub fn serve(emu: &Emulator, path: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let reply = match emu.command(line.trim()) {
            Ok(r) => r,
            Err(e) => format!("error: {e}"),
        };
        let _ = writeln!(conn, "{reply}");
    }
    Ok(())
}

/// Send one command to a running emulator; its reply, or an error if it
/// refused the command.
pub fn control(path: &Path, command: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    writeln!(s, "{command}")?;
    let mut reply = String::new();
    io::Read::read_to_string(&mut s, &mut reply)?;
    let reply = reply.trim_end().to_string();
    match reply.strip_prefix("error: ") {
        Some(e) => Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
        None => Ok(reply),
    }
}
