//! Raft for adclick's groups: openraft configured for them, the gRPC transport's client
//! side ([`network`]) and server side ([`service`]), and the conversions between
//! openraft's messages and the wire ([`convert`]).

pub mod ack_guard;
pub mod convert;
pub mod network;
pub mod service;
#[cfg(test)]
pub mod sim;

use std::sync::Arc;

use adclick_storage::sm::StateMachine;
use adclick_storage::types::TypeConfig;
use openraft::SnapshotPolicy;

use crate::config::Config as NodeConfig;

/// One group's Raft handle.
pub type GroupRaft = openraft::Raft<TypeConfig, StateMachine>;

/// A snapshot as openraft hands it around.
pub type Snapshot = adclick_storage::sm::Snapshot;

/// openraft's configuration for every group of the node, from the node's settings.
pub fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let c = openraft::Config {
        cluster_name: "adclick".into(),
        heartbeat_interval: config.raft_heartbeat_ms,
        election_timeout_min: config.raft_election_timeout_ms,
        election_timeout_max: config.raft_election_timeout_ms * 2,
        // Applies per snapshot transfer attempt; our transport streams the file in chunks
        // and only openraft's cancel stops it.
        install_snapshot_timeout: 60_000,
        snapshot_max_chunk_size: 1 << 20,
        max_payload_entries: 256,
        purge_batch_size: 256.min(config.snapshot_logs),
        max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election, in a new term, before it leads
        // again (standard Raft). openraft's default lets it resume in its old term, which
        // is unsafe after a power loss: a leader replicates entries before its own fsync
        // of them, so it can come back without a suffix its followers hold and then
        // write different entries under the same (term, index); Raft's log matching then
        // keeps both, replicas diverge and acknowledged clicks are lost. Found by the
        // fault suite (`majority-down-late-thaw`, docs/testing.md).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    c.validate().map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_leader_must_win_a_new_election() {
        let dir = std::env::temp_dir();
        let flags = crate::config::Flags {
            node_id: Some(1),
            data_dir: Some(dir),
            listen: Some("127.0.0.1:7401".parse().expect("addr")),
            http: Some("127.0.0.1:7501".parse().expect("addr")),
            peers: Some("1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403".into()),
            ..Default::default()
        };
        let node = NodeConfig::resolve(flags).expect("a valid configuration");
        let raft = raft_config(&node).expect("a valid raft configuration");
        assert_eq!(
            raft.enable_leader_restore,
            Some(false),
            "a leader restored in its old term can rewrite (term, index) pairs after a \
             power loss"
        );
    }
}
