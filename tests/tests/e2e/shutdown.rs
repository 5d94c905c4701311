//! Issue test 6: SIGTERM to a node (a data group leader, which clients are also sending
//! batches to) while a client ingests continuously. The node must exit with status 0
//! within the harness's bound, the group must elect another leader, writes must go on,
//! and nothing acknowledged may be lost: every node's linearizable counts, including the
//! stopped node's once restarted, equal the distinct acknowledged event ids per ad.

use std::time::Duration;

use adclick_tests::{now_ms, BackgroundIngest, ClickGen, Cluster, ClusterOptions, RetryPolicy};

use crate::support::{check_counts, check_settled, range_since, LIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_ingestion_exits_cleanly_and_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let t0 = now_ms();
    let gen = ClickGen::new(20, 6);
    let ads = gen.ads();
    let group = 1;
    let victim = cluster
        .leader_of(group)
        .await
        .expect("ClusterStatus answers")
        .expect("group 1 has a leader");
    // Batches rotate over every node, the victim included.
    let mut order = vec![victim];
    order.extend(cluster.ids().into_iter().filter(|&n| n != victim));
    let bg = BackgroundIngest::start(
        order.iter().map(|&n| cluster.ingest(n)).collect(),
        gen,
        50,
        RetryPolicy::default(),
        Duration::from_millis(5),
    );
    bg.wait_acked_more(20, Duration::from_secs(30))
        .await
        .expect("ingestion runs");

    let status = cluster
        .stop(victim)
        .await
        .expect("the node exits after SIGTERM within the bound");
    assert_eq!(status.code(), Some(0), "node {victim} exited with {status}");
    cluster
        .wait_leader(group, Some(victim), Duration::from_secs(15))
        .await
        .expect("the group elects another leader");
    bg.wait_acked_more(20, Duration::from_secs(30))
        .await
        .expect("writes go on without the stopped node");

    let mut ledger = bg.stop().await.expect("the ingest task ends cleanly");
    let mut survivors: Vec<_> = cluster
        .live_ids()
        .iter()
        .map(|&n| cluster.ingest(n))
        .collect();
    ledger
        .settle(&mut survivors, &RetryPolicy::default())
        .await
        .expect("batches that gave up are answered when resent");
    println!(
        "ledger: {} batches answered, {} gave up once, {} retries, {} distinct acked; \
         first errors: {:#?}; retried because: {:#?}",
        ledger.acked_batches,
        ledger.failed_batches,
        ledger.retries,
        ledger.acked(),
        ledger.errors,
        ledger.retry_reasons
    );
    let acked = check_settled(&cluster, &cluster.live_ids(), &ledger, &ads, t0).await;

    cluster.restart(victim).expect("restart the stopped node");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the node is ready again");
    check_counts(&cluster, victim, &acked, range_since(t0), "", LIN)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
