//! Duplication policy: which of a neighbour's usable paths a packet is copied onto.
//!
//! Only `all` exists today: every usable path gets a copy, so per packet the
//! latency is the minimum over the paths and the loss the product of their
//! losses. The mesh issue adds `best:N` and `failover`; they plug in here.

use std::fmt;
use std::str::FromStr;

/// How many and which paths a packet is copied onto.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// A copy on every usable path.
    #[default]
    All,
}

impl Policy {
    /// Call `take` for each chosen path among `usable` (in path order).
    pub fn select<P: Copy>(self, usable: impl Iterator<Item = P>, mut take: impl FnMut(P)) {
        match self {
            Policy::All => usable.for_each(&mut take),
        }
    }
}

/// A policy name that is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: the known policies are \"all\"")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        match s {
            "all" => Ok(Policy::All),
            other => Err(UnknownPolicy(other.to_string())),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::All => f.write_str("all"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_takes_every_usable_path() {
        let mut got = vec![];
        Policy::All.select([1, 2, 3].into_iter(), |p| got.push(p));
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!("all".parse::<Policy>(), Ok(Policy::All));
        assert!("best:2".parse::<Policy>().unwrap_err().to_string().contains("known policies"));
    }
}
