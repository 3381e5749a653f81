//! The router: the configured routes, the mesh's, and the table composed of
//! both that every packet is looked up in.
//!
//! The table in use is the configured routes with, for every host the mesh
//! reaches, that host's advertised prefixes through the mesh's next hop on
//! top (never over one of this host's own prefixes). It is rebuilt when a
//! configured route or the mesh changes, never per packet.
//!
//! The router validates nothing about next hops: the node checks that a
//! configured next hop is a peer before it calls [`Router::add`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ids::HostId;
use super::mesh::{Heard, Mesh, MeshConfig, MeshRoute, RouteChange};
use super::route::{NextHop, RouteTable};
use super::time::Time;

/// Configured and mesh routes of one host.
#[derive(Debug)]
pub struct Router {
    /// The routes in use: the configured ones, with the mesh's on top.
    table: RouteTable,
    /// The configured routes.
    configured: RouteTable,
    /// Prefixes routed by the mesh, with the host that advertised them.
    mesh_prefixes: BTreeMap<IpNet, HostId>,
    /// Every prefix another host advertised, to its origin (as a next hop).
    origins: RouteTable,
    /// Route advertisements (`None`: configured routes only).
    mesh: Option<Mesh>,
    /// Grows with every rebuild of the table.
    version: u64,
}

impl Router {
    /// A router for host `me` with no routes.
    pub fn new(me: HostId, mesh: Option<MeshConfig>) -> Router {
        Router {
            table: RouteTable::new(),
            configured: RouteTable::new(),
            mesh_prefixes: BTreeMap::new(),
            origins: RouteTable::new(),
            mesh: mesh.map(|cfg| Mesh::new(me, cfg)),
            version: 0,
        }
    }

    /// The next hop toward `dst`.
    pub fn lookup(&self, dst: IpAddr) -> Option<NextHop> {
        self.table.lookup(dst)
    }

    /// The table in use.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The mesh, if enabled.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// The host that advertised `prefix`, if the route to it came from the mesh.
    pub fn mesh_origin(&self, prefix: IpNet) -> Option<HostId> {
        self.mesh_prefixes.get(&prefix.trunc()).copied()
    }

    /// The mesh route behind `prefix`, if it came from the mesh.
    pub fn mesh_route(&self, prefix: IpNet) -> Option<&MeshRoute> {
        let origin = self.mesh_origin(prefix)?;
        self.mesh.as_ref()?.routes().get(&origin)
    }

    /// Grows whenever an answer of [`Router::source_ok`] may change (a
    /// cached answer with an older version is stale).
    pub fn version(&self) -> u64 {
        self.version.wrapping_add(self.mesh.as_ref().map_or(0, |m| m.through_version() << 32))
    }

    /// Whether neighbour `sender` may send packets from `src`: the route to
    /// `src` goes to it, or `src` is advertised by a host the mesh reaches
    /// through it without crossing this host (routes may be asymmetric).
    /// A neighbour may not send as this host, nor as a host elsewhere.
    pub fn source_ok(&self, src: IpAddr, sender: HostId) -> bool {
        match self.table.lookup(src) {
            Some(NextHop::Host(h)) if h == sender => true,
            Some(NextHop::Local) => false,
            _ => match (self.origins.lookup(src), &self.mesh) {
                (Some(NextHop::Host(origin)), Some(m)) => origin == sender || m.reachable_through(origin, sender),
                _ => false,
            },
        }
    }

    /// Route `prefix` to `next`; returns the configured route it replaced.
    pub fn add(&mut self, prefix: IpNet, next: NextHop) -> Option<NextHop> {
        let old = self.configured.insert(prefix, next);
        self.rebuild();
        old
    }

    /// Remove the configured route for exactly `prefix`.
    pub fn remove(&mut self, prefix: IpNet) -> Option<NextHop> {
        let old = self.configured.remove(prefix);
        self.rebuild();
        old
    }

    /// The configured routes.
    pub fn configured(&self) -> impl Iterator<Item = (IpNet, NextHop)> + '_ {
        self.configured.iter()
    }

    /// This host's own prefixes (what it advertises).
    pub fn local_prefixes(&self) -> Vec<IpNet> {
        self.configured.iter().filter(|(_, n)| *n == NextHop::Local).map(|(p, _)| p).collect()
    }

    /// Sign this host's adverts with the key from `seed`.
    pub fn set_signing_seed(&mut self, seed: [u8; 32]) {
        if let Some(m) = &mut self.mesh {
            m.set_signing_seed(seed);
        }
    }

    /// Ask the mesh to advertise this host at its next tick.
    pub fn readvertise(&mut self) {
        if let Some(m) = &mut self.mesh {
            m.readvertise();
        }
    }

    /// The mesh's timer work (see [`Mesh::tick`]); `None` with no mesh.
    /// Returns this host's advert to flood, if one is due, and the next
    /// hops that changed.
    pub fn tick(
        &mut self,
        now: Time,
        wall_ms: u64,
        direct: &[(HostId, u32)],
    ) -> Option<(Option<super::mesh::Advert>, Vec<RouteChange>)> {
        let prefixes = self.local_prefixes();
        let t = self.mesh.as_mut()?.tick(now, wall_ms, &prefixes, direct);
        if t.changed {
            self.rebuild();
        }
        Some((t.advert, t.route_changes))
    }

    /// An authenticated advert; what the mesh made of it (always
    /// [`Heard::Known`] with no mesh).
    pub fn receive(&mut self, advert: super::mesh::Advert, now: Time, direct: &[(HostId, u32)]) -> Heard {
        let Some(m) = &mut self.mesh else { return Heard::Known };
        let heard = m.receive(advert, now, direct);
        if matches!(heard, Heard::New { .. }) {
            self.rebuild();
        }
        heard
    }

    /// When the mesh's timer work is due.
    pub fn next_timeout(&self) -> Option<Time> {
        self.mesh.as_ref()?.next_timeout()
    }

    fn rebuild(&mut self) {
        self.version += 1;
        let mut t = self.configured.clone();
        self.mesh_prefixes.clear();
        self.origins = RouteTable::new();
        if let Some(mesh) = &self.mesh {
            for adv in mesh.others() {
                for p in &adv.prefixes {
                    if self.configured.get(*p) != Some(NextHop::Local) {
                        self.origins.insert(*p, NextHop::Host(adv.origin));
                    }
                }
            }
            for (origin, r) in mesh.routes() {
                let Some(adv) = mesh.advert(*origin) else { continue };
                for p in &adv.prefixes {
                    if self.configured.get(*p) == Some(NextHop::Local) {
                        continue;
                    }
                    t.insert(*p, NextHop::Host(r.next));
                    self.mesh_prefixes.insert(p.trunc(), *origin);
                }
            }
        }
        self.table = t;
    }
}
