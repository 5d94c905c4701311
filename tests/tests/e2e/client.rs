//! The Rust client through a leader kill: `adclick_client::Client` ingests continuously
//! while the leader of a data group is killed with SIGKILL and later restarted. The client
//! must find the new leader and retry with the same event ids by itself (no batch may fail
//! within its 30 s deadline), and in the end every node's count of each ad must equal the
//! number of distinct event ids the client had acknowledged (ACCEPTED, or DUPLICATE for a
//! retry whose earlier attempt was applied).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adclick_client::model::{Click, Outcome};
use adclick_client::{Client, CountQuery, TimeSpec};
use adclick_tests::{eventually, now_ms, ClickGen, Cluster, ClusterOptions};

use crate::support::{check_counts, range_since, with_zeros, LIN};

/// What the ingest loop saw.
#[derive(Debug, Default)]
struct Seen {
    /// Distinct acknowledged event ids per ad.
    acked: BTreeMap<String, HashSet<Vec<u8>>>,
    batches: u64,
    /// Requests beyond one per group touched: retries and redirects.
    extra_attempts: u64,
    duplicates: u64,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rides_out_a_leader_kill_without_losing_or_doubling() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let t0 = now_ms();
    let seeds: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&n| cluster.grpc_addr(n).to_string())
        .collect();
    let client = Client::connect(&seeds).await.expect("the client connects");
    let mut gen = ClickGen::new(20, 7);
    let ads = gen.ads();

    let stop = Arc::new(AtomicBool::new(false));
    let acked_batches = Arc::new(AtomicU64::new(0));
    let extra_attempts = Arc::new(AtomicU64::new(0));
    let ingest = {
        let (client, stop, acked_batches, extra) = (
            client.clone(),
            stop.clone(),
            acked_batches.clone(),
            extra_attempts.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                let clicks: Vec<Click> = gen
                    .batch(40)
                    .into_iter()
                    .map(|w| Click::try_from(w).expect("generated clicks are valid"))
                    .collect();
                let groups: HashSet<u64> = clicks
                    .iter()
                    .map(|c| group_of(&client, c.ad_id.as_str()))
                    .collect();
                match client.ingest(&clicks).await {
                    Ok(report) => {
                        seen.batches += 1;
                        let more = u64::from(report.attempts).saturating_sub(groups.len() as u64);
                        seen.extra_attempts += more;
                        extra.fetch_add(more, Ordering::Relaxed);
                        for (c, r) in clicks.iter().zip(&report.results) {
                            match r.outcome {
                                Outcome::Accepted | Outcome::Duplicate => {
                                    seen.duplicates += u64::from(r.outcome == Outcome::Duplicate);
                                    seen.acked
                                        .entry(c.ad_id.as_str().to_owned())
                                        .or_default()
                                        .insert(c.event_id.as_bytes().to_vec());
                                }
                                other => seen.failures.push(format!("outcome {other:?}")),
                            }
                        }
                        acked_batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => seen.failures.push(e.to_string()),
                }
            }
            seen
        })
    };
    let wait_batches = |more: u64| {
        let acked_batches = acked_batches.clone();
        let from = acked_batches.load(Ordering::Relaxed);
        async move {
            eventually(
                &format!("{more} more acknowledged batches"),
                Duration::from_secs(30),
                Duration::from_millis(20),
                || {
                    let n = acked_batches.load(Ordering::Relaxed);
                    async move {
                        (n >= from + more)
                            .then_some(())
                            .ok_or_else(|| format!("{n} acknowledged so far"))
                    }
                },
            )
            .await
        }
    };
    wait_batches(20)
        .await
        .expect("ingestion runs before the kill");

    let victim = cluster
        .leader_of(1)
        .await
        .expect("ClusterStatus answers")
        .expect("group 1 has a leader");
    let extra_before_kill = extra_attempts.load(Ordering::Relaxed);
    cluster.kill(victim).expect("SIGKILL group 1's leader");
    cluster
        .wait_leader(1, Some(victim), Duration::from_secs(15))
        .await
        .expect("group 1 elects a new leader");
    wait_batches(20)
        .await
        .expect("the client keeps ingesting without the killed node");
    cluster.restart(victim).expect("restart the killed node");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the restarted node rejoins");
    wait_batches(10)
        .await
        .expect("the client keeps ingesting after the restart");
    stop.store(true, Ordering::Relaxed);
    let seen = ingest.await.expect("the ingest task ends");
    println!(
        "client: {} batches, {} extra attempts (retries and redirects), {} duplicates after \
         retries",
        seen.batches, seen.extra_attempts, seen.duplicates
    );
    assert!(
        seen.failures.is_empty(),
        "the client gave up or got unexpected outcomes: {:?}",
        seen.failures
    );
    assert!(
        seen.extra_attempts > extra_before_kill,
        "the client believed in the killed leader until it failed, so it must have retried \
         after the kill ({extra_before_kill} extra attempts before it, {} in all)",
        seen.extra_attempts
    );

    let acked: BTreeMap<String, u64> = seen
        .acked
        .iter()
        .map(|(ad, ids)| (ad.clone(), ids.len() as u64))
        .collect();
    let acked = with_zeros(&ads, &acked);
    let range = range_since(t0);
    for node in cluster.ids() {
        check_counts(&cluster, node, &acked, range, "", LIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // The client's own reads agree.
    for (ad, want) in &acked {
        let q = CountQuery::new(
            adclick_client::model::AdId::new(ad).expect("valid ad"),
            TimeSpec::between(range.0, range.1).expect("valid range"),
        );
        let got = client.count(q).await.expect("the client counts");
        assert_eq!(got.count, *want, "client count of {ad}");
    }
}

/// The data group `ad` belongs to, by the client's shard map.
fn group_of(client: &Client, ad: &str) -> u64 {
    let map = client.shard_map();
    map.route_key(adclick_client::model::shard_key(ad.as_bytes()))
        .expect("the map covers every key")
        .group_id
}
