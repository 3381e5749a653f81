//! The configuration file (TOML), checked once into a [`Config`] the rest of
//! the daemon can trust.
//!
//! Every problem is reported with the field it concerns, what is wrong and how
//! to fix it; all problems are collected, not just the first. Loading a
//! config changes nothing on the system. See `examples/` for documented files.
//!
//! `file` is the file's shape (serde), `check` checks it section by
//! section; settings the core defines are validated by the core's own
//! functions, so a range is checked in one place.

mod check;
mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobSet;
use ipnet::IpNet;

use crate::keys::Key;
use crate::proto::mesh::MeshConfig;
use crate::proto::monitor::MonitorConfig;
use crate::proto::{HostId, LinkSettings, NodeConfig, Policy, Rule};
pub use crate::sys::Transport;

/// Default UDP port.
pub const DEFAULT_PORT: u16 = 51820;
/// Default TUN name.
pub const DEFAULT_TUN: &str = "mpvr0";

/// `host.threads`: the threads that run the daemon, its data path among it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One worker per CPU ([`Threads::count`]).
    Auto,
    /// This many (1: one thread runs everything).
    Fixed(u16),
}

/// The most `host.threads` takes.
pub const MAX_THREADS: u16 = 256;

impl Threads {
    /// How many threads, on a machine with `cpus` CPUs (those this process
    /// may run on). Auto: one worker per CPU, so the TUN reader and the link
    /// readers run in parallel. One thread instead (`threads = 1`) measured
    /// on the 2-CPU bench machine, both hosts on it: 8 % less CPU per
    /// gigabit and 11-30 % less added RTT, but 18 % less UDP over 2
    /// duplicated links, and pings 3-17 % slower under a TCP flow (README,
    /// Performance): no default for every machine.
    pub fn count(self, cpus: usize) -> usize {
        match self {
            Threads::Fixed(n) => usize::from(n),
            Threads::Auto => cpus.max(1),
        }
    }
}

impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threads::Auto => f.write_str("auto"),
            Threads::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The TUN MTU: computed from the links, or fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtu {
    /// Smallest link MTU minus the encapsulation overhead at start, then
    /// what the paths are measured to carry.
    Auto,
    /// This value.
    Fixed(u16),
}

impl std::fmt::Display for Mtu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mtu::Auto => f.write_str("auto (from the links, then what the paths carry)"),
            Mtu::Fixed(m) => write!(f, "{m}"),
        }
    }
}

/// Which NICs become links.
#[derive(Clone, Debug)]
pub struct LinkSelection {
    include: GlobSet,
    exclude: GlobSet,
    /// Virtual devices (veth, bridges, ...) may be links.
    pub allow_virtual: bool,
    /// `include` entries without wildcards: NICs named outright.
    pub named: Vec<String>,
    /// Per-link options by NIC name.
    pub options: BTreeMap<String, LinkOptions>,
}

impl LinkSelection {
    /// Whether a NIC with this name may be a link (physical-ness and state
    /// are checked by the caller).
    pub fn wants(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name) && self.options.get(name).is_none_or(|o| o.enabled)
    }
}

/// Options of one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkOptions {
    /// `false` keeps the NIC out whatever the globs say.
    pub enabled: bool,
    /// Next-hop router for this link's own routing table (policy routing):
    /// needed when the link has no default route of its own.
    pub gateway: Option<IpAddr>,
    /// Its role and upload rate.
    pub settings: LinkSettings,
}

/// A remote endpoint, optionally tied to one local NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Its UDP address.
    pub address: SocketAddr,
    /// Reach it only from this NIC.
    pub link: Option<String>,
}

/// A peer: a neighbour (with a key) or a host reached through a relay (`via`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its host id.
    pub id: HostId,
    /// Its public key (neighbours only).
    pub public_key: Option<Key>,
    /// Optional pre-shared key mixed into the handshakes with it.
    pub psk: Option<Key>,
    /// Its endpoints (may be empty: then it must contact us first).
    pub endpoints: Vec<EndpointConfig>,
    /// Prefixes routed to it.
    pub prefixes: Vec<IpNet>,
    /// The relay it is reached through.
    pub via: Option<HostId>,
    /// Its own duplication policy (a neighbour only; `None`: the global one).
    pub policy: Option<Policy>,
    /// It is this host's internet exit (`exit = true`): everything that is
    /// not local goes to it, and this is what happens while no path to it
    /// is up.
    pub exit: Option<Fallback>,
}

/// What a site's traffic for the internet does while the tunnel to its
/// exit is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// It uses the links' own default routes until a path is up again.
    Direct,
    /// It is dropped (a kill switch): nothing leaves outside the tunnel.
    Block,
}

impl Fallback {
    /// Its config word.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::Direct => "direct",
            Fallback::Block => "block",
        }
    }
}

/// This host is an internet exit for its peers (`[exit] enabled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitConfig {
    /// The interface traffic leaves by (`None`: the main table's default route's).
    pub interface: Option<String>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from.
    pub source: PathBuf,
    /// This host's id.
    pub host: HostId,
    /// This host's private key.
    pub private_key: Key,
    /// UDP port on every link.
    pub listen_port: u16,
    /// How datagrams travel between hosts.
    pub transport: Transport,
    /// TUN interface name.
    pub tun: String,
    /// Addresses (with prefix length) on the TUN.
    pub addresses: Vec<IpNet>,
    /// More prefixes this host advertises to the mesh (networks behind it).
    pub advertise: Vec<IpNet>,
    /// TUN MTU.
    pub mtu: Mtu,
    /// Which NICs are links.
    pub links: LinkSelection,
    /// Peers.
    pub peers: Vec<PeerConfig>,
    /// Real-time traffic's duplication policy.
    pub policy: Policy,
    /// Bulk traffic's duplication policy.
    pub bulk_policy: Policy,
    /// Classification rules, in order.
    pub rules: Vec<Rule>,
    /// Dedup / anti-replay window in packets.
    pub window: u32,
    /// Keepalive interval (`None`: off).
    pub keepalive: Option<Duration>,
    /// Hop limit on packets this host sends.
    pub hop_limit: u8,
    /// Which data ciphers this host offers and accepts.
    pub cipher: CipherChoice,
    /// The threads that run the daemon.
    pub threads: Threads,
    /// Probes and path states.
    pub monitor: MonitorConfig,
    /// The control socket `mpvr status` reads.
    pub control_socket: PathBuf,
    /// `control_socket` was given on the command line (`mpvr run
    /// --socket`): a reload keeps it, whatever the file says.
    pub control_socket_fixed: bool,
    /// Where Prometheus metrics are served (`None`: not served).
    pub prometheus: Option<SocketAddr>,
    /// Route advertisements (`None`: configured routes only).
    pub mesh: Option<MeshConfig>,
    /// This host forwards its peers' traffic to the internet (`None`: it does not).
    pub exit: Option<ExitConfig>,
}

/// `session.cipher`: which AEAD this host offers and accepts for sessions'
/// data ([`crate::proto::Cipher`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherChoice {
    /// AES-256-GCM when this CPU has AES instructions and the peer offers
    /// it too, ChaCha20-Poly1305 otherwise (the default).
    Auto,
    /// ChaCha20-Poly1305 always: AES-256-GCM is neither offered nor accepted.
    ChaCha20Poly1305,
}

impl fmt::Display for CipherChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CipherChoice::Auto => "auto",
            CipherChoice::ChaCha20Poly1305 => "chacha20-poly1305",
        })
    }
}

/// The control socket of a daemon whose TUN is `tun`, unless the config says otherwise.
pub fn default_control_socket(tun: &str) -> PathBuf {
    PathBuf::from(format!("/run/mpvr/{tun}.sock"))
}

/// The control socket of the daemon that runs with the config file at
/// `path` (`control.socket`, else from `host.tun`), read leniently: a
/// file with errors elsewhere still names its daemon's socket (`mpvr
/// reload` must reach a daemon whose edited file has a mistake, to be
/// told what it is).
pub fn control_socket_of(path: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!("{} is not TOML ({}): name the socket with -s PATH", path.display(), e.message())
    })?;
    let get = |section: &str, key: &str| table.get(section).and_then(|s| s.get(key)).and_then(|v| v.as_str());
    Ok(match get("control", "socket") {
        Some(s) => PathBuf::from(s),
        None => default_control_socket(get("host", "tun").unwrap_or(DEFAULT_TUN)),
    })
}

/// One thing wrong in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a path (`peer[1].endpoints[0]`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Everything wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub source_file: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{}: {} problem{}", self.source_file.display(), n, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            if p.field.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// The core's settings from this config: `max_packet` is the TUN MTU,
    /// `wall_epoch_ns` the wall clock at the node's time zero, `rng_seed`
    /// the seed of its random generator.
    pub fn node_config(&self, max_packet: usize, wall_epoch_ns: u64, rng_seed: [u8; 32]) -> NodeConfig {
        let mut nc = NodeConfig::new(self.host, self.private_key);
        nc.window_packets = self.window;
        nc.transport_header = self.transport.header_len();
        nc.exit = self.exit.is_some();
        nc.hop_limit = self.hop_limit;
        nc.keepalive = self.keepalive;
        nc.aes_gcm = self.offers_aes();
        nc.max_packet = max_packet;
        nc.policy = self.policy;
        nc.bulk_policy = self.bulk_policy;
        nc.rules = self.rules.clone();
        nc.monitor = self.monitor;
        nc.mesh = self.mesh;
        nc.wall_epoch_ns = wall_epoch_ns;
        nc.rng_seed = rng_seed;
        nc
    }
}

impl Config {
    /// Whether this host offers (and accepts) AES-256-GCM for sessions'
    /// data: `session.cipher` is "auto" and this CPU has AES instructions.
    pub fn offers_aes(&self) -> bool {
        self.cipher == CipherChoice::Auto && crate::sys::aes_in_hardware()
    }

    /// The core's settings that a reload may change ([`crate::proto::Node::retune`]).
    pub fn tunables(&self) -> crate::proto::Tunables {
        let mut t = NodeConfig::new(self.host, self.private_key).tunables();
        t.policy = self.policy;
        t.bulk_policy = self.bulk_policy;
        t.rules = self.rules.clone();
        t.monitor = self.monitor;
        t.keepalive = self.keepalive;
        t
    }
}

/// Check a NIC or TUN name as Linux accepts it.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Read and check a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let fail = |message: String| ConfigError {
        source_file: path.to_path_buf(),
        problems: vec![Problem { field: String::new(), message }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    parse(&text, path)
}

/// Check config text; `path` names it in messages and anchors a relative
/// `private_key_file`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: file::File = toml::from_str(text).map_err(|e| ConfigError {
        source_file: path.to_path_buf(),
        problems: vec![Problem { field: String::new(), message: e.to_string().trim_end().replace('\n', "\n  ") }],
    })?;
    let mut c = check::Checker::default();
    let host = c.host_id("host.id", file.host.id);
    let private_key = check::private_key(&mut c, &file.host, path);
    let h = check::host(&mut c, &file.host);
    let links = check::links(&mut c, &file.links, &file.link);
    let mut routed = BTreeMap::new();
    let peers = check::peers(&mut c, &file.peer, host, h.transport, &mut routed);
    check::advertised_not_routed(&mut c, &h.advertise, &routed);
    let policy = check::policy(&mut c, "policy", file.policy.as_deref(), Policy::All);
    let bulk_policy = check::policy(&mut c, "bulk_policy", file.bulk_policy.as_deref(), Policy::Failover);
    let rules = check::rules(&mut c, &file.rule);
    let (window, keepalive, hop_limit) = check::session(&mut c, &file.session);
    let cipher = check::cipher(&mut c, &file.session);
    let monitor = check::probe(&mut c, &file.probe);
    let (control_socket, prometheus) = check::control(&mut c, &file.control, &h.tun);
    let mesh = check::mesh(&mut c, &file.mesh);
    let exit = check::exit(&mut c, &file.exit, &peers);
    match (c.problems.is_empty(), host, private_key) {
        (true, Some(host), Some(private_key)) => Ok(Config {
            source: path.to_path_buf(),
            host,
            private_key,
            listen_port: h.listen_port,
            transport: h.transport,
            tun: h.tun,
            addresses: h.addresses,
            advertise: h.advertise,
            mtu: h.mtu,
            links,
            peers,
            policy,
            bulk_policy,
            rules,
            window,
            keepalive,
            hop_limit,
            cipher,
            threads: h.threads,
            monitor,
            control_socket,
            control_socket_fixed: false,
            prometheus,
            mesh,
            exit,
        }),
        _ => Err(ConfigError { source_file: path.to_path_buf(), problems: c.problems }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "GBpJ3Y0mRG9NwPtr4m9BdHI2c0gz+fyTQ2eAIOcZ0Hw=";
    const PUB: &str = "u4fHs/dULTSx3PUTF6pG8a4BTlN3I2jr/qSvbxh7Cyc=";

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.toml"))
    }

    fn fields(text: &str) -> Vec<String> {
        check(text).unwrap_err().problems.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_full_config_parses() {
        let c = check(&format!(
            r#"
            policy = "all"
            [host]
            id = 1
            private_key = "{KEY}"
            addresses = ["10.9.0.1/24", "fd09::1/64"]
            advertise = ["192.168.60.1/24"]
            mtu = 1400
            threads = 3
            [links]
            include = ["eth*", "wwan0"]
            exclude = ["eth9"]
            [link.wwan0]
            gateway = "10.64.0.1"
            [[peer]]
            id = 2
            public_key = "{PUB}"
            endpoints = ["192.0.2.2:51820", {{ address = "[2001:db8::2]:51820", link = "wwan0" }}]
            prefixes = ["10.9.0.2/32", "192.168.50.0/24"]
            policy = "failover"
            [[peer]]
            id = 3
            via = 2
            prefixes = ["10.9.0.3"]
            [session]
            window = 100000
            keepalive = "10s"
            hop_limit = 4
            cipher = "chacha20-poly1305"
            "#
        ))
        .unwrap();
        assert_eq!(c.host.get(), 1);
        assert_eq!(c.mtu, Mtu::Fixed(1400));
        assert_eq!((c.threads, c.threads.count(2)), (Threads::Fixed(3), 3), "a number is kept on any machine");
        assert_eq!(c.advertise, vec!["192.168.60.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(c.listen_port, DEFAULT_PORT);
        assert!(c.links.wants("eth0") && !c.links.wants("eth9") && c.links.wants("wwan0") && !c.links.wants("docker0"));
        assert_eq!(c.links.options["wwan0"].gateway, Some("10.64.0.1".parse().unwrap()));
        assert_eq!(c.peers[0].endpoints[1].link.as_deref(), Some("wwan0"));
        assert_eq!(c.peers[1].prefixes, vec!["10.9.0.3/32".parse::<IpNet>().unwrap()]);
        assert_eq!(c.peers[1].via, HostId::new(2));
        assert_eq!((c.peers[0].policy, c.peers[1].policy), (Some(Policy::Failover), None));
        assert_eq!((c.window, c.keepalive, c.hop_limit), (100_000, Some(Duration::from_secs(10)), 4));
        assert_eq!(c.cipher, CipherChoice::ChaCha20Poly1305);
        assert!(!c.node_config(1400, 0, [0; 32]).aes_gcm, "chacha20-poly1305 never offers AES-256-GCM");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let got = fields(&format!(
            r#"
            policy = "fastest"
            [host]
            id = 0
            private_key = "nope"
            tun = "this-name-is-far-too-long"
            addresses = ["10.9.0.300/24"]
            mtu = 100
            threads = 0
            [[peer]]
            id = 2
            endpoints = ["192.0.2.2"]
            prefixes = ["10.9.0.0/24"]
            [[peer]]
            id = 2
            public_key = "{PUB}"
            via = 7
            prefixes = ["10.9.0.7/24"]
            [session]
            window = 5
            keepalive = "100ms"
            hop_limit = 0
            cipher = "aes-128-cbc"
            "#
        ));
        let want = [
            "host.id",
            "host.private_key",
            "host.tun",
            "host.addresses[0]",
            "host.mtu",
            "host.threads",
            "peer[0].public_key",
            "peer[0].endpoints[0]",
            "peer[1].id",
            "peer[1].via",
            "peer[1].prefixes[0]",
            "peer[1].via",
            "policy",
            "session.window",
            "session.keepalive",
            "session.hop_limit",
            "session.cipher",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn threads_are_one_per_cpu_unless_set() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n");
        for text in [base.clone(), format!("{base}threads = \"auto\"\n")] {
            let t = check(&text).unwrap().threads;
            assert_eq!(t, Threads::Auto);
            assert_eq!([0, 1, 2, 8].map(|cpus| t.count(cpus)), [1, 1, 2, 8]);
        }
        assert_eq!(check(&format!("{base}threads = 256\n")).unwrap().threads.count(4), 256);
        for bad in ["0", "257", "-1", "\"many\"", "1.5"] {
            let e = check(&format!("{base}threads = {bad}\n")).unwrap_err();
            assert!(
                e.problems.iter().any(|p| p.field == "host.threads" || p.message.contains("threads")),
                "{bad}: {e}"
            );
        }
        let e = check(&format!("{base}threads = \"many\"\n")).unwrap_err().to_string();
        assert!(e.contains("\"many\" is not a thread count") && e.contains("from 1 to 256"), "{e}");
    }

    #[test]
    fn classes_roles_and_rates() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n");
        let c = check(&format!(
            "bulk_policy = \"all\"\n[[rule]]\nclass = \"realtime\"\nprotocol = \"tcp\"\nports = [22, \"5000-5010\"]\n\
             [[rule]]\nclass = \"bulk\"\nprefixes = [\"10.1.0.0/16\"]\ndscp = [8]\n{base}\
             [links]\ninclude = [\"eth*\", \"wwan0\"]\n[link.wwan0]\nrole = \"secondary\"\nup = \"5mbit\"\n"
        ))
        .unwrap();
        assert_eq!((c.policy, c.bulk_policy), (Policy::All, Policy::All));
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].to_string(), "tcp ports 22,5000-5010 -> realtime");
        let o = c.links.options["wwan0"].settings;
        assert_eq!((o.role, o.up.map(|r| r.bits())), (crate::proto::Role::Secondary, Some(5_000_000)));
        assert_eq!(check(&base).unwrap().bulk_policy, Policy::Failover, "the default");
        // Each mistake names its field.
        let bad = |extra: &str, tail: &str| fields(&format!("{extra}\n{base}{tail}"));
        assert_eq!(bad("bulk_policy = \"most\"", ""), ["bulk_policy"]);
        assert_eq!(bad("[[rule]]\nclass = \"urgent\"", ""), ["rule[0].class"]);
        assert_eq!(bad("[[rule]]\nclass = \"bulk\"\nprotocol = \"sctp\"", ""), ["rule[0].protocol"]);
        assert_eq!(bad("[[rule]]\nclass = \"bulk\"\nports = [\"9-x\"]", ""), ["rule[0].ports[0]"]);
        assert_eq!(bad("[[rule]]\nclass = \"bulk\"\ndscp = [99]", ""), ["rule[0].dscp"]);
        assert_eq!(bad("[[rule]]\nclass = \"bulk\"\nprotocol = \"icmp\"\nports = [1]", ""), ["rule[0].ports"]);
        let shadowed = "[[rule]]\nclass = \"bulk\"\nprotocol = \"udp\"\n[[rule]]\nclass = \"realtime\"\nprotocol = \"udp\"\nports = [5004]";
        let e = check(&format!("{shadowed}\n{base}")).unwrap_err().to_string();
        assert!(e.contains("rule[1]") && e.contains("never matches") && e.contains("before rule 0"), "{e}");
        assert_eq!(bad("", "[link.eth0]\nrole = \"spare\"\n"), ["link.eth0.role"]);
        assert_eq!(bad("", "[link.eth0]\nup = \"fast\"\n"), ["link.eth0.up"]);
        assert_eq!(bad("", "[link.eth0]\nup = \"10kbit\"\n"), ["link.eth0.up"]);
        assert_eq!(bad("", "[link.eth0]\ndown = \"lots\"\n"), ["link.eth0.down"]);
        let e = check(&format!("{base}[links]\ninclude = [\"eth*\"]\n[link.wlan0]\nrole = \"backup\"\n")).unwrap_err();
        assert_eq!(e.problems[0].field, "link.wlan0.role");
        assert!(e.problems[0].message.contains("not selected"), "{e}");
    }

    #[test]
    fn syntax_and_unknown_fields_are_refused_with_their_place() {
        let e = check("[host]\nid = 1\ncolour = \"red\"\n").unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("line 3"), "{e}");
        let e = check("[host\n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
        assert_eq!(fields("[host]\nid = 1\naddresses = [\"10.0.0.1/8\"]\n"), vec!["host"]);
    }

    #[test]
    fn probe_and_control_sections() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\ntun = \"wan9\"\n");
        let c = check(&base).unwrap();
        assert_eq!(c.monitor, MonitorConfig::default());
        assert_eq!(c.control_socket, PathBuf::from("/run/mpvr/wan9.sock"));
        assert_eq!(c.prometheus, None);
        assert_eq!(c.mesh, Some(MeshConfig::default()));
        assert_eq!(check(&format!("{base}[mesh]\nenabled = false\n")).unwrap().mesh, None);
        let m = check(&format!("{base}[mesh]\nrefresh = \"5s\"\nmax_age = \"20s\"\n")).unwrap().mesh.unwrap();
        assert_eq!((m.refresh, m.max_age), (Duration::from_secs(5), Duration::from_secs(20)));
        assert_eq!(fields(&format!("{base}[mesh]\nrefresh = \"20s\"\n")), ["mesh.max_age"]);
        assert_eq!(fields(&format!("{base}[mesh]\nrefresh = \"0s\"\n")), ["mesh.refresh"]);
        let both = format!(
            "[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\nadvertise = [\"10.5.0.0/16\"]\n\
             [[peer]]\nid = 2\npublic_key = \"{PUB}\"\nprefixes = [\"10.5.0.0/16\"]\n"
        );
        assert_eq!(fields(&both), ["host.advertise[0]"]);
        let c = check(&format!(
            "{base}[probe]\ninterval = \"100ms\"\nbusy_interval = \"500ms\"\ndown_after = 5\nup_after = 2\n\
             silence = \"1s\"\ndegraded_loss = \"2.5%\"\ndegraded_rtt = \"150ms\"\ndegraded_jitter = \"off\"\n\
             [control]\nsocket = \"/tmp/x.sock\"\nprometheus = \"127.0.0.1:9182\"\n"
        ))
        .unwrap();
        let m = c.monitor;
        assert_eq!(
            (m.interval, m.busy_interval, m.silence),
            (Duration::from_millis(100), Duration::from_millis(500), Duration::from_secs(1))
        );
        assert_eq!((m.down_after, m.up_after, m.degraded_loss), (5, 2, 0.025));
        assert_eq!((m.degraded_rtt, m.degraded_jitter), (Some(Duration::from_millis(150)), None));
        assert_eq!(c.control_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.prometheus, Some("127.0.0.1:9182".parse().unwrap()));
        let got = fields(&format!(
            "{base}[probe]\ninterval = \"fast\"\ndown_after = 0\ndegraded_loss = \"5\"\n\
             [control]\nsocket = \"relative.sock\"\nprometheus = \"0.0.0.0:9182\"\n"
        ));
        assert_eq!(
            got,
            ["probe.interval", "probe.down_after", "probe.degraded_loss", "control.socket", "control.prometheus"]
        );
        // Each value fine, together wrong: silence must exceed the busy interval.
        let e = check(&format!("{base}[probe]\nbusy_interval = \"2s\"\n")).unwrap_err().to_string();
        assert!(e.contains("probe: probe silence") && e.contains("busy_interval"), "{e}");
    }

    #[test]
    fn exits() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n");
        let peer = |id: u32, extra: &str| format!("[[peer]]\nid = {id}\npublic_key = \"{PUB}\"\n{extra}\n");
        let site = check(&format!("{base}{}", peer(3, "exit = true\nfallback = \"block\""))).unwrap();
        assert_eq!(site.peers[0].exit, Some(Fallback::Block));
        assert_eq!(check(&format!("{base}{}", peer(3, "exit = true"))).unwrap().peers[0].exit, Some(Fallback::Direct));
        let relay = check(&format!("{base}[exit]\nenabled = true\ninterface = \"eth0\"\n{}", peer(2, ""))).unwrap();
        assert_eq!(relay.exit, Some(ExitConfig { interface: Some("eth0".into()) }));
        assert_eq!(fields(&format!("{base}{}", peer(3, "fallback = \"direct\""))), vec!["peer[0].fallback"]);
        assert_eq!(fields(&format!("{base}{}", peer(3, "exit = true\nfallback = \"open\""))), vec!["peer[0].fallback"]);
        assert_eq!(
            fields(&format!("{base}{}{}", peer(3, "exit = true"), peer(4, "exit = true"))),
            vec!["peer[1].exit"]
        );
        assert_eq!(fields(&format!("{base}[exit]\nenabled = true\n{}", peer(3, "exit = true"))), vec!["exit.enabled"]);
        assert_eq!(fields(&format!("{base}[exit]\ninterface = \"eth0\"\n")), vec!["exit.interface"]);
    }

    #[test]
    fn transports() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n");
        let peer = format!("[[peer]]\nid = 2\npublic_key = \"{PUB}\"\nendpoints = [\"192.0.2.2\"]\n");
        assert_eq!(check(&base).unwrap().transport, Transport::Udp);
        let ip = check(&format!("{base}transport = \"ip\"\n{peer}")).unwrap();
        assert_eq!(ip.transport, Transport::Ip(253));
        assert_eq!(ip.peers[0].endpoints[0].address, "192.0.2.2:0".parse().unwrap());
        // A bare address needs the raw-IP transport.
        assert_eq!(fields(&format!("{base}{peer}")), vec!["peer[0].endpoints[0]"]);
        assert_eq!(fields(&format!("{base}transport = \"ip\"\nip_protocol = 17\n")), vec!["host.ip_protocol"]);
        assert_eq!(fields(&format!("{base}ip_protocol = 253\n")), vec!["host.ip_protocol"]);
        assert_eq!(fields(&format!("{base}transport = \"tcp\"\n")), vec!["host.transport"]);
    }

    #[test]
    fn glob_selection() {
        let c = check(&format!(
            "[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n[link.eth1]\nenabled = false\n"
        ))
        .unwrap();
        assert!(c.links.wants("eth0") && !c.links.wants("eth1"));
        assert!(valid_ifname("wan-1.2") && !valid_ifname("a/b") && !valid_ifname(""));
    }
}
