//! Issue test 2: SIGKILL a data group's leader while a client ingests continuously
//! through the other nodes (retrying failed batches with the same event ids). A new leader
//! for the group must appear, writes must keep succeeding, the killed node must rejoin
//! when restarted, and in the end every node's linearizable count of each ad must equal
//! the number of distinct acknowledged (ACCEPTED or DUPLICATE) event ids of the ad. Once
//! the batches that gave up are resent, every attempted event id is acknowledged, so the
//! counts prove nothing attempted was lost.

use std::time::{Duration, Instant};

use adclick_tests::{now_ms, BackgroundIngest, ClickGen, Cluster, ClusterOptions, RetryPolicy};

use crate::support::check_settled;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_group_leader_loses_no_acknowledged_click() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let t0 = now_ms();
    let gen = ClickGen::new(20, 2);
    let ads = gen.ads();

    let mut group = 1;
    let victim = cluster
        .leader_of(group)
        .await
        .expect("ClusterStatus answers")
        .expect("group 1 has a leader once the cluster is ready");
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&n| n != victim).collect();
    let bg = BackgroundIngest::start(
        others.iter().map(|&n| cluster.ingest(n)).collect(),
        gen,
        50,
        RetryPolicy::default(),
        Duration::from_millis(5),
    );
    bg.wait_acked_more(20, Duration::from_secs(30))
        .await
        .expect("ingestion runs before the kill");

    // Leadership is stable in a healthy cluster; if it moved anyway, kill the victim as a
    // leader of some other data group.
    let status = cluster.status().await.expect("ClusterStatus answers");
    let led: Vec<u64> = status
        .groups
        .iter()
        .filter(|g| g.group_id != 0 && g.leader_id == Some(victim))
        .map(|g| g.group_id)
        .collect();
    if !led.contains(&group) {
        group = *led
            .first()
            .unwrap_or_else(|| panic!("node {victim} no longer leads a data group: {status:?}"));
    }

    cluster.kill(victim).expect("SIGKILL the leader");
    let killed_at = Instant::now();
    let new_leader = cluster
        .wait_leader(group, Some(victim), Duration::from_secs(15))
        .await
        .expect("the group elects a new leader");
    println!(
        "group {group}: leader {victim} killed; node {new_leader} leads {:?} later",
        killed_at.elapsed()
    );
    bg.wait_acked_more(20, Duration::from_secs(30))
        .await
        .expect("writes keep succeeding without the killed node");

    cluster.restart(victim).expect("restart the killed node");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the restarted node rejoins");
    bg.wait_acked_more(10, Duration::from_secs(30))
        .await
        .expect("writes succeed after the restart");

    let mut ledger = bg.stop().await.expect("the ingest task ends cleanly");
    let mut all: Vec<_> = cluster.ids().iter().map(|&n| cluster.ingest(n)).collect();
    ledger
        .settle(&mut all, &RetryPolicy::default())
        .await
        .expect("batches that gave up are answered when resent");
    println!(
        "ledger: {} batches answered ({} after giving up once), {} retries, {} accepted, \
         {} duplicate, {} distinct acked of {} attempted; first errors: {:#?}; retried because: {:#?}",
        ledger.acked_batches,
        ledger.failed_batches,
        ledger.retries,
        ledger.accepted,
        ledger.duplicate,
        ledger.acked(),
        ledger.attempted(),
        ledger.errors,
        ledger.retry_reasons
    );
    check_settled(&cluster, &cluster.ids(), &ledger, &ads, t0).await;
}
