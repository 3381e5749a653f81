//! The config file's shape, as serde reads it: every section and field a
//! file may have (`deny_unknown_fields` everywhere), with no checking
//! beyond TOML types. [`super::check`] turns it into a [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) host: HostSection,
    #[serde(default)]
    pub(super) links: LinksSection,
    #[serde(default)]
    pub(super) link: BTreeMap<String, LinkSection>,
    #[serde(default)]
    pub(super) peer: Vec<PeerSection>,
    #[serde(default)]
    pub(super) policy: Option<String>,
    #[serde(default)]
    pub(super) bulk_policy: Option<String>,
    #[serde(default)]
    pub(super) rule: Vec<RuleSection>,
    #[serde(default)]
    pub(super) session: SessionSection,
    #[serde(default)]
    pub(super) probe: ProbeSection,
    #[serde(default)]
    pub(super) control: ControlSection,
    #[serde(default)]
    pub(super) mesh: MeshSection,
    #[serde(default)]
    pub(super) exit: ExitSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MeshSection {
    pub(super) enabled: Option<bool>,
    pub(super) refresh: Option<String>,
    pub(super) max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProbeSection {
    pub(super) interval: Option<String>,
    pub(super) busy_interval: Option<String>,
    pub(super) fast_interval: Option<String>,
    pub(super) down_after: Option<i64>,
    pub(super) up_after: Option<i64>,
    pub(super) silence: Option<String>,
    pub(super) degraded_loss: Option<String>,
    pub(super) degraded_rtt: Option<String>,
    pub(super) degraded_jitter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlSection {
    pub(super) socket: Option<PathBuf>,
    pub(super) prometheus: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostSection {
    pub(super) id: u32,
    pub(super) private_key: Option<String>,
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) listen_port: Option<u16>,
    pub(super) transport: Option<String>,
    pub(super) ip_protocol: Option<i64>,
    pub(super) tun: Option<String>,
    #[serde(default)]
    pub(super) addresses: Vec<String>,
    #[serde(default)]
    pub(super) advertise: Vec<String>,
    pub(super) mtu: Option<NumberOrWord>,
    pub(super) threads: Option<NumberOrWord>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinksSection {
    pub(super) include: Option<Vec<String>>,
    #[serde(default)]
    pub(super) exclude: Vec<String>,
    #[serde(default)]
    pub(super) allow_virtual: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkSection {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    pub(super) gateway: Option<String>,
    pub(super) role: Option<String>,
    pub(super) up: Option<String>,
    pub(super) down: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSection {
    pub(super) class: String,
    pub(super) protocol: Option<NumberOrWord>,
    #[serde(default)]
    pub(super) ports: Vec<NumberOrWord>,
    #[serde(default)]
    pub(super) prefixes: Vec<String>,
    #[serde(default)]
    pub(super) dscp: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum NumberOrWord {
    Number(i64),
    Word(String),
}

impl std::fmt::Display for NumberOrWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberOrWord::Number(n) => write!(f, "{n}"),
            NumberOrWord::Word(w) => write!(f, "{w:?}"),
        }
    }
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerSection {
    pub(super) id: u32,
    pub(super) public_key: Option<String>,
    pub(super) preshared_key: Option<String>,
    #[serde(default)]
    pub(super) endpoints: Vec<EndpointValue>,
    #[serde(default)]
    pub(super) prefixes: Vec<String>,
    pub(super) via: Option<u32>,
    pub(super) policy: Option<String>,
    #[serde(default)]
    pub(super) exit: bool,
    pub(super) fallback: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExitSection {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) interface: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum EndpointValue {
    Plain(String),
    Pinned(PinnedEndpoint),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PinnedEndpoint {
    pub(super) address: String,
    pub(super) link: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionSection {
    pub(super) window: Option<i64>,
    pub(super) keepalive: Option<String>,
    pub(super) hop_limit: Option<i64>,
    pub(super) cipher: Option<String>,
}
