//! Issue test 3: a node stopped with SIGTERM misses writes, is restarted, catches up, and
//! then serves stale reads equal to the leader's (linearizable) answers.
//!
//! - [`a_stopped_node_catches_up_from_the_log`]: the leader still has every entry the node
//!   missed, so it catches up by log replication.
//! - [`a_stopped_node_catches_up_from_a_snapshot_and_refetches_the_raw_log`]: the cluster
//!   snapshots every 20 entries and keeps no log behind a snapshot, so the leader must send
//!   a snapshot. Afterwards, with all nodes stopped, each data group's raw log on the
//!   restarted node must have no gap (the server fetches the raw segments it lacks from a
//!   peer), and its state digest must equal that of the peers at the same applied index.
//!   The nodes are stopped together once converged, so that they stop at the same
//!   applied index.
//!
//! In both, once caught up, the node answers stale reads equal to the ledger with every
//! peer frozen (SIGSTOP), so the answers come from its own replicas.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use adclick_tests::clicks::retry_rpc;
use adclick_tests::disk;
use adclick_tests::query::{last_minutes, top_request};
use adclick_tests::{eventually, now_ms, ClickGen, Cluster, ClusterOptions, Ledger, RetryPolicy};

use crate::support::{
    check_counts, check_top, range_since, with_zeros, CATCH_UP, LIN, RETRY_BOUND, STALE,
};

/// Ingests `batches` batches of `size` clicks through node 1 (retrying through node 2).
async fn ingest(
    cluster: &Cluster,
    gen: &mut ClickGen,
    ledger: &mut Ledger,
    batches: usize,
    size: usize,
) {
    let mut clients = vec![cluster.ingest(1), cluster.ingest(2)];
    for _ in 0..batches {
        let answered = ledger
            .ingest(&mut clients, 0, gen.batch(size), &RetryPolicy::default())
            .await
            .expect("the cluster takes valid batches");
        assert!(answered, "a batch gave up: {:?}", ledger.errors);
    }
}

/// Waits until node `node`'s stale reads, served by its own replicas, equal the
/// linearizable answers through node 1 and the ledger's numbers. Then freezes every other
/// node and checks that node `node` still gives the ledger's numbers on its own.
async fn wait_caught_up(cluster: &Cluster, node: u64, expected: &BTreeMap<String, u64>, t0: i64) {
    let range = range_since(t0);
    check_counts(cluster, 1, expected, range, "", LIN)
        .await
        .unwrap_or_else(|e| panic!("the leader's answers: {e}"));
    check_top(cluster, 1, expected, 20, range, "", LIN)
        .await
        .unwrap_or_else(|e| panic!("the leader's answers: {e}"));
    eventually(
        &format!("node {node} to catch up"),
        CATCH_UP,
        Duration::from_millis(200),
        || async move {
            check_counts(cluster, node, expected, range, "", STALE).await?;
            check_top(cluster, node, expected, 20, range, "", STALE).await?;
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // The numbers are in the node's own replicas: with every peer frozen (SIGSTOP), no
    // peer can serve or forward anything, and its stale reads still equal the ledger.
    let peers: Vec<u64> = cluster.ids().into_iter().filter(|&n| n != node).collect();
    for &p in &peers {
        cluster.pause(p).expect("SIGSTOP a peer");
    }
    let alone = async {
        check_counts(cluster, node, expected, range, "", STALE).await?;
        check_top(cluster, node, expected, 20, range, "", STALE).await?;
        let q = cluster.query(node);
        let (top, _) = retry_rpc(RETRY_BOUND, || {
            let mut q = q.clone();
            async move { q.top(top_request(1, last_minutes(60), "", STALE)).await }
        })
        .await
        .map_err(|s| format!("stale Top through node {node}: {s}"))?;
        let groups = cluster.data_groups().len();
        let positions = top.into_inner().positions;
        if positions.len() != groups {
            return Err(format!(
                "a stale Top must report one position per data group ({groups}): {positions:?}"
            ));
        }
        Ok::<(), String>(())
    }
    .await;
    for &p in &peers {
        cluster.resume(p).expect("SIGCONT a peer");
    }
    if let Err(e) = alone {
        panic!("with nodes {peers:?} frozen, node {node}'s stale reads: {e}");
    }
}

/// One look at the cluster: every group's leader, and every node's applied index per
/// group (from its stale reads).
type Poll = (
    BTreeMap<u64, Option<u64>>,
    BTreeMap<u64, BTreeMap<u64, u64>>,
);

async fn poll_positions(cluster: &Cluster, ids: &[u64]) -> Result<Poll, String> {
    let status = cluster.status().await.map_err(|e| format!("{e:#}"))?;
    let leaders: BTreeMap<u64, Option<u64>> = status
        .groups
        .iter()
        .map(|g| (g.group_id, g.leader_id))
        .collect();
    let mut applied: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for &node in ids {
        let top = cluster
            .query(node)
            .top(top_request(1, last_minutes(60), "", STALE))
            .await
            .map_err(|s| format!("node {node}: {s}"))?
            .into_inner();
        for p in top.positions {
            applied
                .entry(p.group_id)
                .or_default()
                .insert(p.node_id, p.applied_index);
        }
    }
    Ok((leaders, applied))
}

/// Waits until every running node has applied the same index in every data group, as its
/// stale reads report, every group has a leader, and neither the leaders nor the indexes
/// changed between two polls in a row (so the nodes can be frozen in a converged, quiet
/// state).
async fn wait_converged(cluster: &Cluster) {
    let ids = cluster.live_ids();
    let groups = cluster.data_groups();
    let deadline = Instant::now() + CATCH_UP;
    let mut previous: Option<Poll> = None;
    loop {
        let last = match poll_positions(cluster, &ids).await {
            Err(e) => {
                previous = None;
                e
            }
            Ok(poll) => {
                let (leaders, applied) = &poll;
                let leaderless: Vec<u64> = leaders
                    .iter()
                    .filter(|(_, l)| l.is_none())
                    .map(|(g, _)| *g)
                    .collect();
                let behind: Vec<String> = groups
                    .iter()
                    .filter_map(|g| {
                        let per_node = applied.get(g)?;
                        let mut v = per_node.values();
                        let first = v.next();
                        (per_node.len() != ids.len() || v.any(|x| Some(x) != first))
                            .then(|| format!("group {g}: {per_node:?}"))
                    })
                    .chain(
                        groups
                            .iter()
                            .filter(|g| !applied.contains_key(g))
                            .map(|g| format!("group {g}: no position")),
                    )
                    .collect();
                if !leaderless.is_empty() || !behind.is_empty() {
                    previous = None;
                    format!("groups without a leader {leaderless:?}; differing: {behind:?}")
                } else if previous.as_ref() == Some(&poll) {
                    println!("converged: leaders {leaders:?}, applied {applied:?}");
                    return;
                } else {
                    previous = Some(poll);
                    "converged once; polling again to see it stay so".to_owned()
                }
            }
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {CATCH_UP:?} waiting for every node at the same applied index \
             in every group, with stable leaders; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Stops every node once converged, all at once (see [`Cluster::stop_all`]): SIGTERMed
/// one by one, a stopping node would hand its leaderships to a peer still running, whose
/// new-term entry only some nodes would apply before stopping, leaving no two nodes at the
/// same applied index to compare. Stopping together narrows that race without closing it,
/// so if a group still ends with node 3 at an applied id no peer has, the nodes are
/// restarted and stopped again (at most 3 rounds; the raw logs and states checked after
/// are whatever the last round left).
async fn stop_converged(cluster: &mut Cluster, groups: &[u64]) {
    for round in 1..=3 {
        wait_converged(cluster).await;
        for (id, status) in cluster.stop_all().await.expect("every node stops") {
            assert!(status.success(), "node {id} exited with {status}");
        }
        let applied = |n: u64| {
            disk::state_digests(cluster.data_dir(n), groups)
                .unwrap_or_else(|e| panic!("node {n}'s state: {e:#}"))
        };
        let (d1, d2, d3) = (applied(1), applied(2), applied(3));
        let unmatched: Vec<u64> = groups
            .iter()
            .copied()
            .filter(|g| d3[g].applied != d1[g].applied && d3[g].applied != d2[g].applied)
            .collect();
        if unmatched.is_empty() || round == 3 {
            return;
        }
        println!(
            "note: round {round}: a leadership moved while the nodes stopped; groups \
             {unmatched:?} have no peer at node 3's applied id; restarting and stopping again"
        );
        for id in cluster.ids() {
            cluster.restart(id).expect("the node restarts");
        }
        cluster
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("the nodes are ready again");
    }
}

/// The server fills a snapshot's raw-log gap in the background (a fetch round every few
/// seconds), so before stopping the nodes, wait (bounded) until node `node`'s log reports a
/// fetch for every group. The log line is only a hint that the fetch ran: whether the raw
/// log is complete is decided on disk afterwards, whatever the log says.
async fn wait_for_raw_fetch(cluster: &Cluster, node: u64, groups: &[u64]) {
    let hint = eventually(
        &format!("node {node} to log a raw segment fetch for every data group"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async move {
            let lines = cluster.log_grep(node, "fetched from a peer");
            let missing: Vec<u64> = groups
                .iter()
                .copied()
                .filter(|g| !lines.iter().any(|l| l.contains(&format!("group={g} "))))
                .collect();
            if missing.is_empty() {
                Ok(lines)
            } else {
                Err(format!("no fetch logged yet for groups {missing:?}"))
            }
        },
    )
    .await;
    match hint {
        Ok(lines) => println!(
            "node {node} fetched raw segments:\n  {}",
            lines.join("\n  ")
        ),
        Err(e) => println!("note: {e:#}; checking the raw logs on disk anyway"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_catches_up_from_the_log() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let t0 = now_ms();
    let mut gen = ClickGen::new(20, 31);
    let ads = gen.ads();
    let mut ledger = Ledger::default();
    ingest(&cluster, &mut gen, &mut ledger, 2, 100).await;

    let status = cluster.stop(3).await.expect("node 3 stops");
    assert!(status.success(), "node 3 exited with {status}");
    ingest(&cluster, &mut gen, &mut ledger, 3, 100).await;

    cluster.restart(3).expect("node 3 restarts");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("node 3 is ready again");
    let expected = with_zeros(&ads, &ledger.acked_per_ad());
    assert_eq!(ledger.acked(), 500);
    wait_caught_up(&cluster, 3, &expected, t0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_catches_up_from_a_snapshot_and_refetches_the_raw_log() {
    let opts = ClusterOptions {
        snapshot_logs: Some(20),
        snapshot_keep_logs: Some(0),
        // Small segments, so the raw log the node lacks spans several of them.
        log_segment_bytes: Some(16 * 1024),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(opts).await.expect("cluster starts");
    let groups = cluster.data_groups();
    let t0 = now_ms();
    let mut gen = ClickGen::new(20, 32);
    let ads = gen.ads();
    let mut ledger = Ledger::default();
    ingest(&cluster, &mut gen, &mut ledger, 10, 10).await;

    let status = cluster.stop(3).await.expect("node 3 stops");
    assert!(status.success(), "node 3 exited with {status}");
    let n3 = cluster.data_dir(3).to_path_buf();
    let before: BTreeMap<u64, disk::RawLog> = groups
        .iter()
        .map(|&g| (g, disk::raw_log(&n3, g).expect("node 3's log reads")))
        .collect();
    println!("node 3's logs when stopped: {before:#?}");

    ingest(&cluster, &mut gen, &mut ledger, 200, 10).await;
    cluster.restart(3).expect("node 3 restarts");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("node 3 is ready again");
    let expected = with_zeros(&ads, &ledger.acked_per_ad());
    assert_eq!(ledger.acked(), 2100);
    wait_caught_up(&cluster, 3, &expected, t0).await;
    wait_for_raw_fetch(&cluster, 3, &groups).await;
    stop_converged(&mut cluster, &groups).await;

    let logs: BTreeMap<u64, BTreeMap<u64, disk::RawLog>> = cluster
        .ids()
        .into_iter()
        .map(|n| {
            let dir = cluster.data_dir(n).to_path_buf();
            let per_group = groups
                .iter()
                .map(|&g| {
                    (
                        g,
                        disk::raw_log(&dir, g)
                            .unwrap_or_else(|e| panic!("node {n} group {g}: {e:#}")),
                    )
                })
                .collect();
            (n, per_group)
        })
        .collect();
    let digests: BTreeMap<u64, _> = cluster
        .ids()
        .into_iter()
        .map(|n| {
            let d = disk::state_digests(cluster.data_dir(n), &groups)
                .unwrap_or_else(|e| panic!("node {n}'s state: {e:#}"));
            (n, d)
        })
        .collect();
    println!("raw logs after catch-up: {logs:#?}\nstate digests: {digests:#?}");

    let mut problems = Vec::new();
    for &g in &groups {
        let mine = &logs[&3][&g];
        // The scenario needs a snapshot: the peers purged past what node 3 had.
        let peers_purged = [1, 2].iter().filter_map(|n| logs[n][&g].last_purged).max();
        assert!(
            peers_purged > before[&g].last,
            "group {g}: the peers' logs were not purged past node 3's last entry {:?} \
             (purged {peers_purged:?}), so no snapshot was needed",
            before[&g].last
        );
        for (n, per_group) in &logs {
            if !per_group[&g].gaps.is_empty() {
                problems.push(format!(
                    "group {g}: node {n}'s raw log has gaps {:?}",
                    per_group[&g].gaps
                ));
            }
        }
        if mine.first != logs[&1][&g].first {
            problems.push(format!(
                "group {g}: node 3's raw log starts at {:?}, node 1's at {:?}",
                mine.first, logs[&1][&g].first
            ));
        }
        let applied = digests[&3][&g].applied.map(|l| l.index);
        if mine.last < applied {
            problems.push(format!(
                "group {g}: node 3's raw log ends at {:?}, before its applied index {applied:?}",
                mine.last
            ));
        }
        let same_index: Vec<u64> = [1, 2]
            .into_iter()
            .filter(|n| digests[n][&g].applied == digests[&3][&g].applied)
            .collect();
        if same_index.is_empty() {
            problems.push(format!(
                "group {g}: no peer stopped at node 3's applied id {:?} (peers: {:?}, {:?})",
                digests[&3][&g].applied, digests[&1][&g].applied, digests[&2][&g].applied
            ));
        }
        for n in same_index {
            if digests[&n][&g] != digests[&3][&g] {
                problems.push(format!(
                    "group {g}: node {n} and node 3 differ at the same applied id: {:?} vs {:?}",
                    digests[&n][&g], digests[&3][&g]
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "after the snapshot install and catch-up:\n  {}",
        problems.join("\n  ")
    );
}
