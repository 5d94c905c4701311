//! A leader frozen by SIGSTOP (a GC pause, a stalled VM) is deposed while it sleeps. A
//! linearizable count sent to it during the pause must not, once it wakes, answer from
//! its stale state: it must include every click acknowledged before the read was sent,
//! or fail. The fault suite once saw a count read 999 after 1,000 clicks had been
//! acknowledged, sent during a `pause` and answered right after the SIGCONT (seed 204,
//! docs/testing.md); this narrower scenario has not reproduced it, and pins the behaviour
//! it should have.

use std::time::Duration;

use adclick_proto::wire;
use adclick_tests::query::{between, count_request};
use adclick_tests::{now_ms, ClickGen, Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_serves_a_stale_linearizable_read() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let t0 = now_ms();
    let range = between(t0 - 60 * 60_000, t0 + 60 * 60_000);
    let mut gen = ClickGen::new(1, 7);
    let ad = gen.ads()[0].clone();
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
    let leader = cluster
        .wait_leader(group, None, Duration::from_secs(10))
        .await
        .expect("a leader");
    let other = cluster
        .ids()
        .into_iter()
        .find(|&n| n != leader)
        .expect("a peer");
    // Some clicks the paused leader has applied.
    let acked = |r: wire::IngestResponse| {
        r.results
            .iter()
            .filter(|e| e.outcome == wire::Outcome::Accepted as i32)
            .count() as u64
    };
    let mut total = 0;
    let first = cluster
        .ingest(other)
        .ingest(wire::IngestRequest {
            clicks: gen.batch_for(&[ad.as_str(); 5]),
        })
        .await
        .expect("ingest before the pause");
    total += acked(first.into_inner());

    cluster.pause(leader).expect("SIGSTOP the leader");
    // The others elect a new leader and count more clicks.
    let mut written = false;
    for _ in 0..100 {
        let r = cluster
            .ingest(other)
            .ingest(wire::IngestRequest {
                clicks: gen.batch_for(&[ad.as_str(); 3]),
            })
            .await;
        if let Ok(r) = r {
            total += acked(r.into_inner());
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        written,
        "the majority did not take a write while the leader slept"
    );

    // Ask the sleeping leader; wake it while the request waits in its socket.
    let mut q = cluster.query(leader);
    let read = tokio::spawn(async move {
        q.count(count_request(
            &ad,
            range,
            "",
            wire::Consistency::Linearizable,
        ))
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.resume(leader).expect("SIGCONT the leader");
    match read.await.expect("the read task") {
        Ok(r) => assert_eq!(
            r.into_inner().count,
            total,
            "a linearizable count from the woken leader missed acknowledged clicks"
        ),
        Err(s) => println!("the woken leader refused the read (fine): {s:?}"),
    }
}
