//! Reload in place (SIGHUP, `mpvr reload`): the config file is read again
//! and what changed is applied to the running daemon. Peers that did not
//! change keep their sessions, paths and measurements; a re-keyed peer
//! starts over. Settings only a restart can change (identity, sockets,
//! the TUN, the window, the mesh, the exit) make the reload refuse, as a
//! config with errors does: the running config stays, whole.

use std::sync::Arc;

use tracing::info;

use super::links::Links;
use super::routes::TunRoutes;
use super::shared::Shared;
use super::{plan, wanted_tun_routes};
use crate::config::Config;
use crate::proto::{BundleConfig, HostId};
use crate::sys::netlink::Netlink;

/// What a reload did, in words (one line per kind of change), or why it
/// changed nothing.
pub(super) type Outcome = Result<Vec<String>, String>;

/// Read `cfg.source` again and apply it. On `Err` nothing changed.
pub(super) async fn reload(
    cfg: &mut Arc<Config>,
    links: &mut Links,
    nl: &Netlink,
    shared: &Shared,
    tun_index: u32,
    tun_routes: &mut TunRoutes,
) -> Outcome {
    let mut new = crate::config::load(&cfg.source).map_err(|e| e.to_string())?;
    if cfg.control_socket_fixed {
        new.control_socket = cfg.control_socket.clone();
        new.control_socket_fixed = true;
    }
    let blocked = plan::restart_only(cfg, &new);
    if !blocked.is_empty() {
        return Err(format!(
            "{}: changed settings that apply only at a restart: {} (restart mpvr, or put them back and reload)",
            cfg.source.display(),
            blocked.join(", ")
        ));
    }
    let nics = nl.nics().await.map_err(|e| e.to_string())?;
    let missing = plan::missing_nics(&new, &nics);
    if !missing.is_empty() {
        return Err(format!(
            "{}: names network interfaces that do not exist: {} (check the names with `ip link`)",
            cfg.source.display(),
            missing.join(", ")
        ));
    }
    let mut done = Vec::new();
    let (removed, added) = plan::neighbour_changes(cfg, &new);
    {
        let mut node = shared.node();
        node.retune(new.tunables()).map_err(|e| format!("{}: {e}", cfg.source.display()))?;
        if new.tunables() != cfg.tunables() {
            done.push("policies, classification rules, probe or keepalive settings".to_string());
        }
        for id in &removed {
            let _ = node.remove_bundle(*id);
        }
        for id in &added {
            let p = new.peers.iter().find(|p| p.id == *id).expect("from the new config");
            let public_key = p.public_key.expect("config check: a neighbour has a public key");
            node.add_bundle(BundleConfig { host: p.id, public_key, psk: p.psk, endpoints: Vec::new() })
                .map_err(|e| format!("peer {id}: {e}"))?;
        }
        for p in new.peers.iter().filter(|p| p.via.is_none()) {
            let _ = node.set_policy(p.id, p.policy);
        }
        // Every route of the new config (a re-keyed peer lost its own with
        // its bundle), then those only the old one had go.
        let (old_routes, new_routes) = (plan::configured_routes(cfg), plan::configured_routes(&new));
        for (prefix, next) in &new_routes {
            node.add_route(*prefix, *next).map_err(|e| format!("{}: {e}", cfg.source.display()))?;
        }
        let gone: Vec<_> = old_routes.keys().filter(|p| !new_routes.contains_key(p)).collect();
        for p in &gone {
            node.remove_route(**p);
        }
        super::claim_prefixes(&mut node, &new);
        let changed = new_routes.iter().filter(|(p, n)| old_routes.get(p) != Some(n)).count();
        if changed + gone.len() > 0 {
            done.push(format!("routes: {changed} added or changed, {} removed", gone.len()));
        }
    }
    let names = |ids: &[HostId]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let rekeyed: Vec<HostId> = removed.iter().filter(|i| added.contains(i)).copied().collect();
    let only_removed: Vec<HostId> = removed.iter().filter(|i| !added.contains(i)).copied().collect();
    let only_added: Vec<HostId> = added.iter().filter(|i| !removed.contains(i)).copied().collect();
    for (what, ids) in [("peers added", &only_added), ("peers removed", &only_removed), ("peers re-keyed", &rekeyed)] {
        if !ids.is_empty() {
            done.push(format!("{what}: {}", names(ids)));
        }
    }
    let old = std::mem::replace(cfg, Arc::new(new));
    links.cfg = cfg.clone();
    // Links: new options on links that stay up, then the selection
    // (links added or removed) and every neighbour's endpoints.
    let changed_links = links.apply_options(&old).await;
    if !changed_links.is_empty() {
        done.push(format!("link options: {}", changed_links.join(", ")));
    }
    let before: Vec<u32> = links.up.keys().copied().collect();
    links.reconcile(nics).await;
    let after: Vec<u32> = links.up.keys().copied().collect();
    if before != after {
        done.push(format!("links: {} up now", after.len()));
    }
    let endpoints = |c: &Config| c.peers.iter().map(|p| (p.id, p.endpoints.clone())).collect::<Vec<_>>();
    if endpoints(&old) != endpoints(cfg) {
        done.push("endpoints".into());
    }
    let want = wanted_tun_routes(shared, cfg);
    tun_routes.sync(nl, tun_index, &want, true).await;
    if done.is_empty() {
        done.push("no change".into());
    }
    info!(config = %cfg.source.display(), changes = %done.join("; "), "config reloaded");
    Ok(done)
}
