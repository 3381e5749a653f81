//! `mpvr-stream`: a constant-rate UDP test stream, like a media flow, with
//! loss, duplicates, reordering and one-way latency measured at the receiver.
//! Sender and receiver must share a clock (the same machine, e.g. two network
//! namespaces): each packet carries its sequence number and send time.
//!
//! `mpvr-stream owd` measures a real application's RTP instead (ffmpeg, a
//! softphone): it captures one interface in each of two namespaces (the
//! sender's and the receiver's TUN, say) on the machine's one clock and
//! matches each RTP packet by SSRC and sequence number.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mpvr-stream", version, about = "Constant-rate UDP test stream with loss and one-way latency")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send `count` packets at `rate` packets/s.
    Send {
        /// Receiver address.
        #[arg(long)]
        to: SocketAddr,
        /// Packets.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Packets per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// UDP payload size in bytes (at least 16).
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// DSCP of the packets (46, EF, marks them real-time as media
        /// senders do; 0 lets mpvr classify them itself).
        #[arg(long, default_value_t = 46, value_parser = clap::value_parser!(u8).range(0..=63))]
        dscp: u8,
    },
    /// Receive a stream of `count` packets and print one line of results
    /// (`label sent received lost loss% dup reordered p50 p95 p99 max`, ms).
    Recv {
        /// Address to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Packets the sender sends.
        #[arg(long)]
        count: u64,
        /// Stop this long after the last packet (or after start if none comes).
        #[arg(long, default_value = "2s")]
        idle: String,
        /// Label of the result line.
        #[arg(long, default_value = "stream")]
        label: String,
    },
    /// Capture RTP to a UDP port on two interfaces (`NETNS:IFACE`) for a
    /// while, then print one line per-packet one-way delay results
    /// (`label sent received lost loss% met% p50 p99 max`, ms; met: within
    /// --deadline).
    Owd {
        /// Where the packets are sent from, `NETNS:IFACE`.
        #[arg(long)]
        at: String,
        /// Where they arrive, `NETNS:IFACE`.
        #[arg(long)]
        to: String,
        /// UDP destination port of the RTP stream.
        #[arg(long)]
        port: u16,
        /// How long to capture.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// The playout deadline.
        #[arg(long, default_value = "150ms")]
        deadline: String,
        /// Label of the result line.
        #[arg(long, default_value = "rtp")]
        label: String,
    },
}

/// The RTP (SSRC, sequence number) of an IP packet to UDP `port`, if it is one.
fn rtp_key(p: &[u8], port: u16) -> Option<(u32, u16)> {
    let (proto, l4) = match p.first()? >> 4 {
        4 => (*p.get(9)?, usize::from(p[0] & 0x0f) * 4),
        6 => (*p.get(6)?, 40),
        _ => return None,
    };
    let udp = p.get(l4..)?;
    if proto != 17 || udp.len() < 8 + 12 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let rtp = &udp[8..];
    if rtp[0] >> 6 != 2 {
        return None;
    }
    Some((u32::from_be_bytes(rtp[8..12].try_into().ok()?), u16::from_be_bytes([rtp[2], rtp[3]])))
}

/// When each RTP packet, by (SSRC, sequence number), was first seen: ns on CLOCK_MONOTONIC.
type Seen = HashMap<(u32, u16), u64>;

/// Capture RTP to `port` on `netns:iface` until `until`.
fn capture(at: &str, port: u16, until: Instant) -> Result<std::thread::JoinHandle<Result<Seen>>> {
    let (ns, iface) = at.split_once(':').with_context(|| format!("{at:?} is not NETNS:IFACE"))?;
    let (ns, iface) = (ns.to_string(), iface.to_string());
    Ok(std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("no namespace {ns}"))?;
        // SAFETY: setns on a namespace descriptor; it affects this thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("entering {ns}: {}", std::io::Error::last_os_error());
        }
        let s =
            mpvr::sys::packet::PacketSocket::capture(&iface).with_context(|| format!("capturing {iface} in {ns}"))?;
        s.set_read_timeout(Duration::from_millis(100))?;
        let mut seen = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < until {
            let Ok(n) = s.recv(&mut buf) else { continue };
            let t = mono_ns();
            if let Some(k) = rtp_key(&buf[..n], port) {
                seen.entry(k).or_insert(t);
            }
        }
        Ok(seen)
    }))
}

fn owd(at: &str, to: &str, port: u16, duration: Duration, deadline: Duration, label: &str) -> Result<()> {
    let until = Instant::now() + duration;
    let tx = capture(at, port, until)?;
    let rx = capture(to, port, until)?;
    let sent = tx.join().map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
    let got = rx.join().map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
    let mut lat: Vec<f64> =
        sent.iter().filter_map(|(k, t0)| got.get(k).map(|t1| t1.saturating_sub(*t0) as f64 / 1e6)).collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN);
    let n = sent.len().max(1) as f64;
    let met = lat.iter().filter(|l| **l <= deadline.as_secs_f64() * 1e3).count() as f64;
    println!(
        "{label} {} {} {} {:.3} {:.3} {:.3} {:.3} {:.3}",
        sent.len(),
        lat.len(),
        sent.len() - lat.len(),
        (sent.len() - lat.len()) as f64 * 100.0 / n,
        met * 100.0 / n,
        q(0.5),
        q(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Nanoseconds on CLOCK_MONOTONIC, shared by all namespaces of a machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn send(to: SocketAddr, count: u64, rate: u64, size: usize, dscp: u8) -> Result<()> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let s = UdpSocket::bind(bind).context("binding the sender")?;
    let tos = u32::from(dscp) << 2;
    let r = socket2::SockRef::from(&s);
    if to.is_ipv4() { r.set_tos_v4(tos) } else { r.set_tclass_v6(tos) }.context("setting the DSCP")?;
    let mut buf = vec![0u8; size.max(16)];
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    for i in 0..count {
        let due = start + interval.mul_f64(i as f64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        buf[..8].copy_from_slice(&i.to_be_bytes());
        buf[8..16].copy_from_slice(&mono_ns().to_be_bytes());
        // A send error (no route for a moment) is a lost packet, as for a real app.
        let _ = s.send_to(&buf, to);
    }
    Ok(())
}

fn recv(bind: SocketAddr, count: u64, idle: Duration, label: &str) -> Result<()> {
    let s = UdpSocket::bind(bind).with_context(|| format!("listening on {bind}"))?;
    s.set_read_timeout(Some(idle))?;
    let mut seen = vec![false; count as usize];
    let (mut dup, mut reordered, mut highest) = (0u64, 0u64, None::<u64>);
    let mut lat_ms = Vec::with_capacity(count as usize);
    let mut buf = [0u8; 65_536];
    while let Ok(n) = s.recv(&mut buf) {
        if n < 16 {
            continue;
        }
        let i = u64::from_be_bytes(buf[..8].try_into()?);
        let sent = u64::from_be_bytes(buf[8..16].try_into()?);
        let Some(slot) = seen.get_mut(i as usize) else { continue };
        if *slot {
            dup += 1;
            continue;
        }
        *slot = true;
        if highest.is_some_and(|h| i < h) {
            reordered += 1;
        }
        highest = Some(highest.map_or(i, |h| h.max(i)));
        lat_ms.push(mono_ns().saturating_sub(sent) as f64 / 1e6);
    }
    lat_ms.sort_by(f64::total_cmp);
    let q = |p: f64| lat_ms.get(((lat_ms.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN);
    let received = lat_ms.len() as u64;
    let lost = count - received;
    println!(
        "{label} {count} {received} {lost} {:.3} {dup} {reordered} {:.3} {:.3} {:.3} {:.3}",
        lost as f64 * 100.0 / count.max(1) as f64,
        q(0.5),
        q(0.95),
        q(0.99),
        lat_ms.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn main() -> ExitCode {
    let r = match Cli::parse().command {
        Command::Send { to, count, rate, size, dscp } => send(to, count, rate, size, dscp),
        Command::Recv { bind, count, idle, label } => match mpvr::units::parse_duration(&idle) {
            Some(idle) => recv(bind, count, idle, &label),
            None => Err(anyhow::anyhow!("--idle {idle:?} is not a duration such as 2s")),
        },
        Command::Owd { at, to, port, duration, deadline, label } => {
            match (mpvr::units::parse_duration(&duration), mpvr::units::parse_duration(&deadline)) {
                (Some(d), Some(dl)) => owd(&at, &to, port, d, dl, &label),
                _ => Err(anyhow::anyhow!("--duration and --deadline take durations such as 10s and 150ms")),
            }
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpvr-stream: {e:#}");
            ExitCode::FAILURE
        }
    }
}
