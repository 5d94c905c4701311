//! Routing data: [`wire::KeyRange`] arithmetic, [`wire::ShardMap`] lookup and checks, and
//! [`LeaderHint`], the `node_id@address` text of the `x-adclick-leader` metadata.
//!
//! A key range is `[start, end)` over `xxh3_64(ad_id)` with `end == 0` standing for
//! 2^64, which a u64 cannot hold. A usable shard map has ranges sorted by start that
//! tile the key space exactly: no gap (a click with nowhere to go) and no overlap (a click
//! counted in two groups). Clients call [`wire::ShardMap::validate`] before trusting a
//! map they fetched.

use std::fmt;
use std::str::FromStr;

use crate::model::{AdId, InvalidInput};
use crate::wire;

/// The leader a node points a client to: its node id and gRPC address. Written
/// `"{node_id}@{addr}"` in the `x-adclick-leader` metadata, e.g. `3@10.0.0.3:7400`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaderHint {
    /// The leader's node id.
    pub node_id: u64,
    /// Its gRPC address (`host:port`).
    pub addr: String,
}

impl fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.addr)
    }
}

impl FromStr for LeaderHint {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        let malformed = || InvalidInput::Malformed {
            field: wire::metadata::LEADER,
            reason: format!("{} is not node_id@address", super::timestamp::quoted(s)),
        };
        // The id never contains '@'; an IPv6 address may, in theory, so split at the first.
        let (id, addr) = s.split_once('@').ok_or_else(malformed)?;
        let node_id = id.parse::<u64>().map_err(|_| malformed())?;
        if addr.is_empty() {
            return Err(malformed());
        }
        Ok(LeaderHint {
            node_id,
            addr: addr.to_owned(),
        })
    }
}

impl From<wire::NodeAddr> for LeaderHint {
    fn from(n: wire::NodeAddr) -> Self {
        LeaderHint {
            node_id: n.node_id,
            addr: n.addr,
        }
    }
}

impl From<LeaderHint> for wire::NodeAddr {
    fn from(h: LeaderHint) -> Self {
        wire::NodeAddr {
            node_id: h.node_id,
            addr: h.addr,
        }
    }
}

impl wire::KeyRange {
    /// The whole key space, `[0, 2^64)`: the range of a single-group cluster.
    pub const FULL: wire::KeyRange = wire::KeyRange { start: 0, end: 0 };

    /// The exclusive end as a `u128`, with `end == 0` read as 2^64.
    pub fn end_exclusive(&self) -> u128 {
        if self.end == 0 {
            1 << 64
        } else {
            u128::from(self.end)
        }
    }

    /// The range of data group `g` (1-based) when the key space is cut into `groups` equal
    /// ranges, the shard map of this release: `[ceil((g-1) * 2^64 / groups), ceil(g * 2^64
    /// / groups))`, the last one ending at 2^64. Rounding up makes a key's group exactly
    /// `floor(key * groups / 2^64) + 1`. `g` must be in `1..=groups`.
    pub fn of_group(g: u64, groups: u64) -> wire::KeyRange {
        let bound = |i: u64| -> u64 {
            // Exact in u128; at most 2^64 - 1 for i < groups.
            ((u128::from(i) << 64).div_ceil(u128::from(groups))) as u64
        };
        wire::KeyRange {
            start: bound(g - 1),
            end: if g == groups { 0 } else { bound(g) },
        }
    }

    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: u64) -> bool {
        key >= self.start && u128::from(key) < self.end_exclusive()
    }

    /// Whether the range holds no key (`end <= start`, `end` not 0). Never valid in a map.
    pub fn is_empty(&self) -> bool {
        self.end_exclusive() <= u128::from(self.start)
    }
}

impl wire::ShardMap {
    /// The group owning shard key `key`, if the map covers it.
    pub fn route_key(&self, key: u64) -> Option<&wire::ShardRoute> {
        // A valid map is sorted by start: binary search. Fall back to a scan so an
        // unsorted map still routes correctly (just slower).
        let i = self
            .groups
            .partition_point(|g| g.key_range.is_some_and(|r| r.start <= key));
        let candidate = i.checked_sub(1).and_then(|i| self.groups.get(i));
        match candidate {
            Some(g) if g.key_range.is_some_and(|r| r.contains(key)) => Some(g),
            _ => self
                .groups
                .iter()
                .find(|g| g.key_range.is_some_and(|r| r.contains(key))),
        }
    }

    /// The group owning `ad_id` (by its shard key, `xxh3_64(ad_id)`).
    pub fn route(&self, ad_id: &AdId) -> Option<&wire::ShardRoute> {
        self.route_key(ad_id.shard_key())
    }

    /// Checks that the groups' ranges are present, sorted by start and tile `[0, 2^64)`
    /// exactly.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        const FIELD: &str = "shard_map.groups";
        let bad = |reason: String| InvalidInput::Malformed {
            field: FIELD,
            reason,
        };
        if self.groups.is_empty() {
            return Err(InvalidInput::Missing { field: FIELD });
        }
        let mut next: u128 = 0;
        for g in &self.groups {
            let r = g
                .key_range
                .ok_or_else(|| bad(format!("group {} has no key range", g.group_id)))?;
            if r.is_empty() {
                return Err(bad(format!(
                    "group {} has an empty key range [{}, {})",
                    g.group_id, r.start, r.end
                )));
            }
            if u128::from(r.start) != next {
                return Err(bad(format!(
                    "group {} starts at {} where {next} was expected (gap, overlap or unsorted)",
                    g.group_id, r.start
                )));
            }
            next = r.end_exclusive();
        }
        if next != 1 << 64 {
            return Err(bad(format!("the ranges end at {next}, short of 2^64")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(group_id: u64, start: u64, end: u64) -> wire::ShardRoute {
        wire::ShardRoute {
            group_id,
            key_range: Some(wire::KeyRange { start, end }),
            leader: None,
            members: Vec::new(),
        }
    }

    fn three_groups() -> wire::ShardMap {
        wire::ShardMap {
            version: 7,
            groups: vec![
                route(1, 0, 1 << 62),
                route(2, 1 << 62, 1 << 63),
                route(3, 1 << 63, 0),
            ],
        }
    }

    #[test]
    fn leader_hints_roundtrip_as_text() {
        let hint = LeaderHint {
            node_id: 3,
            addr: "10.0.0.3:7400".into(),
        };
        assert_eq!(hint.to_string(), "3@10.0.0.3:7400");
        assert_eq!("3@10.0.0.3:7400".parse(), Ok(hint.clone()));
        assert_eq!(LeaderHint::from(wire::NodeAddr::from(hint.clone())), hint);
        assert_eq!(
            "[::1]:7400"
                .parse::<LeaderHint>()
                .map_err(|e| e.to_string()),
            Err("x-adclick-leader: \"[::1]:7400\" is not node_id@address".to_owned())
        );
        assert!("x@host:1".parse::<LeaderHint>().is_err());
        assert!("3@".parse::<LeaderHint>().is_err());
    }

    #[test]
    fn key_range_end_zero_means_the_end_of_the_key_space() {
        let tail = wire::KeyRange {
            start: 1 << 63,
            end: 0,
        };
        assert!(tail.contains(u64::MAX) && tail.contains(1 << 63));
        assert!(!tail.contains((1 << 63) - 1));
        assert!(wire::KeyRange::FULL.contains(0) && wire::KeyRange::FULL.contains(u64::MAX));
        assert!(!wire::KeyRange::FULL.is_empty());
        assert!(wire::KeyRange { start: 5, end: 5 }.is_empty());
    }

    #[test]
    fn routing_finds_the_owning_group() {
        let map = three_groups();
        assert_eq!(map.validate(), Ok(()));
        assert_eq!(map.route_key(0).map(|g| g.group_id), Some(1));
        assert_eq!(map.route_key((1 << 62) - 1).map(|g| g.group_id), Some(1));
        assert_eq!(map.route_key(1 << 62).map(|g| g.group_id), Some(2));
        assert_eq!(map.route_key(u64::MAX).map(|g| g.group_id), Some(3));
        let ad = AdId::new("ad001").expect("valid");
        let owner = map.route(&ad).expect("covered");
        assert!(owner.key_range.is_some_and(|r| r.contains(ad.shard_key())));
    }

    #[test]
    fn unsorted_maps_still_route_but_do_not_validate() {
        let mut map = three_groups();
        map.groups.reverse();
        assert_eq!(map.route_key(0).map(|g| g.group_id), Some(1));
        assert_eq!(map.route_key(u64::MAX).map(|g| g.group_id), Some(3));
        assert!(map.validate().is_err());
    }

    #[test]
    fn gaps_overlaps_and_short_maps_are_refused() {
        let mut gap = three_groups();
        gap.groups[1].key_range = Some(wire::KeyRange {
            start: (1 << 62) + 1,
            end: 1 << 63,
        });
        assert_eq!(
            gap.validate().expect_err("gap").to_string(),
            format!(
                "shard_map.groups: group 2 starts at {} where {} was expected \
                 (gap, overlap or unsorted)",
                (1u64 << 62) + 1,
                1u64 << 62
            )
        );
        assert_eq!(gap.route_key(1 << 62).map(|g| g.group_id), None);

        let mut short = three_groups();
        short.groups.pop();
        assert!(short.validate().is_err());

        let mut rangeless = three_groups();
        rangeless.groups[0].key_range = None;
        assert!(rangeless.validate().is_err());

        assert_eq!(
            wire::ShardMap::default().validate(),
            Err(InvalidInput::Missing {
                field: "shard_map.groups"
            })
        );
    }
}
