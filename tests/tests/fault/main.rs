//! The fault suite's default subset: every nemesis at least once, on three
//! fault-injection `adclickd` builds (`target/fault/adclickd`) behind the fault proxy, and
//! the checker's self-tests on deliberately broken builds. A few minutes in all;
//! the long mode is `cargo run -p adclick-tests --bin fault-suite` (docs/testing.md).
//!
//! Every run prints its seed and schedule; a failing run also writes its history to a
//! file and names it. `ADCLICK_FAULT_SEED=N` replays a seed.

use std::time::Duration;

use adclick_tests::fault::nemesis::{Nemesis, Schedule};
use adclick_tests::fault::run::{run, RunConfig, RunReport};

/// The seed of this process's runs: `$ADCLICK_FAULT_SEED`, or drawn at random (and
/// printed, so a failure can be replayed).
fn seed() -> u64 {
    std::env::var("ADCLICK_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

const HOLD: Duration = Duration::from_secs(3);

async fn run_schedule(nemeses: &[Nemesis], node_args: &[&str]) -> RunReport {
    let seed = seed();
    let mut cfg = RunConfig::new(seed, Schedule::of(nemeses, HOLD, seed));
    cfg.node_args = node_args.iter().map(|s| (*s).to_owned()).collect();
    println!("seed {seed}, schedule [{}]", cfg.schedule.describe());
    let report = run(cfg)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the run could not complete: {e:#}"));
    println!("{}", report.describe());
    report
}

async fn passes(nemeses: &[Nemesis]) -> RunReport {
    let report = run_schedule(nemeses, &[]).await;
    assert!(
        report.verdict.ok(),
        "the checker found anomalies (replay with ADCLICK_FAULT_SEED={}):\n{}",
        report.seed,
        report.describe()
    );
    assert_eq!(report.probes.len(), nemeses.len(), "one probe per fault");
    assert!(
        report.proxied_bytes > 0,
        "the nodes' traffic bypassed the proxy"
    );
    // A fault that cuts nodes off must have met requests there (which the checker saw
    // refused), or the run proved nothing about it.
    for f in &report.faults {
        let cuts = matches!(
            f.nemesis.as_str(),
            "isolate-leader" | "split" | "one-way" | "majority-down"
        );
        // (majority-down-late-thaw leaves no node up to ask.)
        assert!(
            !cuts || f.cut_off_ops > 0,
            "no request reached the cut-off side during {}: {report:?}",
            f.nemesis
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_click_is_lost_or_doubled_through_crashes() {
    let report = passes(&[Nemesis::Kill, Nemesis::MajorityDown]).await;
    // Two of three down cannot be survived: nothing was acknowledged meanwhile (the
    // checker's line 7), and every click acknowledged before came back (line 1).
    assert!(report.verdict.events.acked > 0);
}

/// A node woken from SIGSTOP once answered linearizable counts queued while it slept
/// from stale state (docs/testing.md, "Found and fixed"; `raft::ack_guard` in the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_click_is_lost_or_doubled_through_pauses() {
    passes(&[Nemesis::Pause, Nemesis::MajorityDownLateThaw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_click_is_lost_or_doubled_through_partitions() {
    passes(&[
        Nemesis::IsolateLeader,
        Nemesis::Split,
        Nemesis::OneWay,
        Nemesis::Bridge,
        Nemesis::SlowNetwork,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_click_is_lost_or_doubled_through_restarts_and_clock_skew() {
    let report = passes(&[Nemesis::RollingRestart, Nemesis::ClockSkew]).await;
    // The skewed leader refused live clicks as future events; the checker held the
    // cluster to not counting them.
    assert!(
        report.verdict.events.refused > 0,
        "no click was refused while a leader's clock was behind:\n{}",
        report.describe()
    );
}

/// The checker must see what a broken build does; a self-test passes when the run fails
/// in the expected check.
async fn checker_catches(flag: &str, nemeses: &[Nemesis], checks: &[&str]) {
    let report = run_schedule(nemeses, &[flag]).await;
    let found: usize = checks.iter().map(|c| report.verdict.anomalies(c)).sum();
    assert!(
        found > 0,
        "with {flag} the checker should report anomalies in checks {checks:?}, but:\n{}",
        report.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_build_without_dedup() {
    checker_catches("--fault-no-dedup", &[Nemesis::Bridge], &["3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_build_that_acknowledges_before_commit() {
    checker_catches(
        "--fault-ack-before-commit",
        &[Nemesis::IsolateLeader],
        &["1"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_build_that_skips_fsync() {
    // Acknowledged clicks lost (line 1), or replicas that can no longer agree or even be
    // brought to rest (line 6): a log that lost acknowledged entries does either.
    checker_catches("--fault-skip-fsync", &[Nemesis::MajorityDown], &["1", "6"]).await;
}
