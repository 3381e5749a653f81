//! `mpvr run`: the thin Linux shell around the core.
//!
//! Tasks: one per TUN queue reads it, one per link reads that link's socket; each
//! feeds what it read to the [`Node`] (behind a mutex: the core is one state
//! machine, and the lock is held only for the core call) and sends or
//! delivers what the node returns. The main task (spawned on the same
//! workers, not run on the process's first thread) watches netlink, runs
//! the node's timers and handles signals; a reader that moves the node's
//! timer earlier wakes it after its own sends. No protocol decision is taken here.
//!
//! Parts: start-up and the main loop here; `shared` (what the tasks
//! share, rate-limited logs), `links` (links reconciled with the NIC
//! list, policy routing, endpoints), `readers` (the TUN and link reader
//! tasks), `send` (copies onto sockets, GSO runs), `control` (the
//! control socket and Prometheus), `exit` (the internet exit: the exit
//! host's forwarding and nftables table, a site's full-tunnel routes and
//! fallback), `plan` (pure decisions).
//!
//! Start-up order keeps "a bad config changes nothing": privileges, NICs
//! named in the config, keys and node settings are all checked before the
//! TUN is created. On SIGINT/SIGTERM every route and rule mpvr added is
//! removed, the exit's table and sysctls are put back, and the TUN is
//! closed (the kernel deletes it with its addresses and routes). The TUN's
//! MTU follows the paths' measured MTU with `host.mtu = "auto"`, and ICMP
//! "too big" answers the core makes are written to it.

mod control;
mod exit;
mod links;
pub mod plan;
mod readers;
mod reload;
mod routes;
mod send;
mod shared;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::proto::{self, BundleConfig, Node, Transmits};
use crate::sys::netlink::{self, Netlink, NetlinkError, Nic};
use crate::sys::privilege::missing_capabilities;
use crate::sys::tun;
use links::Links;
use readers::read_tun;
pub use shared::IoCounters;
use shared::{Shared, log_summary};

/// Priority of the policy rules mpvr adds (one per link with a `gateway`,
/// into one of the daemon's own tables, [`plan::link_tables`]); those of
/// this daemon's tables are flushed at start.
pub const RULE_PRIORITY: u32 = 5182;
/// How often the NIC list is re-read even without netlink events.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// How often the paths' data counts are sampled for the recent loss in status.
const LOSS_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Largest datagram read from a socket or packet read from the TUN.
pub(super) const BUF_LEN: usize = 65_536;

/// Why `mpvr run` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Missing capabilities.
    #[error(
        "mpvr run needs {0}: run it as root, or grant the capabilities \
         (for example AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW in its systemd unit)"
    )]
    Privilege(String),
    /// NICs named in the config do not exist.
    #[error(
        "the config names network interfaces that do not exist: {}; check the names with `ip link`, \
         or remove them from the config",
        .0.join(", ")
    )]
    MissingNics(Vec<String>),
    /// The node refused its settings.
    #[error("invalid settings: {0}")]
    Node(#[from] proto::SetupError),
    /// The TUN could not be created.
    #[error("cannot create the TUN device {name}: {source} (is the tun module loaded, and is the name free?)")]
    Tun {
        /// Its name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A socket or the netlink connection could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// A task reported a fatal error.
    #[error("{0}")]
    Fatal(String),
}

/// The node with neighbours and routes from the config. `wall_epoch_ns`
/// is the wall clock at the node's time zero (handshake timestamps).
fn build_node(cfg: &Config, max_packet: usize, wall_epoch_ns: u64) -> Result<Node, RunError> {
    let mut rng_seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut rng_seed)
        .map_err(|_| RunError::Fatal("the system random generator failed".into()))?;
    let nc = cfg.node_config(max_packet, wall_epoch_ns, rng_seed);
    let mut node = Node::new(nc)?;
    for p in cfg.peers.iter().filter(|p| p.via.is_none()) {
        let public_key = p.public_key.expect("config check: a neighbour has a public key");
        node.add_bundle(BundleConfig { host: p.id, public_key, psk: p.psk, endpoints: Vec::new() })?;
        node.set_policy(p.id, p.policy)?;
    }
    for (prefix, next) in plan::configured_routes(cfg) {
        node.add_route(prefix, next)?;
    }
    claim_prefixes(&mut node, cfg);
    Ok(node)
}

/// Tell the node which host each configured prefix belongs to (a peer's
/// `prefixes`, this host's addresses and `advertise`): no other origin's
/// advert may claim them.
fn claim_prefixes(node: &mut Node, cfg: &Config) {
    node.clear_claims();
    for a in &cfg.addresses {
        node.claim(IpNet::from(a.addr()), cfg.host);
    }
    for p in &cfg.advertise {
        node.claim(*p, cfg.host);
    }
    for p in &cfg.peers {
        for prefix in &p.prefixes {
            node.claim(*prefix, p.id);
        }
    }
}

/// Fail unless the process has the capabilities `mpvr run` needs. Checked
/// first, before the config (whose key file root alone may read) is loaded.
pub fn check_privileges() -> Result<(), RunError> {
    let missing = missing_capabilities();
    if missing.is_empty() { Ok(()) } else { Err(RunError::Privilege(missing.join(" and "))) }
}

/// Check everything that can be checked without changing the system.
pub async fn preflight(cfg: &Config) -> Result<(Netlink, Vec<Nic>), RunError> {
    check_privileges()?;
    let nl = Netlink::new().map_err(|source| RunError::Io { what: "opening netlink".into(), source })?;
    let nics = nl.nics().await?;
    let missing = plan::missing_nics(cfg, &nics);
    if !missing.is_empty() {
        return Err(RunError::MissingNics(missing));
    }
    Ok((nl, nics))
}

/// Run until SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let mut cfg = Arc::new(cfg);
    let (nl, nics) = preflight(&cfg).await?;
    let mut control = control::ControlSocket::bind(&cfg.control_socket)?;
    let metrics = match cfg.prometheus {
        Some(addr) => Some(control::bind_metrics(addr).await?),
        None => None,
    };
    let initial: Vec<&Nic> = nics.iter().filter(|n| plan::classify(n, &cfg, None).is_ok()).collect();
    let mtu = plan::mtu(&cfg, &initial);
    let epoch = std::time::Instant::now();
    let wall_epoch_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let node = build_node(&cfg, usize::from(mtu), wall_epoch_ns)?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|source| RunError::Io { what: "SIGINT handler".into(), source })?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|source| RunError::Io { what: "SIGTERM handler".into(), source })?;
    let mut sighup =
        signal(SignalKind::hangup()).map_err(|source| RunError::Io { what: "SIGHUP handler".into(), source })?;
    let mut watch = netlink::watch().map_err(|source| RunError::Io { what: "netlink events".into(), source })?;

    // From here on the system changes.
    // A device with that name is another program's (mpvr never makes a
    // persistent TUN): attaching to it, or to its tables, is not ours to do.
    if std::path::Path::new("/sys/class/net").join(&cfg.tun).exists() {
        return Err(RunError::Fatal(format!(
            "a network interface named {} exists already (another mpvr's TUN, another VPN's, or a persistent \
             TUN): set host.tun to a free name",
            cfg.tun
        )));
    }
    let (tun, tun_index) = tun::create(&cfg.tun, mtu, crate::sys::udp::Disabled::from_env()).map_err(|source| {
        match source.raw_os_error() {
            Some(libc::EBUSY) => RunError::Fatal(format!(
                "the TUN name {} is in use (another mpvr, or another VPN): set host.tun to a free name",
                cfg.tun
            )),
            _ => RunError::Tun { name: cfg.tun.clone(), source },
        }
    })?;
    // The tables are this daemon's by its TUN's name, and the TUN is ours
    // now (another live daemon with that name would have made its creation
    // fail): what is in them is what a killed earlier run left.
    let stale = nl.flush_tables(RULE_PRIORITY, plan::link_tables(&cfg.tun)).await?;
    if stale > 0 {
        info!(stale, "removed policy rules and routes left by an earlier run of this daemon");
    }
    for a in &cfg.addresses {
        // Dropping `tun` on this error deletes it with what was added.
        nl.add_address(tun_index, *a).await?;
    }
    let mut tun_routes = routes::TunRoutes::default();
    tun_routes.sync(&nl, tun_index, &plan::tun_routes(&cfg), true).await;
    let held_at_start: Vec<String> = tun_routes.held().map(|p| p.to_string()).collect();
    match tun.offload() {
        tun::Offload::On { udp } => info!(
            tcp = "segmentation and checksum offload (TSO4/TSO6): super-packets up to 64 KiB per read",
            udp =
                if *udp { "segmentation offload (USO)" } else { "one datagram per read (kernels before 6.2 lack USO)" },
            "TUN offloads"
        ),
        tun::Offload::Off(why) => info!(why = %why, "TUN offloads off: one packet per read and write"),
    }
    match tun.queues() {
        tun::Queues::TcpApart(_) => info!("TUN queues: TCP in one, everything else in another, each with its reader"),
        tun::Queues::One(why) => warn!(why = %why, "one TUN queue: real-time packets may wait behind TCP's in it"),
    }
    info!(host = cfg.host.get(), tun = %cfg.tun, mtu, addresses = ?cfg.addresses, "mpvr running");

    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        sockets: RwLock::new(HashMap::new()),
        tun,
        epoch,
        tun_mtu: std::sync::atomic::AtomicU16::new(mtu),
        tun_mtu_bounds: plan::tun_mtu_bounds(&cfg, mtu),
        exit: Mutex::new(None),
        io: IoCounters::default(),
        send_error_log: Default::default(),
        rejection_log: Default::default(),
        advert_log: Default::default(),
        names: RwLock::new(HashMap::new()),
        tun_name: cfg.tun.clone(),
        config: Mutex::new(shared::ConfigState::new(&cfg.source)),
        held_routes: Mutex::new(held_at_start),
        loss_window: Mutex::new(crate::status::LossWindow::default()),
        wake_ns: std::sync::atomic::AtomicU64::new(0),
        timer_changed: tokio::sync::Notify::new(),
    });
    let (reload_tx, mut reload_rx) = mpsc::channel::<control::ReloadRequest>(4);
    let control_task = tokio::spawn(control.serve(shared.clone(), reload_tx));
    info!(socket = %cfg.control_socket.display(), "control socket ready (mpvr status)");
    let metrics_task = metrics.map(|l| {
        info!(address = %cfg.prometheus.map(|a| a.to_string()).unwrap_or_default(), "serving Prometheus metrics at /metrics");
        tokio::spawn(control::serve_metrics(l, shared.clone()))
    });
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let mut links = Links {
        cfg: cfg.clone(),
        nl: nl.clone(),
        shared: shared.clone(),
        tun_index,
        up: BTreeMap::new(),
        down: BTreeMap::new(),
        offloads_logged: false,
        fatal: fatal_tx.clone(),
    };
    // The exit before the links: a refusal (no nft, no such interface)
    // stops the start with nothing changed but the TUN, which goes with it.
    let exit_host = match cfg.exit {
        Some(_) => Some(exit::ExitHost::start(&cfg, &nics)?),
        None => None,
    };
    let mut full_tunnel = exit::FullTunnel::new(&cfg);
    links.reconcile(nics).await;
    if links.up.is_empty() {
        warn!(
            "no network interface is a link (check links.include and links.exclude; virtual NICs need \
             links.allow_virtual = true): mpvr runs and takes a NIC as soon as one qualifies"
        );
    }
    let tun_readers: Vec<_> =
        (0..shared.tun.queue_count()).map(|q| tokio::spawn(read_tun(shared.clone(), q, fatal_tx.clone()))).collect();
    // systemd (Type=notify): ready once the TUN, the links and their
    // sockets are up; a watchdog ping from the main loop every half its
    // interval. Without NOTIFY_SOCKET these do nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "cannot tell systemd that mpvr is ready");
    }
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    let mut out = Transmits::new();
    // A full re-read now and then, in case an event was lost (a netlink
    // socket that overflows drops events: ENOBUFS).
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    let mut sample = tokio::time::interval(LOSS_SAMPLE_INTERVAL);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let wake = {
            let next = shared.node().poll_timeout();
            let cap = shared.now() + Duration::from_secs(1);
            let at = next.map_or(cap, |t| t.min(cap));
            shared.wake_ns.store(at.as_nanos(), std::sync::atomic::Ordering::Relaxed);
            shared.epoch + Duration::from_nanos(at.as_nanos())
        };
        tokio::select! {
            _ = shared.timer_changed.notified() => {}
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the config");
                let _ = reload_in_place(&mut cfg, &mut links, &nl, &shared, tun_index, &mut tun_routes).await;
            }
            Some(reply) = reload_rx.recv() => {
                info!("mpvr reload: reloading the config");
                let outcome = reload_in_place(&mut cfg, &mut links, &nl, &shared, tun_index, &mut tun_routes).await;
                let _ = reply.send(outcome);
            }
            _ = sample.tick() => shared.sample_loss(),
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Some(msg) = fatal_rx.recv() => break Err(RunError::Fatal(msg)),
            ev = watch.next() => {
                if ev.is_none() {
                    break Err(RunError::Fatal("the netlink event socket closed".into()));
                }
                // Let a burst of events settle, then read the whole picture once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Some(Some(())) = watch.next().now_or_never() {}
                match nl.nics().await {
                    Ok(nics) => links.reconcile(nics).await,
                    Err(e) => warn!(error = %e, "cannot list network interfaces"),
                }
            }
            _ = resync.tick() => {
                match nl.nics().await {
                    Ok(nics) => links.reconcile(nics).await,
                    Err(e) => warn!(error = %e, "cannot list network interfaces"),
                }
                let want = wanted_tun_routes(&shared, &cfg);
                tun_routes.sync(&nl, tun_index, &want, true).await;
                publish_held(&shared, &tun_routes);
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = shared.now();
                {
                    let mut node = shared.node();
                    node.handle_timeout(now, &mut out);
                    shared.log_events(&mut node);
                }
                shared.send(&mut out);
                out.clear();
                let want = wanted_tun_routes(&shared, &cfg);
                tun_routes.sync(&nl, tun_index, &want, false).await;
                follow_exit(&nl, &shared, tun_index, exit_host.as_ref(), full_tunnel.as_mut()).await;
            }
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tun_readers.iter().for_each(|r| r.abort());
    control_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    drop(control);
    log_summary(&shared, &links);
    if let Some(f) = full_tunnel.as_mut() {
        f.remove(&nl).await;
    }
    if let Some(e) = exit_host {
        e.stop();
    }
    links.shutdown().await;
    tun_routes.clear(&nl, tun_index).await;
    info!("mpvr stopped; routes and rules removed");
    result
}

/// The kernel routes the TUN should have now: the configured peers'
/// prefixes, and every prefix the mesh routes that the kernel would not
/// send to the TUN already.
fn wanted_tun_routes(shared: &Shared, cfg: &Config) -> BTreeSet<IpNet> {
    let mut want = plan::tun_routes(cfg);
    let node = shared.node();
    want.extend(plan::mesh_kernel_routes(node.routes().iter().filter(|(p, _)| node.mesh_origin(*p).is_some()), cfg));
    want
}

/// Keep the full tunnel's routes in line with whether a path to the exit
/// is up, and the exit's state in status.
async fn follow_exit(
    nl: &Netlink,
    shared: &Shared,
    tun_index: u32,
    exit_host: Option<&exit::ExitHost>,
    full: Option<&mut exit::FullTunnel>,
) {
    let snap = if let Some(f) = full {
        let up = {
            let node = shared.node();
            node.bundle(f.neighbour)
                .is_some_and(|b| b.has_session() && b.paths().iter().any(|p| p.usable && p.monitor.health().is_alive()))
        };
        f.update(nl, tun_index, up).await;
        Some(crate::status::ExitSnap {
            role: "site".into(),
            peer: Some(f.exit.get()),
            fallback: Some(f.fallback.name().into()),
            state: Some(f.state().into()),
            state_for_s: Some(f.since.elapsed().as_secs_f64()),
            ..Default::default()
        })
    } else {
        exit_host.map(|e| crate::status::ExitSnap {
            role: "exit".into(),
            interface: Some(e.interface.clone()),
            ipv6: e.ipv6,
            tracked: exit::ExitHost::tracked(),
            ..Default::default()
        })
    };
    *shared.exit.lock().unwrap_or_else(|e| e.into_inner()) = snap;
}

/// Reload the config in place ([`reload::reload`]), telling systemd
/// (RELOADING=1, then READY=1) and recording the outcome for status; a
/// refused reload is logged with its reasons and changes nothing.
async fn reload_in_place(
    cfg: &mut Arc<Config>,
    links: &mut Links,
    nl: &Netlink,
    shared: &Shared,
    tun_index: u32,
    tun_routes: &mut routes::TunRoutes,
) -> reload::Outcome {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    states.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    let _ = sd_notify::notify(&states);
    let outcome = reload::reload(cfg, links, nl, shared, tun_index, tun_routes).await;
    {
        let mut c = shared.config.lock().unwrap_or_else(|e| e.into_inner());
        match &outcome {
            Ok(_) => {
                *c = shared::ConfigState { reloads: c.reloads + 1, ..shared::ConfigState::new(&cfg.source) };
            }
            Err(e) => {
                warn!("reload refused, the running config stays: {e}");
                c.last_error = Some(e.clone());
            }
        }
    }
    publish_held(shared, tun_routes);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    outcome
}

/// The prefixes another program holds, for status.
fn publish_held(shared: &Shared, tun_routes: &routes::TunRoutes) {
    *shared.held_routes.lock().unwrap_or_else(|e| e.into_inner()) = tun_routes.held().map(|p| p.to_string()).collect();
}
