//! A leader frozen by SIGSTOP (a GC pause, a stalled VM) is deposed while it sleeps. A
//! linearizable count sent to it during the pause must not, once it wakes, answer from
//! its stale state: it must include every click acknowledged before the read was sent,
//! or fail.
//!
//! The fault suite caught such reads (seeds 204 and 506, docs/testing.md). The cause was
//! openraft crediting a follower's answer to an append sent before the freeze, read after
//! the wake, to an entry-less append the woken leader had just queued behind it, so the
//! leader counted a quorum acknowledgement no follower gave after the read arrived (the
//! server's `raft::ack_guard`; `raft::sim` replays it step by step). Whether the woken
//! process reads its sockets in that order is up to its scheduler, so this test, on real
//! processes, recreates the conditions rather than the interleaving: the leader is frozen
//! with appends in flight (writers pinned to it keep the pipeline full), the others elect
//! a new leader and acknowledge more clicks, and a read waits in the frozen leader's
//! socket when it wakes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::wire;
use adclick_tests::query::{between, count_request};
use adclick_tests::{now_ms, ClickGen, Cluster, ClusterOptions};

/// Trials per run. Each freezes the group's current leader once.
const TRIALS: usize = 4;

/// Concurrent writers pinned to the leader, keeping appends in flight when it freezes.
const WRITERS: u64 = 4;

fn accepted(r: &wire::IngestResponse) -> u64 {
    r.results
        .iter()
        .filter(|e| e.outcome == wire::Outcome::Accepted as i32)
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_leader_never_serves_a_stale_linearizable_read() {
    let cluster = Arc::new(
        Cluster::start(ClusterOptions::default())
            .await
            .expect("cluster starts"),
    );
    let t0 = now_ms();
    let range = between(t0 - 60 * 60_000, t0 + 60 * 60_000);
    let ad = ClickGen::new(1, 7).ads()[0].clone();
    // The ad's group, as a read reports it.
    let group = cluster
        .query(1)
        .count(count_request(&ad, range, "", wire::Consistency::Stale))
        .await
        .expect("a stale count")
        .into_inner()
        .position
        .expect("a position")
        .group_id;
    // Every click of `ad` acknowledged so far, by any writer.
    let acked = Arc::new(AtomicU64::new(0));
    let mut answered = 0;
    for trial in 0..TRIALS {
        let leader = cluster
            .wait_leader(group, None, Duration::from_secs(10))
            .await
            .expect("a leader");
        let other = cluster
            .ids()
            .into_iter()
            .find(|&n| n != leader)
            .expect("a peer");

        // Load on the leader, so that appends are in flight when it freezes.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (cluster, stop, acked, ad) = (
                    Arc::clone(&cluster),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    ad.clone(),
                );
                let mut gen = ClickGen::new(1, 1000 * trial as u64 + w);
                tokio::spawn(async move {
                    let mut client = cluster.ingest(leader);
                    while !stop.load(Ordering::Relaxed) {
                        let clicks = gen.batch_for(&[ad.as_str(); 10]);
                        // A failed or timed-out write is indeterminate: not counted.
                        if let Ok(r) = client.ingest(wire::IngestRequest { clicks }).await {
                            acked.fetch_add(accepted(&r.into_inner()), Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.pause(leader).expect("SIGSTOP the leader");
        stop.store(true, Ordering::Relaxed);

        // The others elect a new leader and acknowledge more clicks.
        let mut gen = ClickGen::new(1, 1000 * trial as u64 + 999);
        let mut written = false;
        for _ in 0..100 {
            let r = cluster
                .ingest(other)
                .ingest(wire::IngestRequest {
                    clicks: gen.batch_for(&[ad.as_str(); 3]),
                })
                .await;
            if let Ok(r) = r {
                acked.fetch_add(accepted(&r.into_inner()), Ordering::SeqCst);
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            written,
            "trial {trial}: the majority took no write while node {leader} slept"
        );

        // Ask the sleeping leader; wake it while the request waits in its socket.
        let before = acked.load(Ordering::SeqCst);
        let mut q = cluster.query(leader);
        let read_ad = ad.clone();
        let read = tokio::spawn(async move {
            q.count(count_request(
                &read_ad,
                range,
                "",
                wire::Consistency::Linearizable,
            ))
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.resume(leader).expect("SIGCONT the leader");
        match read.await.expect("the read task") {
            Ok(r) => {
                let r = r.into_inner();
                let applied = r.position.map(|p| p.applied_index);
                assert!(
                    r.count >= before,
                    "trial {trial}: node {leader}, woken, answered a linearizable count of \
                     {} at applied index {applied:?}; {before} clicks were acknowledged \
                     before the read was sent",
                    r.count
                );
                answered += 1;
            }
            Err(s) => println!("trial {trial}: the woken leader refused the read (fine): {s:?}"),
        }
        for w in writers {
            tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("a writer ends once its last call returns")
                .expect("a writer task");
        }
    }
    println!("{answered} of {TRIALS} reads were answered, none stale");
}
