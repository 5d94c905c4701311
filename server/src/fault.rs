//! Fault injection (cargo feature `fault-injection`, off by default): the switches that
//! make a node deliberately wrong, so the fault suite can show its checker catches each
//! kind of bug. None of this is compiled into a production build; only
//! `cargo build --profile fault -p adclick-server --features fault-injection`
//! (`target/fault/adclickd`) carries it. `docs/fault-injection.md` describes each switch.
//!
//! - `--fault-clock-skew-ms N`: [`Faults::clock_skew_ms`] is added to the `proposed_at_ms`
//!   a leader stamps on ingest entries, and nowhere else. One atomic per node, changeable
//!   at runtime with `POST /fault/clock-skew?ms=N` ([`routes`]).
//! - `--fault-no-dedup`: `SmOptions::fault_no_dedup` ([`sm_options`]).
//! - `--fault-ack-before-commit`: [`propose_without_waiting`].
//! - `--fault-skip-fsync`: `LogConfig::fault_skip_fsync`.
//! - `--fault-crash-journal`: every log store of the node opens through one shared
//!   [`CrashFs`] ([`log_fs`]).
//!
//! A node with the feature always says so, loudly, at startup ([`announce`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::model::Outcome;
use adclick_storage::log::crash::CrashFs;
use adclick_storage::log::{FileSystem, StdFs};
use adclick_storage::sm::SmOptions;
use adclick_storage::types::{Command, CommandResponse};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::config::{Config, FaultConfig};
use crate::error::{Error, Result};
use crate::group::{Group, Proposal};

/// The runtime state of a node's fault switches.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    /// The current clock skew, ms: starts at `--fault-clock-skew-ms`, set over HTTP.
    clock_skew_ms: AtomicI64,
}

impl Faults {
    /// The switches as configured.
    pub fn new(config: &FaultConfig) -> Self {
        Faults {
            config: config.clone(),
            clock_skew_ms: AtomicI64::new(config.clock_skew_ms),
        }
    }

    /// What a leader adds to the time it stamps on ingest entries now, ms.
    pub fn clock_skew_ms(&self) -> i64 {
        self.clock_skew_ms.load(Ordering::Relaxed)
    }

    /// Changes the clock skew.
    pub fn set_clock_skew_ms(&self, ms: i64) {
        self.clock_skew_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether leaders answer ingest before commit.
    pub fn ack_before_commit(&self) -> bool {
        self.config.ack_before_commit
    }
}

/// Logs, at `warn`, that this is a fault-injection build and which switches are on.
pub fn announce(config: &FaultConfig) {
    let active = config.active();
    if active.is_empty() {
        tracing::warn!(
            "FAULT INJECTION BUILD (feature fault-injection): no fault switch is on, but \
             POST /fault/clock-skew can turn one on; never run this build in production"
        );
    } else {
        tracing::warn!(
            switches = %active.join(" "),
            "FAULT INJECTION: this node is deliberately broken; never run it in production"
        );
    }
}

/// The state machine options the switches ask for.
pub fn sm_options(config: &FaultConfig) -> SmOptions {
    SmOptions {
        fault_no_dedup: config.no_dedup,
        ..SmOptions::default()
    }
}

/// The file system every log store of the node opens through: with the crash journal, one
/// [`CrashFs`] over the node's log directories (shared, so the node has one journal),
/// else the real one.
pub fn log_fs(config: &Config) -> std::io::Result<Arc<dyn FileSystem>> {
    if !config.fault.crash_journal {
        return Ok(Arc::new(StdFs));
    }
    let log_dirs = (0..=config.groups).map(|g| config.log_dir(g));
    let fs = CrashFs::new(&config.data_dir, log_dirs, Arc::new(StdFs))?;
    tracing::warn!(journal = %fs.journal_path().display(), "FAULT INJECTION: crash journal on");
    Ok(Arc::new(fs))
}

/// `--fault-ack-before-commit`: hands `cmd` (an ingest entry of `clicks` valid clicks) to
/// Raft in the background and answers every click `Accepted` at once, whether or not the
/// entry will ever commit, and whether or not this node still leads the group.
pub fn propose_without_waiting(
    group: &Arc<Group>,
    cmd: Command,
    timeout: Duration,
    clicks: usize,
) -> Proposal {
    let group = Arc::clone(group);
    tokio::spawn(async move {
        match group.propose(cmd, timeout).await {
            Ok(Proposal::Applied(_)) => {}
            Ok(Proposal::NotLeader(_)) => {
                tracing::debug!(
                    group = group.id,
                    "acknowledged ingest not proposed: not leader"
                )
            }
            Err(e) => tracing::debug!(group = group.id, error = %e, "acknowledged ingest failed"),
        }
    });
    Proposal::Applied(CommandResponse::Ingest(vec![Outcome::Accepted; clicks]))
}

/// The fault routes: `POST /fault/clock-skew?ms=N` sets the clock skew and answers
/// `{"clock_skew_ms": N}`.
pub fn routes<S>(faults: Arc<Faults>) -> Router<S> {
    Router::new()
        .route("/fault/clock-skew", post(set_clock_skew))
        .with_state(faults)
}

async fn set_clock_skew(
    State(faults): State<Arc<Faults>>,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    match skew_param(query) {
        Ok(ms) => {
            faults.set_clock_skew_ms(ms);
            tracing::warn!(clock_skew_ms = ms, "FAULT INJECTION: clock skew set");
            Json(serde_json::json!({ "clock_skew_ms": ms })).into_response()
        }
        Err(e) => crate::http::error_response(&e),
    }
}

fn skew_param(
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<i64> {
    let params = crate::http::params(crate::http::query_pairs(query)?, &["ms"])?;
    let ms = params
        .get("ms")
        .ok_or_else(|| Error::InvalidArgument("ms=N (milliseconds) is required".into()))?;
    ms.parse()
        .map_err(|_| Error::InvalidArgument(format!("ms={ms:?} is not an integer")))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn post_skew(faults: &Arc<Faults>, query: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method("POST")
            .uri(format!("/fault/clock-skew{query}"))
            .body(Body::empty())
            .expect("request");
        let resp = routes::<()>(Arc::clone(faults))
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn the_clock_skew_is_set_over_http() {
        let faults = Arc::new(Faults::new(&FaultConfig {
            clock_skew_ms: 5,
            ..FaultConfig::default()
        }));
        assert_eq!(faults.clock_skew_ms(), 5);
        let (status, json) = post_skew(&faults, "?ms=-120000").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json, serde_json::json!({ "clock_skew_ms": -120_000 }));
        assert_eq!(faults.clock_skew_ms(), -120_000);
        for bad in ["", "?ms=soon", "?ms=1&ms=2", "?sec=1"] {
            let (status, json) = post_skew(&faults, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
            assert!(json["error"].is_string(), "{bad}: {json}");
        }
        assert_eq!(
            faults.clock_skew_ms(),
            -120_000,
            "a refused request changes nothing"
        );
    }

    #[test]
    fn the_crash_journal_covers_every_log_directory_and_is_written_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |crash_journal: bool| {
            let mut c = Config::resolve(crate::config::Flags {
                node_id: Some(1),
                data_dir: Some(dir.path().to_path_buf()),
                listen: "127.0.0.1:7401".parse().ok(),
                http: "127.0.0.1:8401".parse().ok(),
                peers: Some("1=127.0.0.1:7401".into()),
                groups: Some(2),
                ..Default::default()
            })
            .expect("valid config");
            c.fault.crash_journal = crash_journal;
            c
        };
        let journal = dir.path().join(adclick_storage::log::crash::JOURNAL_FILE);
        log_fs(&config(false)).expect("real fs");
        assert!(!journal.exists(), "no journal unless asked for");
        log_fs(&config(true)).expect("crash fs");
        let text = std::fs::read_to_string(&journal).expect("journal written");
        for g in 0..=2 {
            assert!(text.contains(&format!("groups/{g}/log\n")), "{text}");
        }
        let report = adclick_storage::log::crash::drop_unsynced(dir.path()).expect("drop");
        assert!(report.cut.is_empty(), "{report}");
    }

    #[test]
    fn switches_reach_the_state_machine_options() {
        let on = FaultConfig {
            no_dedup: true,
            ..FaultConfig::default()
        };
        assert!(sm_options(&on).fault_no_dedup);
        assert!(!sm_options(&FaultConfig::default()).fault_no_dedup);
    }
}
