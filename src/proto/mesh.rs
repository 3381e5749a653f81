//! The mesh: route advertisements, the link-state database, and the routes
//! computed from it (the "virtual router").
//!
//! Each host originates an [`Advert`]: its own prefixes (its local routes)
//! and its neighbours with the cost of the bundle toward each (the cheapest
//! path that is not down, [`super::monitor::PathMonitor::cost`]). Adverts
//! are sealed to each neighbour like data (so authenticated hop by hop),
//! carry the origin's sequence number (wall-clock milliseconds, so they grow
//! across restarts), and are flooded: a host that gets a newer advert than
//! it holds stores it and passes it to its other neighbours. An origin
//! re-advertises every [`MeshConfig::refresh`], and at once (at most every
//! [`MIN_ADVERT_GAP`]) when a neighbour appears, disappears or its cost moves
//! by more than [`COST_CHANGE`]; adverts older than [`MeshConfig::max_age`]
//! are dropped.
//!
//! Routes: for each host in the database, the cost through each neighbour
//! is the cost to that neighbour plus the neighbour's shortest distance to
//! the host in a graph without this host (so a next hop never leads back
//! here by this host's view; links count only if both ends list each
//! other). The cheapest neighbour is the next hop, but the current one is
//! kept while its cost is within [`ROUTE_MARGIN`] (and [`ROUTE_MIN`]) of the
//! best: routes do not flap on RTT noise, as babel's RTT extension found.
//! While adverts disagree (during convergence) a packet may loop for a
//! moment: the hop limit ends it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::ids::HostId;
use super::time::Time;

/// At most this many prefixes and neighbours in one advert.
pub const MAX_ITEMS: usize = 64;
/// Triggered adverts are at least this far apart.
pub const MIN_ADVERT_GAP: Duration = Duration::from_millis(200);
/// A neighbour's cost change that triggers an advert (fraction).
pub const COST_CHANGE: f64 = 0.25;
/// ... and at least this much.
pub const COST_CHANGE_MIN: Duration = Duration::from_millis(3);
/// The current next hop stays while within this fraction of the best...
pub const ROUTE_MARGIN: f64 = 0.2;
/// ... or this much.
pub const ROUTE_MIN: Duration = Duration::from_millis(3);

/// Mesh settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Re-advertise this often.
    pub refresh: Duration,
    /// Forget adverts not refreshed for this long.
    pub max_age: Duration,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig { refresh: Duration::from_secs(10), max_age: Duration::from_secs(45) }
    }
}

/// Shortest and longest refresh interval (and age limit).
pub const REFRESH_RANGE: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);

/// Mesh settings that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeshConfigError {
    /// Refresh interval out of range.
    #[error("mesh refresh {0:?} is not a duration from 1s to 1h, such as \"10s\"")]
    Refresh(Duration),
    /// Age limit out of range.
    #[error("mesh max_age {0:?} is not a duration from 1s to 1h, such as \"45s\"")]
    MaxAge(Duration),
    /// Age limit under three refreshes.
    #[error(
        "mesh max_age {max_age:?} must be at least 3 x refresh ({refresh:?}): one lost advert must not drop a host's routes"
    )]
    MaxAgeShort {
        /// The age limit.
        max_age: Duration,
        /// The refresh interval.
        refresh: Duration,
    },
}

impl MeshConfig {
    /// Check the settings; nothing uses them until they pass.
    pub fn validate(&self) -> Result<(), MeshConfigError> {
        if !REFRESH_RANGE.contains(&self.refresh) {
            return Err(MeshConfigError::Refresh(self.refresh));
        }
        if !REFRESH_RANGE.contains(&self.max_age) {
            return Err(MeshConfigError::MaxAge(self.max_age));
        }
        if self.max_age < self.refresh * 3 {
            return Err(MeshConfigError::MaxAgeShort { max_age: self.max_age, refresh: self.refresh });
        }
        Ok(())
    }
}

/// One host's advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// The host it describes.
    pub origin: HostId,
    /// Its sequence number (grows with every advert of that origin).
    pub seq: u64,
    /// Its own prefixes.
    pub prefixes: Vec<IpNet>,
    /// Its neighbours and the cost toward each, in microseconds.
    pub neighbours: Vec<(HostId, u32)>,
    /// The origin's advert key (Ed25519, derived from its private key).
    pub key: [u8; 32],
    /// The origin's signature over everything above.
    pub sig: [u8; 64],
}

/// An advert that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed route advertisement")]
pub struct BadAdvert;

/// The Ed25519 seed of a host's advert key: derived from its X25519
/// private key, so there is no second key to keep.
pub fn signing_seed(private_key: &[u8; 32]) -> [u8; 32] {
    let mut input = [0u8; 47];
    input[..15].copy_from_slice(b"mpvr advert key");
    input[15..].copy_from_slice(private_key);
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    d.as_ref().try_into().expect("32 bytes")
}

/// The advert public key of the host with this X25519 private key (what
/// `mpvr pubkey --advert` prints and other hosts pin).
pub fn advert_key(private_key: &[u8; 32]) -> [u8; 32] {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&signing_seed(private_key)).expect("32 bytes");
    ring::signature::KeyPair::public_key(&pair).as_ref().try_into().expect("32 bytes")
}

impl Advert {
    /// Sign it with the key from `seed` ([`signing_seed`]): sets `key` and `sig`.
    pub fn sign(&mut self, seed: &[u8; 32]) {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte seed");
        self.key.copy_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
        let mut body = Vec::new();
        self.encode_signed_part(&mut body);
        self.sig.copy_from_slice(pair.sign(&body).as_ref());
    }

    /// Whether `sig` is `key`'s signature over the advert.
    pub fn signature_ok(&self) -> bool {
        // An unsigned advert (zeros; Ed25519 verifies zeros against the
        // small-order zero key) is not signed.
        if self.key == [0; 32] {
            return false;
        }
        let mut body = Vec::new();
        self.encode_signed_part(&mut body);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key).verify(&body, &self.sig).is_ok()
    }

    /// Encode into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_signed_part(out);
        out.extend_from_slice(&self.sig);
    }

    /// Everything but the signature.
    fn encode_signed_part(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.origin.get().to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        let prefixes = &self.prefixes[..self.prefixes.len().min(MAX_ITEMS)];
        out.push(prefixes.len() as u8);
        for p in prefixes {
            match p {
                IpNet::V4(n) => {
                    out.extend_from_slice(&[4, n.prefix_len()]);
                    out.extend_from_slice(&n.addr().octets());
                }
                IpNet::V6(n) => {
                    out.extend_from_slice(&[6, n.prefix_len()]);
                    out.extend_from_slice(&n.addr().octets());
                }
            }
        }
        let neighbours = &self.neighbours[..self.neighbours.len().min(MAX_ITEMS)];
        out.push(neighbours.len() as u8);
        for (h, c) in neighbours {
            out.extend_from_slice(&h.get().to_be_bytes());
            out.extend_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&self.key);
    }

    /// Decode; every length and value is checked.
    pub fn decode(b: &[u8]) -> Result<Advert, BadAdvert> {
        let mut r = Reader(b);
        let origin = HostId::new(r.u32()?).ok_or(BadAdvert)?;
        let seq = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > MAX_ITEMS {
            return Err(BadAdvert);
        }
        let mut prefixes = Vec::with_capacity(n);
        for _ in 0..n {
            let (family, len) = (r.u8()?, r.u8()?);
            let addr = match family {
                4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).map_err(|_| BadAdvert)?)),
                6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).map_err(|_| BadAdvert)?)),
                _ => return Err(BadAdvert),
            };
            prefixes.push(IpNet::new(addr, len).map_err(|_| BadAdvert)?.trunc());
        }
        let n = usize::from(r.u8()?);
        if n > MAX_ITEMS {
            return Err(BadAdvert);
        }
        let mut neighbours = Vec::with_capacity(n);
        for _ in 0..n {
            let h = HostId::new(r.u32()?).ok_or(BadAdvert)?;
            neighbours.push((h, r.u32()?));
        }
        let key = r.take(32)?.try_into().map_err(|_| BadAdvert)?;
        let sig = r.take(64)?.try_into().map_err(|_| BadAdvert)?;
        if !r.0.is_empty() {
            return Err(BadAdvert);
        }
        Ok(Advert { origin, seq, prefixes, neighbours, key, sig })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadAdvert> {
        if self.0.len() < n {
            return Err(BadAdvert);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BadAdvert> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, BadAdvert> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| BadAdvert)?))
    }
    fn u64(&mut self) -> Result<u64, BadAdvert> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| BadAdvert)?))
    }
}

/// A route computed from the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshRoute {
    /// The host whose prefix it is.
    pub origin: HostId,
    /// The neighbour packets go to.
    pub next: HostId,
    /// Total cost, microseconds.
    pub cost: u64,
    /// Since when this next hop is used.
    pub since: Time,
}

/// The link-state database and the routes computed from it.
#[derive(Clone, Debug)]
pub struct Mesh {
    me: HostId,
    cfg: MeshConfig,
    /// Adverts by origin, with when they arrived.
    db: BTreeMap<HostId, (Advert, Time)>,
    /// Next hop per destination host.
    routes: BTreeMap<HostId, MeshRoute>,
    /// The neighbour costs last advertised by this host.
    advertised: Vec<(HostId, u32)>,
    /// When this host last advertised (`None`: advertise at the next tick).
    last_advert: Option<Time>,
    /// For each host, the neighbours it is reachable through without
    /// crossing this host (by the database's two-way links).
    through: BTreeMap<HostId, Vec<HostId>>,
    /// Grows whenever `through` changes.
    through_version: u64,
    /// This host's last advert sequence number.
    seq: u64,
    /// The seed of this host's advert key (`None`: adverts go unsigned,
    /// which only unit tests do).
    signing_seed: Option<[u8; 32]>,
}

/// A next hop that changed ([`Mesh::tick`], [`Mesh::receive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// The destination host.
    pub dest: HostId,
    /// Its next hop now (`None`: no mesh route any more).
    pub next: Option<HostId>,
    /// Cost through it, microseconds.
    pub cost: u64,
}

/// What a [`Mesh::tick`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// This host's new advert, to flood to every neighbour.
    pub advert: Option<Advert>,
    /// The database or the routes changed: rebuild the route table.
    pub changed: bool,
    /// Next hops that changed.
    pub route_changes: Vec<RouteChange>,
}

/// What [`Mesh::receive`] did with an advert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Not newer than the one held (or this host's own): nothing to do.
    Known,
    /// Newer: stored; flood it on and rebuild the routes.
    New {
        /// Next hops that changed.
        route_changes: Vec<RouteChange>,
    },
}

/// Whether a neighbour set changed enough to advertise again.
pub fn changed_enough(old: &[(HostId, u32)], new: &[(HostId, u32)]) -> bool {
    if old.len() != new.len() {
        return true;
    }
    old.iter().zip(new).any(|((ha, ca), (hb, cb))| {
        let (a, b) = (f64::from(*ca), f64::from(*cb));
        ha != hb || ((a - b).abs() > a.max(b) * COST_CHANGE && (a - b).abs() > COST_CHANGE_MIN.as_micros() as f64)
    })
}

impl Mesh {
    /// The mesh of host `me`.
    pub fn new(me: HostId, cfg: MeshConfig) -> Mesh {
        Mesh {
            me,
            cfg,
            db: BTreeMap::new(),
            routes: BTreeMap::new(),
            advertised: Vec::new(),
            last_advert: None,
            through: BTreeMap::new(),
            through_version: 0,
            seq: 0,
            signing_seed: None,
        }
    }

    /// Sign this host's adverts with the key from `seed` ([`signing_seed`]).
    pub fn set_signing_seed(&mut self, seed: [u8; 32]) {
        self.signing_seed = Some(seed);
    }

    /// Its settings.
    pub fn config(&self) -> MeshConfig {
        self.cfg
    }

    /// Next hop per destination host.
    pub fn routes(&self) -> &BTreeMap<HostId, MeshRoute> {
        &self.routes
    }

    /// Every advert held (this host's own too), by origin.
    pub fn adverts(&self) -> impl Iterator<Item = &Advert> {
        self.db.values().map(|(a, _)| a)
    }

    /// The advert of `origin`, if held.
    pub fn advert(&self, origin: HostId) -> Option<&Advert> {
        self.db.get(&origin).map(|(a, _)| a)
    }

    /// The adverts of other hosts, for a neighbour with a new session.
    pub fn others(&self) -> impl Iterator<Item = &Advert> {
        let me = self.me;
        self.adverts().filter(move |a| a.origin != me)
    }

    /// Whether host `origin` is reachable through neighbour `n` without
    /// crossing this host: packets from `origin` may come in from `n`.
    pub fn reachable_through(&self, origin: HostId, n: HostId) -> bool {
        self.through.get(&origin).is_some_and(|v| v.contains(&n))
    }

    /// Grows whenever what [`Mesh::reachable_through`] answers may change.
    pub fn through_version(&self) -> u64 {
        self.through_version
    }

    /// Advertise this host at the next tick (a neighbour got a new session).
    pub fn readvertise(&mut self) {
        self.last_advert = None;
    }

    /// Take `advert` if it is newer than the one held; true if it was.
    pub fn accept(&mut self, advert: Advert, now: Time) -> bool {
        if self.db.get(&advert.origin).is_some_and(|(held, _)| held.seq >= advert.seq) {
            return false;
        }
        self.db.insert(advert.origin, (advert, now));
        true
    }

    /// An authenticated advert from a neighbour. This host's own from
    /// before a restart makes it advertise again above it. `direct`: the
    /// costs of the neighbours reachable now.
    pub fn receive(&mut self, advert: Advert, now: Time, direct: &[(HostId, u32)]) -> Heard {
        if advert.origin == self.me {
            if advert.seq > self.seq {
                self.seq = advert.seq;
                self.last_advert = None;
            }
            return Heard::Known;
        }
        if !self.accept(advert, now) {
            return Heard::Known;
        }
        Heard::New { route_changes: self.recompute(now, direct) }
    }

    /// The timer work at `now`: age the database, advertise this host when
    /// due (refresh, or neighbours changed enough, or asked) with
    /// `prefixes` and `direct`, recompute the routes. `wall_ms`: wall-clock
    /// milliseconds, the floor of the advert's sequence number.
    pub fn tick(&mut self, now: Time, wall_ms: u64, prefixes: &[IpNet], direct: &[(HostId, u32)]) -> Tick {
        let mut tick = Tick { changed: self.expire(now, self.cfg.max_age, self.me), ..Tick::default() };
        let due = match self.last_advert {
            None => true,
            Some(t) => {
                now - t >= self.cfg.refresh || (now - t >= MIN_ADVERT_GAP && changed_enough(&self.advertised, direct))
            }
        };
        if due {
            self.seq = self.seq.saturating_add(1).max(wall_ms);
            let mut advert = Advert {
                origin: self.me,
                seq: self.seq,
                prefixes: prefixes.to_vec(),
                neighbours: direct.to_vec(),
                key: [0; 32],
                sig: [0; 64],
            };
            if let Some(seed) = &self.signing_seed {
                advert.sign(seed);
            }
            self.db.insert(self.me, (advert.clone(), now));
            self.advertised = direct.to_vec();
            self.last_advert = Some(now);
            tick.advert = Some(advert);
            tick.changed = true;
        }
        tick.route_changes = self.recompute(now, direct);
        tick.changed |= !tick.route_changes.is_empty();
        tick
    }

    /// When [`Mesh::tick`] has work: the next refresh or expiry.
    pub fn next_timeout(&self) -> Option<Time> {
        let refresh = self.last_advert.map(|t| t + self.cfg.refresh);
        let me = self.me;
        let expiry = self.db.iter().filter(|(h, _)| **h != me).map(|(_, (_, at))| *at + self.cfg.max_age).min();
        [refresh, expiry].into_iter().flatten().min()
    }

    /// Recompute the routes; the next hops that changed.
    fn recompute(&mut self, now: Time, direct: &[(HostId, u32)]) -> Vec<RouteChange> {
        let before = self.routes.clone();
        if !self.compute(self.me, direct, now) {
            return Vec::new();
        }
        let mut changes: Vec<RouteChange> = self
            .routes
            .iter()
            .filter(|(dest, r)| before.get(dest).is_none_or(|b| b.next != r.next))
            .map(|(dest, r)| RouteChange { dest: *dest, next: Some(r.next), cost: r.cost })
            .collect();
        for dest in before.keys().filter(|d| !self.routes.contains_key(d)) {
            changes.push(RouteChange { dest: *dest, next: None, cost: 0 });
        }
        changes
    }

    /// Forget adverts older than `max_age` (never this host's own, `me`).
    fn expire(&mut self, now: Time, max_age: Duration, me: HostId) -> bool {
        let before = self.db.len();
        self.db.retain(|h, (_, at)| *h == me || now - *at < max_age);
        self.db.len() != before
    }

    /// The two-way links of the database: cost of `a` -> `b` if both list each other.
    fn edges(&self) -> BTreeMap<HostId, Vec<(HostId, u64)>> {
        let mut g: BTreeMap<HostId, Vec<(HostId, u64)>> = BTreeMap::new();
        for (a, (adv, _)) in &self.db {
            for &(b, cost) in &adv.neighbours {
                let back = self.db.get(&b).is_some_and(|(badv, _)| badv.neighbours.iter().any(|(x, _)| x == a));
                if back {
                    g.entry(*a).or_default().push((b, u64::from(cost)));
                }
            }
        }
        g
    }

    /// Shortest distances from `src` in `g` avoiding `skip`.
    fn dijkstra(g: &BTreeMap<HostId, Vec<(HostId, u64)>>, src: HostId, skip: HostId) -> BTreeMap<HostId, u64> {
        let mut dist = BTreeMap::new();
        let mut heap = BinaryHeap::new();
        heap.push(Reverse((0u64, src)));
        while let Some(Reverse((d, h))) = heap.pop() {
            if dist.contains_key(&h) {
                continue;
            }
            dist.insert(h, d);
            for &(n, c) in g.get(&h).map(Vec::as_slice).unwrap_or(&[]) {
                if n != skip && !dist.contains_key(&n) {
                    heap.push(Reverse((d.saturating_add(c.max(1)), n)));
                }
            }
        }
        dist
    }

    /// Recompute the routes of `me`, whose neighbours reachable now cost
    /// `direct` (microseconds). Returns true if a next hop changed.
    fn compute(&mut self, me: HostId, direct: &[(HostId, u32)], now: Time) -> bool {
        let g = self.edges();
        let via: Vec<(HostId, u64, BTreeMap<HostId, u64>)> =
            direct.iter().map(|&(n, c)| (n, u64::from(c).max(1), Self::dijkstra(&g, n, me))).collect();
        let mut routes = BTreeMap::new();
        let before = std::mem::take(&mut self.through);
        for &dest in self.db.keys().filter(|h| **h != me) {
            let through: Vec<HostId> =
                via.iter().filter(|(_, _, d)| d.contains_key(&dest)).map(|(n, _, _)| *n).collect();
            self.through.insert(dest, through);
            let best =
                via.iter().filter_map(|(n, c, d)| d.get(&dest).map(|x| (*n, c + x))).min_by_key(|&(n, cost)| (cost, n));
            let Some((best_next, best_cost)) = best else { continue };
            let old = self.routes.get(&dest);
            let kept = old.and_then(|o| {
                let cost =
                    via.iter().find(|(n, _, _)| *n == o.next).and_then(|(_, c, d)| d.get(&dest).map(|x| c + x))?;
                let slack = (best_cost as f64 * ROUTE_MARGIN).max(ROUTE_MIN.as_micros() as f64) as u64;
                (cost <= best_cost + slack).then_some(MeshRoute { cost, ..*o })
            });
            let route = kept.unwrap_or(MeshRoute { origin: dest, next: best_next, cost: best_cost, since: now });
            routes.insert(dest, route);
        }
        let changed = routes.len() != self.routes.len()
            || routes.iter().any(|(h, r)| self.routes.get(h).is_none_or(|o| o.next != r.next));
        self.routes = routes;
        if before != self.through {
            self.through_version += 1;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u32) -> HostId {
        HostId::new(n).unwrap()
    }

    fn mesh() -> Mesh {
        Mesh::new(h(1), MeshConfig::default())
    }

    fn adv(o: u32, seq: u64, n: &[(u32, u32)]) -> Advert {
        Advert {
            origin: h(o),
            seq,
            prefixes: vec![format!("10.9.0.{o}/32").parse().unwrap()],
            neighbours: n.iter().map(|&(x, c)| (h(x), c)).collect(),
            key: [0; 32],
            sig: [0; 64],
        }
    }

    #[test]
    fn a_signed_advert_verifies_and_any_change_breaks_it() {
        let seed = signing_seed(&[3; 32]);
        let mut a = adv(1, 7, &[(2, 1000)]);
        assert!(!a.signature_ok(), "unsigned");
        a.sign(&seed);
        assert!(a.signature_ok());
        assert_eq!(a.key, advert_key(&[3; 32]));
        assert_ne!(signing_seed(&[4; 32]), seed);
        let mut b = Vec::new();
        a.encode(&mut b);
        assert!(Advert::decode(&b).unwrap().signature_ok(), "the signature survives the wire");
        for change in [
            &(|x: &mut Advert| x.seq += 1) as &dyn Fn(&mut Advert),
            &|x| x.origin = h(9),
            &|x| x.prefixes.push("10.66.0.0/16".parse().unwrap()),
            &|x| x.neighbours[0].1 = 1,
            &|x| x.key[0] ^= 1,
            &|x| x.sig[5] ^= 1,
        ] {
            let mut x = a.clone();
            change(&mut x);
            assert!(!x.signature_ok(), "{x:?}");
        }
    }

    #[test]
    fn adverts_round_trip_and_bad_ones_are_refused() {
        let mut a = adv(1, 7, &[(2, 1000), (3, 2000)]);
        a.prefixes.push("fd09::/64".parse().unwrap());
        let mut b = Vec::new();
        a.encode(&mut b);
        assert_eq!(Advert::decode(&b), Ok(a));
        for cut in 0..b.len() {
            assert_eq!(Advert::decode(&b[..cut]), Err(BadAdvert), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Advert::decode(&long), Err(BadAdvert));
        let mut bad = b.clone();
        bad[13] = 5; // family
        assert_eq!(Advert::decode(&bad), Err(BadAdvert));
        let mut bad = b.clone();
        bad[14] = 33; // prefix length
        assert_eq!(Advert::decode(&bad), Err(BadAdvert));
    }

    #[test]
    fn newer_adverts_win_and_old_ones_age_out() {
        let mut m = mesh();
        assert!(m.accept(adv(2, 5, &[]), Time::ZERO));
        assert!(!m.accept(adv(2, 5, &[]), Time::ZERO));
        assert!(!m.accept(adv(2, 4, &[]), Time::ZERO));
        assert!(m.accept(adv(2, 6, &[]), Time::ZERO));
        assert!(m.expire(Time::ZERO + Duration::from_secs(60), Duration::from_secs(45), h(1)));
        assert!(m.db.is_empty());
    }

    /// A triangle 1-2 (direct), 1-3, 3-2, seen from host 1.
    fn triangle(direct: u32) -> Mesh {
        let mut m = mesh();
        m.accept(adv(1, 1, &[(2, direct), (3, 8000)]), Time::ZERO);
        m.accept(adv(2, 1, &[(1, direct), (3, 8000)]), Time::ZERO);
        m.accept(adv(3, 1, &[(1, 8000), (2, 8000)]), Time::ZERO);
        m
    }

    #[test]
    fn shortest_paths_with_hysteresis() {
        let mut m = triangle(10_000);
        assert!(m.compute(h(1), &[(h(2), 10_000), (h(3), 8000)], Time::ZERO));
        assert_eq!(m.routes[&h(2)].next, h(2));
        assert_eq!(m.routes[&h(3)].next, h(3));
        // The relay path (16 ms) is a little cheaper than a direct 17 ms: no change.
        let mut m2 = triangle(17_000);
        m2.routes = m.routes.clone();
        assert!(!m2.compute(h(1), &[(h(2), 17_000), (h(3), 8000)], Time::ZERO));
        assert_eq!(m2.routes[&h(2)].next, h(2));
        // Clearly cheaper: 40 ms direct against 16 ms through 3.
        let mut m3 = triangle(40_000);
        m3.routes = m.routes.clone();
        assert!(m3.compute(h(1), &[(h(2), 40_000), (h(3), 8000)], Time::ZERO + Duration::from_secs(1)));
        assert_eq!(m3.routes[&h(2)].next, h(3));
        assert_eq!(m3.routes[&h(2)].cost, 16_000);
        assert_eq!(m3.routes[&h(2)].since, Time::ZERO + Duration::from_secs(1));
        // The direct link gone (2 no longer lists 1): only through 3.
        let mut m4 = triangle(10_000);
        m4.accept(adv(2, 2, &[(3, 8000)]), Time::ZERO);
        m4.compute(h(1), &[(h(3), 8000)], Time::ZERO);
        assert_eq!(m4.routes[&h(2)].next, h(3));
    }

    #[test]
    fn a_next_hop_never_leads_back() {
        // A chain 1 - 2 - 3: from 2's view the route to 3 is direct, and
        // 1 is never a next hop toward 3 (its only way there is through 2).
        let mut m = mesh();
        m.accept(adv(1, 1, &[(2, 1000)]), Time::ZERO);
        m.accept(adv(2, 1, &[(1, 1000), (3, 1000)]), Time::ZERO);
        m.accept(adv(3, 1, &[(2, 1000)]), Time::ZERO);
        m.compute(h(2), &[(h(1), 1000), (h(3), 1000)], Time::ZERO);
        assert_eq!(m.routes[&h(3)].next, h(3));
        assert_eq!(m.routes[&h(1)].next, h(1));
        // 2 loses its link to 3: no route, rather than one through 1.
        m.compute(h(2), &[(h(1), 1000)], Time::ZERO);
        assert!(!m.routes.contains_key(&h(3)));
    }

    #[test]
    fn cost_changes_that_matter() {
        assert!(!changed_enough(&[(h(2), 10_000)], &[(h(2), 11_000)]));
        assert!(changed_enough(&[(h(2), 10_000)], &[(h(2), 20_000)]));
        assert!(!changed_enough(&[(h(2), 1_000)], &[(h(2), 2_000)]), "under 3 ms");
        assert!(changed_enough(&[(h(2), 10_000)], &[]));
    }
}
