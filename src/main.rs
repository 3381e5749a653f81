//! The `mpvr` command line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use mpvr::keys;
use mpvr::sim::LinkModel;
use mpvr::sim::compare::{Load, Row, compare};

#[derive(Parser)]
#[command(
    name = "mpvr",
    version,
    about = "Multipath virtual router: several unreliable uplinks as one reliable, low-latency network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: create the TUN, use every selected NIC, carry traffic
    /// to the peers until SIGINT or SIGTERM, then remove everything it added.
    Run {
        /// Configuration file.
        #[arg(short, long, value_name = "FILE", default_value = "/etc/mpvr/mpvr.toml")]
        config: PathBuf,
        /// Control socket for `mpvr status` (overrides control.socket; default /run/mpvr/<tun>.sock).
        #[arg(short, long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Show the running daemon: peers, sessions, every path with its state,
    /// RTT, jitter, loss, first arrivals and rescues, recent changes, routes.
    Status(StatusArgs),
    /// Make the running daemon re-read its config file and apply what
    /// changed (peers, endpoints, prefixes, policies, classes, probes,
    /// links) without touching the sessions that did not change; a config
    /// with errors is refused and the running one stays. Same as SIGHUP.
    Reload(DaemonArgs),
    /// Check a configuration file and show which NICs would become links.
    /// Changes nothing.
    Check {
        /// Configuration file.
        #[arg(short, long, value_name = "FILE", default_value = "/etc/mpvr/mpvr.toml")]
        config: PathBuf,
    },
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on standard input and print its public key.
    Pubkey {
        /// Print the route-advert key (Ed25519, derived from the private
        /// key) instead: what other hosts' `mpvr status` shows as pinned.
        #[arg(long)]
        advert: bool,
    },
    /// Run the real core in the network simulator: the same stream over each
    /// link alone, then over all links through mpvr, and compare loss and latency.
    Sim(SimArgs),
    /// Print shell completions for `mpvr` (bash, zsh, fish, elvish,
    /// powershell), e.g. `mpvr completions bash > /etc/bash_completion.d/mpvr`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `mpvr man | man -l -`.
    Man,
}

/// Which daemon: by its socket, its config file or its TUN's name.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The daemon's control socket (default: /run/mpvr/<interface>.sock).
    #[arg(short, long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// The daemon's config file, which names its socket (control.socket, host.tun).
    #[arg(short, long, value_name = "FILE", conflicts_with = "interface")]
    config: Option<PathBuf>,
    /// The daemon's TUN name, which names its socket.
    #[arg(short, long, value_name = "NAME", default_value = mpvr::config::DEFAULT_TUN)]
    interface: String,
}

impl DaemonArgs {
    fn socket(&self) -> Result<PathBuf> {
        Ok(match (&self.socket, &self.config) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => mpvr::config::control_socket_of(c).map_err(anyhow::Error::msg)?,
            (None, None) => mpvr::config::default_control_socket(&self.interface),
        })
    }
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Print the snapshot as JSON (for scripts).
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Live view, refreshed every --interval, with each path's RTT and loss history (q quits).
    #[arg(short, long)]
    watch: bool,
    /// Refresh interval of --watch.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
}

fn parse_interval(s: &str) -> std::result::Result<Duration, String> {
    match mpvr::units::parse_duration(s) {
        Some(d) if d >= Duration::from_millis(100) => Ok(d),
        _ => Err(format!("{s:?} is not an interval of at least 100ms, such as \"1s\"")),
    }
}

fn status(args: StatusArgs) -> Result<bool> {
    let socket = args.daemon.socket()?;
    if args.watch {
        anyhow::ensure!(
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
            "--watch needs a terminal; use --json to read the status from a script"
        );
        mpvr::status::watch::run(|| Ok(mpvr::status::fetch(&socket)?), args.interval)?;
        return Ok(true);
    }
    let snap = mpvr::status::fetch(&socket)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", mpvr::status::render_text(&snap));
    }
    Ok(true)
}

#[derive(clap::Args)]
struct SimArgs {
    /// A link, once per link. Keys: delay=20ms, jitter=5ms (uniform),
    /// jitter-sd=2ms (normal), loss=5%, burst=5% (bursty loss),
    /// blackout=2s-4s, order=keep, reorder=1%, duplicate=1%, corrupt=1%, rate=10mbit, queue=64kb.
    #[arg(long = "link", value_name = "SPEC", default_values = ["delay=20ms,jitter=2ms,loss=5%", "delay=40ms,jitter=4ms,loss=5%,blackout=3s-5s"])]
    links: Vec<LinkModel>,
    /// Packets in the stream.
    #[arg(long, default_value_t = 100_000)]
    packets: u64,
    /// Packets per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// IP packet size in bytes (IPv4 UDP, 36 to 1436).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(36..=1436))]
    size: u16,
    /// Random seed: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "", "sent", "lost", "loss %", "p50 ms", "p99 ms", "max ms", "dup/bad"
    );
    for r in rows {
        let rep = &r.report;
        println!(
            "{:<22} {:>9} {:>9} {:>9.3} {:>9} {:>9} {:>9} {:>4}/{:<3}",
            r.label,
            rep.sent,
            rep.lost(),
            rep.loss_rate() * 100.0,
            ms(rep.latency_percentile(50.0)),
            ms(rep.latency_percentile(99.0)),
            ms(rep.latency_percentile(100.0)),
            rep.delivered_twice,
            rep.mangled,
        );
    }
}

fn sim(args: SimArgs) -> Result<bool> {
    anyhow::ensure!(!args.links.is_empty(), "give at least one --link");
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1 packet per second");
    let load = Load { packets: args.packets, rate_pps: args.rate, size: usize::from(args.size), seed: args.seed };
    println!(
        "mpvr simulator: {} packets of {} bytes at {} packets/s from host 1 to host 2 (seed {})",
        load.packets, load.size, load.rate_pps, load.seed
    );
    for (i, l) in args.links.iter().enumerate() {
        println!("  link {}: {l}", i + 1);
    }
    println!();
    let rows = compare(&args.links, load);
    print_rows(&rows);
    let (singles, mpvr) = rows.split_at(rows.len() - 1);
    let mpvr = &mpvr[0];
    let best_single = singles.iter().map(|r| r.report.lost()).min().unwrap_or(0);
    println!();
    println!(
        "mpvr lost {} packets, the best single link {}; {} copies of {} were lost on the links, \
         no packet was delivered twice: {}.",
        mpvr.report.lost(),
        best_single,
        mpvr.copies_lost,
        mpvr.copies_sent,
        if mpvr.report.delivered_twice == 0 && mpvr.report.mangled == 0 { "yes" } else { "NO" }
    );
    Ok(mpvr.report.delivered_twice == 0 && mpvr.report.mangled == 0)
}

/// The runtime of the commands that only ask (netlink for `mpvr check`).
fn runtime() -> Result<tokio::runtime::Runtime> {
    daemon_runtime(1)
}

/// The daemon's runtime: `threads` 1 runs everything on this thread,
/// more runs that many workers ([`mpvr::config::Threads`]).
fn daemon_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().context("cannot start the async runtime")
}

/// The CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(config: &Path, socket: Option<PathBuf>) -> Result<bool> {
    mpvr::daemon::check_privileges()?;
    let mut cfg = mpvr::config::load(config)?;
    if let Some(s) = socket {
        anyhow::ensure!(s.is_absolute(), "--socket {} must be an absolute path", s.display());
        cfg.control_socket = s;
        cfg.control_socket_fixed = true;
    }
    let threads = cfg.threads.count(cpus());
    tracing::info!(threads, setting = %cfg.threads, cpus = cpus(), "threads (host.threads)");
    // The daemon runs as a task on the workers, not on this thread: its
    // timers then fire on the worker that drives the I/O and run there,
    // rather than waking this thread and it the driver again (half the
    // context switches per packet of a ping, measured).
    let rt = daemon_runtime(threads)?;
    rt.block_on(async { tokio::spawn(mpvr::daemon::run(cfg)).await }).context("the daemon's task panicked")??;
    Ok(true)
}

fn check(config: &Path) -> Result<bool> {
    let cfg = mpvr::config::load(config)?;
    // What is wrong here, said after the listing (and then no "ok").
    let mut problems: Vec<String> = Vec::new();
    println!("{}:", config.display());
    println!("  host {} (public key {})", cfg.host.get(), keys::encode(&keys::public(&cfg.private_key)));
    println!("  tun {} with {:?}, mtu {}, port {}", cfg.tun, cfg.addresses, cfg.mtu, cfg.listen_port);
    let m = &cfg.monitor;
    println!(
        "  probes every {} ({} with data, {} while suspect or just down), down after {} lost or {} silent, up after {} answered, degraded at {}% loss",
        mpvr::units::format_duration(m.interval),
        mpvr::units::format_duration(m.busy_interval),
        mpvr::units::format_duration(m.fast_interval),
        m.down_after,
        mpvr::units::format_duration(m.silence),
        m.up_after,
        m.degraded_loss * 100.0
    );
    match cfg.mesh {
        Some(m) => println!(
            "  mesh on: advertises {:?}{}, every {}, forgets adverts after {}",
            cfg.addresses.iter().map(|a| a.addr().to_string()).collect::<Vec<_>>(),
            if cfg.advertise.is_empty() { String::new() } else { format!(" and {:?}", cfg.advertise) },
            mpvr::units::format_duration(m.refresh),
            mpvr::units::format_duration(m.max_age)
        ),
        None => println!("  mesh off: configured routes only"),
    }
    match cfg.prometheus {
        Some(a) => println!("  status on {}, Prometheus metrics on http://{a}/metrics", cfg.control_socket.display()),
        None => println!("  status on {} (`mpvr status`); Prometheus off", cfg.control_socket.display()),
    }
    println!(
        "  data cipher: {}",
        match (cfg.cipher, cfg.offers_aes()) {
            (_, true) =>
                "AES-256-GCM with peers that offer it too (this CPU has AES instructions), else ChaCha20-Poly1305",
            (mpvr::config::CipherChoice::ChaCha20Poly1305, _) => "ChaCha20-Poly1305 (session.cipher)",
            (mpvr::config::CipherChoice::Auto, false) => "ChaCha20-Poly1305 (this CPU has no AES instructions)",
        }
    );
    let threads = cfg.threads.count(cpus());
    println!(
        "  threads: {threads} ({}, {} CPUs{})",
        match cfg.threads {
            mpvr::config::Threads::Auto => "host.threads auto",
            mpvr::config::Threads::Fixed(_) => "host.threads",
        },
        cpus(),
        if threads == 1 {
            ": one thread runs the readers and everything else"
        } else {
            ": the readers run in parallel"
        }
    );
    println!(
        "  policies: realtime {}, bulk {}{}",
        cfg.policy,
        cfg.bulk_policy,
        if cfg.bulk_policy == mpvr::proto::Policy::Failover {
            " (one path: the cheapest role with a path up, then the best path)"
        } else {
            ""
        }
    );
    if cfg.rules.is_empty() {
        println!("  classes: no rules; automatic: {}", mpvr::proto::class::AUTOMATIC);
    } else {
        println!("  classes, first match wins:");
        for (i, r) in cfg.rules.iter().enumerate() {
            println!("    rule[{i}] {r}");
        }
        println!("    then automatic: {}", mpvr::proto::class::AUTOMATIC);
    }
    for p in &cfg.peers {
        match p.via {
            Some(v) => println!("  peer {} via relay {}: {:?}", p.id.get(), v.get(), p.prefixes),
            None => {
                let eps: Vec<String> = p
                    .endpoints
                    .iter()
                    .map(|e| match &e.link {
                        Some(l) => format!("{} on {l}", e.address),
                        None => e.address.to_string(),
                    })
                    .collect();
                println!("  peer {} at [{}]: {:?}", p.id.get(), eps.join(", "), p.prefixes);
            }
        }
    }
    let rt = runtime()?;
    let nics = rt.block_on(async { mpvr::sys::netlink::Netlink::new().ok()?.nics().await.ok() });
    match nics {
        None => println!("  (cannot list network interfaces here)"),
        Some(nics) => {
            println!("  network interfaces:");
            for n in &nics {
                let verdict = match mpvr::daemon::plan::classify(n, &cfg, None) {
                    Ok(()) => {
                        let s = cfg.links.options.get(&n.name).map(|o| o.settings).unwrap_or_default();
                        let rate =
                            s.up.map_or_else(|| "not shaped".to_string(), |r| format!("shaped to 95% of {r} up"));
                        format!("link, {} ({rate})", s.role)
                    }
                    Err(skip) => format!("skipped: {skip}"),
                };
                println!("    {:<16} {verdict}", n.name);
            }
            for name in cfg.links.options.keys().filter(|k| !nics.iter().any(|n| &n.name == *k)) {
                println!("    {name:<16} configured in [link.{name}] but not present here");
            }
            let links: Vec<&mpvr::sys::netlink::Nic> =
                nics.iter().filter(|n| mpvr::daemon::plan::classify(n, &cfg, None).is_ok()).collect();
            for p in cfg.peers.iter().filter(|p| p.via.is_none()) {
                let paths: Vec<String> = mpvr::daemon::plan::endpoints(p, &cfg, &links)
                    .iter()
                    .map(|e| {
                        let link = e.link.and_then(|l| links.iter().find(|n| n.index == l.0));
                        format!("{} -> {}", link.map_or("?", |n| n.name.as_str()), e.remote)
                    })
                    .collect();
                if paths.is_empty() && !p.endpoints.is_empty() && !links.is_empty() {
                    problems.push(format!(
                        "peer {}: no path from the links here: none of its endpoints is on a link's subnet, and no link \
                         has a default route or a gateway (set [link.NAME] gateway, or pin the endpoint to a link)",
                        p.id.get()
                    ));
                } else if paths.is_empty() {
                    println!("  peer {}: no path from here until it reaches us first (no endpoints)", p.id.get());
                } else {
                    println!("  paths to peer {}: {}", p.id.get(), paths.join(", "));
                }
            }
            if links.is_empty() {
                let virtual_skipped: Vec<&str> = nics
                    .iter()
                    .filter(|n| mpvr::daemon::plan::classify(n, &cfg, None) == Err(mpvr::daemon::plan::Skip::Virtual))
                    .map(|n| n.name.as_str())
                    .collect();
                let hint = if virtual_skipped.is_empty() {
                    "check links.include and links.exclude against the names above (ip link)".to_string()
                } else {
                    format!(
                        "{} matched but are virtual: set links.allow_virtual = true (VMs, namespaces)",
                        virtual_skipped.join(", ")
                    )
                };
                problems.push(format!("no network interface here becomes a link: {hint}"));
            }
            let missing = mpvr::daemon::plan::missing_nics(&cfg, &nics);
            if !missing.is_empty() {
                problems.push(format!(
                    "the config names network interfaces that do not exist here: {}",
                    missing.join(", ")
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("{}: ok", config.display());
        Ok(true)
    } else {
        for p in &problems {
            eprintln!("mpvr: {p}");
        }
        Ok(false)
    }
}

fn reload(args: DaemonArgs) -> Result<bool> {
    let socket = args.socket()?;
    let answer = mpvr::status::reload(&socket)?;
    match (answer.ok, answer.error) {
        (true, _) => {
            println!("reloaded: {}", answer.changes.join("; "));
            Ok(true)
        }
        (false, e) => {
            eprintln!("mpvr: reload refused, the running config stays: {}", e.unwrap_or_default());
            Ok(false)
        }
    }
}

fn genkey() -> Result<bool> {
    println!("{}", keys::encode(&keys::generate()?));
    Ok(true)
}

fn pubkey(advert: bool) -> Result<bool> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
    let private = keys::decode(&text).context("standard input is not a private key")?;
    if advert {
        println!("{}", keys::encode(&mpvr::proto::mesh::advert_key(&private)));
    } else {
        println!("{}", keys::encode(&keys::public(&private)));
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MPVR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run { config, socket } => run(&config, socket),
        Command::Status(args) => status(args),
        Command::Reload(args) => reload(args),
        Command::Check { config } => check(&config),
        Command::Genkey => genkey(),
        Command::Pubkey { advert } => pubkey(advert),
        Command::Sim(args) => sim(args).context("simulation failed"),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mpvr", &mut std::io::stdout());
            Ok(true)
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| true)
            .context("writing the manual page"),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mpvr: {e:#}");
            ExitCode::from(1)
        }
    }
}
