//! Where to send a request: the cached shard map, what the client has learned about
//! leaders since, and one lazily connected gRPC channel per node address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use adclick_proto::convert::LeaderHint;
use adclick_proto::model::shard_key;
use adclick_proto::wire;
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::Error;

/// A validated shard map and the leaders the client believes in.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    /// The map as last fetched and validated.
    pub(crate) map: wire::ShardMap,
    /// Leader per data group: from the map, then corrected by not-leader hints.
    leaders: HashMap<u64, String>,
    /// Every node address known: the seeds, then the map's members.
    nodes: Vec<String>,
}

impl Routes {
    /// Routes from a fetched map; refuses a map that does not tile the key space.
    pub(crate) fn new(map: wire::ShardMap, seeds: &[String]) -> Result<Routes, Error> {
        map.validate()
            .map_err(|e| Error::protocol(format!("the cluster sent an unusable shard map: {e}")))?;
        let mut nodes: Vec<String> = seeds.to_vec();
        let mut leaders = HashMap::new();
        for g in &map.groups {
            if let Some(l) = &g.leader {
                leaders.insert(g.group_id, l.addr.clone());
            }
            for m in &g.members {
                if !nodes.contains(&m.addr) {
                    nodes.push(m.addr.clone());
                }
            }
        }
        Ok(Routes {
            map,
            leaders,
            nodes,
        })
    }

    /// The data group owning `ad_id`.
    pub(crate) fn group_of(&self, ad_id: &[u8]) -> Result<u64, Error> {
        self.map
            .route_key(shard_key(ad_id))
            .map(|g| g.group_id)
            .ok_or_else(|| Error::protocol("the shard map does not cover an ad's key"))
    }

    /// Every known node address, seeds first.
    pub(crate) fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The leader believed to lead `group`, if any.
    pub(crate) fn leader(&self, group: u64) -> Option<&str> {
        self.leaders.get(&group).map(String::as_str)
    }
}

/// Shared routing state of a client.
#[derive(Debug)]
pub(crate) struct Router {
    seeds: Vec<String>,
    config: ClientConfig,
    routes: RwLock<Arc<Routes>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Round-robin position for requests any node can serve.
    next: AtomicUsize,
}

impl Router {
    pub(crate) fn new(seeds: Vec<String>, config: ClientConfig, routes: Routes) -> Router {
        Router {
            seeds,
            config,
            routes: RwLock::new(Arc::new(routes)),
            channels: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// The routes as they are now.
    pub(crate) fn routes(&self) -> Arc<Routes> {
        Arc::clone(&self.routes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the routes with a freshly fetched map.
    pub(crate) fn replace(&self, routes: Routes) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// Records what a node said about `group`'s leader: the hinted leader, or none known.
    pub(crate) fn learn_leader(&self, group: u64, hint: Option<&LeaderHint>) {
        let mut guard = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let current = guard.leaders.get(&group).map(String::as_str);
        if current == hint.map(|h| h.addr.as_str()) {
            return;
        }
        let routes = Arc::make_mut(&mut guard);
        match hint {
            Some(h) => {
                routes.leaders.insert(group, h.addr.clone());
                if !routes.nodes.contains(&h.addr) {
                    routes.nodes.push(h.addr.clone());
                }
            }
            None => {
                routes.leaders.remove(&group);
            }
        }
    }

    /// Forgets `addr` as the leader of `group` (it failed to answer), unless another
    /// leader was learned meanwhile.
    pub(crate) fn forget_leader(&self, group: u64, addr: &str) {
        let mut guard = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if guard.leaders.get(&group).map(String::as_str) == Some(addr) {
            Arc::make_mut(&mut guard).leaders.remove(&group);
        }
    }

    /// A node for a request any node can serve, rotating so that retries move on.
    pub(crate) fn any_node(&self) -> String {
        let routes = self.routes();
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        routes.nodes[i % routes.nodes.len()].clone()
    }

    /// Where to send a request for `group`: its leader if known, else any node.
    pub(crate) fn node_for(&self, group: u64) -> String {
        match self.routes().leader(group) {
            Some(addr) => addr.to_owned(),
            None => self.any_node(),
        }
    }

    /// The channel to `addr`, created (unconnected) on first use; HTTP/2 multiplexes every
    /// call to a node over it.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = endpoint(addr, &self.config)?.connect_lazy();
        channels.insert(addr.to_owned(), c.clone());
        Ok(c)
    }
}

/// The endpoint for a node's `host:port`.
pub(crate) fn endpoint(addr: &str, config: &ClientConfig) -> Result<Endpoint, Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Config(format!("{addr:?} is not a host:port address: {e}")))
        .map(|e| {
            e.connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
}

/// Parses a seed list: `host:port` entries separated by commas (an `http://` prefix is
/// accepted and dropped). At least one is required; duplicates are dropped.
pub fn parse_seeds<I, S>(seeds: I) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for s in seeds {
        for part in s.as_ref().split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let addr = part.strip_prefix("http://").unwrap_or(part);
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::Config(format!(
                    "seed {part:?} is not host:port (e.g. 127.0.0.1:7401)"
                )));
            }
            if !out.iter().any(|a| a == addr) {
                out.push(addr.to_owned());
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config(
            "no seed address given: name at least one node as host:port".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(groups: u64) -> wire::ShardMap {
        wire::ShardMap {
            version: 1,
            groups: (0..groups)
                .map(|i| wire::ShardRoute {
                    group_id: i + 1,
                    key_range: Some(wire::KeyRange::of_group(i + 1, groups)),
                    leader: Some(wire::NodeAddr {
                        node_id: i % 3 + 1,
                        addr: format!("n{}:1", i % 3 + 1),
                    }),
                    members: (1..=3)
                        .map(|n| wire::NodeAddr {
                            node_id: n,
                            addr: format!("n{n}:1"),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn seeds_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_seeds(["127.0.0.1:1, http://h:2", "h:2"]).expect("ok"),
            vec!["127.0.0.1:1".to_owned(), "h:2".to_owned()]
        );
        assert!(matches!(parse_seeds([""]), Err(Error::Config(m)) if m.contains("no seed")));
        assert!(matches!(parse_seeds(["h"]), Err(Error::Config(m)) if m.contains("\"h\"")));
        assert!(parse_seeds(["h:70000"]).is_err());
    }

    #[test]
    fn routes_know_every_member_and_follow_hints() {
        let r = Router::new(
            vec!["seed:1".into()],
            ClientConfig::default(),
            Routes::new(map(4), &["seed:1".into()]).expect("valid"),
        );
        assert_eq!(r.routes().nodes, ["seed:1", "n1:1", "n2:1", "n3:1"]);
        assert_eq!(r.node_for(2), "n2:1");
        r.learn_leader(
            2,
            Some(&LeaderHint {
                node_id: 9,
                addr: "n9:1".into(),
            }),
        );
        assert_eq!(r.node_for(2), "n9:1");
        assert!(r.routes().nodes.contains(&"n9:1".to_owned()));
        // A stale failure report does not undo a newer hint.
        r.forget_leader(2, "n2:1");
        assert_eq!(r.node_for(2), "n9:1");
        r.forget_leader(2, "n9:1");
        assert_eq!(r.routes().leader(2), None);
        // With no leader known, requests rotate over the nodes.
        let a = r.node_for(2);
        let b = r.node_for(2);
        assert_ne!(a, b);
    }

    #[test]
    fn a_map_with_a_gap_is_refused() {
        let mut m = map(2);
        m.groups[1].key_range = Some(wire::KeyRange { start: 5, end: 0 });
        assert!(matches!(Routes::new(m, &[]), Err(Error::Protocol(_))));
    }

    #[test]
    fn every_ad_routes_to_the_group_owning_its_key() {
        let routes = Routes::new(map(4), &[]).expect("valid");
        for ad in ["ad001", "ad002", "x", "ad-000123"] {
            let g = routes.group_of(ad.as_bytes()).expect("covered");
            let range = routes.map.groups[(g - 1) as usize]
                .key_range
                .expect("range");
            assert!(range.contains(shard_key(ad.as_bytes())));
        }
    }
}
