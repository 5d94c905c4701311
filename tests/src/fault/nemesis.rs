//! The nemesis: the faults a run injects, and the schedule that orders them.
//!
//! | name | fault | who cannot acknowledge |
//! |---|---|---|
//! | `kill` | SIGKILL a node (with the crash journal, also drop its unsynced log writes: a power loss), restart it after the hold | — |
//! | `pause` | SIGSTOP a node for the hold (longer than the election timeout), then SIGCONT | — |
//! | `isolate-leader` | cut the node leading most groups off from both peers (dropped packets) | that node |
//! | `split` | a random node alone against the other two (connections reset) | that node |
//! | `one-way` | the leader's peers cannot reach it; it can still send to them | the leader |
//! | `bridge` | cut one pair of nodes; the third still sees both (3-node form of Jepsen's majorities ring) | — |
//! | `slow-network` | every link delayed 100-500 ms (up to the election timeout: heartbeats arrive late, elections and retries follow) | — |
//! | `rolling-restart` | SIGTERM and restart every node in turn, waiting for readiness in between | — |
//! | `clock-skew` | the leader's `proposed_at` clock set 2.5-10 min behind for half the hold (live clicks are rejected as future events, and must not count), then 2-15 min ahead for the hold (no visible effect) | — |
//! | `majority-down` | SIGSTOP one node, a second later SIGKILL the other two (power loss) and SIGCONT the first; restart the two at the heal | everyone: writes must be refused |
//! | `majority-down-late-thaw` | as `majority-down`, but the first node stays frozen until a second after the two are restarted | everyone, until the heal |
//!
//! A [`Schedule`] is a list of [`Step`]s drawn from the run's seed; the seed and the
//! schedule's text fully describe a run's faults.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::proxy::{LinkMode, Mesh};
use crate::cluster::Cluster;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Nemesis {
    /// SIGKILL (and power loss) then restart.
    Kill,
    /// SIGSTOP then SIGCONT.
    Pause,
    /// The leader cut off from both peers.
    IsolateLeader,
    /// One node against two, with connection resets.
    Split,
    /// The leader can send but not receive.
    OneWay,
    /// One link cut; the third node bridges.
    Bridge,
    /// Every link slow.
    SlowNetwork,
    /// Every node restarted in turn.
    RollingRestart,
    /// The leader's clock skewed.
    ClockSkew,
    /// Two of three nodes killed.
    MajorityDown,
    /// Two of three nodes killed; the third stays frozen until a second after they are
    /// back.
    MajorityDownLateThaw,
}

impl Nemesis {
    /// Every nemesis.
    pub const ALL: [Nemesis; 11] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::IsolateLeader,
        Nemesis::Split,
        Nemesis::OneWay,
        Nemesis::Bridge,
        Nemesis::SlowNetwork,
        Nemesis::RollingRestart,
        Nemesis::ClockSkew,
        Nemesis::MajorityDown,
        Nemesis::MajorityDownLateThaw,
    ];

    /// Its name in schedules and reports.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::IsolateLeader => "isolate-leader",
            Nemesis::Split => "split",
            Nemesis::OneWay => "one-way",
            Nemesis::Bridge => "bridge",
            Nemesis::SlowNetwork => "slow-network",
            Nemesis::RollingRestart => "rolling-restart",
            Nemesis::ClockSkew => "clock-skew",
            Nemesis::MajorityDown => "majority-down",
            Nemesis::MajorityDownLateThaw => "majority-down-late-thaw",
        }
    }

    /// The nemesis named `name`.
    pub fn parse(name: &str) -> anyhow::Result<Nemesis> {
        Nemesis::ALL
            .into_iter()
            .find(|n| n.name() == name)
            .with_context(|| {
                format!(
                    "unknown nemesis {name:?}; known: {}",
                    Nemesis::ALL.map(Nemesis::name).join(", ")
                )
            })
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub nemesis: Nemesis,
    /// How long the fault holds.
    pub hold: Duration,
    /// Seed of the step's own choices (which node, which skew).
    pub seed: u64,
}

/// The faults of a run, in order, with a quiet period after each heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The steps.
    pub steps: Vec<Step>,
    /// Quiet time after each heal (the liveness probe runs in it).
    pub quiet: Duration,
}

impl Schedule {
    /// The given nemeses in order, each held `hold`, choices drawn from `seed`.
    pub fn of(nemeses: &[Nemesis], hold: Duration, seed: u64) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        Schedule {
            steps: nemeses
                .iter()
                .map(|&nemesis| Step {
                    nemesis,
                    hold,
                    seed: rng.random(),
                })
                .collect(),
            quiet: Duration::from_secs(2),
        }
    }

    /// Random steps from `seed` filling about `duration`: nemeses drawn from `from`, holds
    /// of 2-6 s.
    pub fn random(seed: u64, duration: Duration, from: &[Nemesis]) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let quiet = Duration::from_secs(2);
        let mut steps = Vec::new();
        let mut total = Duration::ZERO;
        while total < duration {
            let nemesis = *from.choose(&mut rng).unwrap_or(&Nemesis::Kill);
            let hold = Duration::from_millis(rng.random_range(2_000..=6_000));
            total += hold + quiet + Duration::from_secs(2);
            steps.push(Step {
                nemesis,
                hold,
                seed: rng.random(),
            });
        }
        Schedule { steps, quiet }
    }

    /// `kill:4000ms, pause:3000ms, ...` (with each step's seed, so it can be replayed).
    pub fn describe(&self) -> String {
        self.steps
            .iter()
            .map(|s| format!("{}:{}ms#{:x}", s.nemesis, s.hold.as_millis(), s.seed))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What an injected fault needs undone, and what the checker should know about it.
#[derive(Debug)]
pub struct Injected {
    /// What was done, for a person.
    pub detail: String,
    /// Nodes that cannot acknowledge anything while it holds.
    pub minority: Vec<u64>,
    /// Whether no write may be acknowledged while it holds.
    pub no_quorum: bool,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    Nothing,
    Mesh,
    Restart(Vec<u64>),
    Resume(u64),
    RestartThenResume(Vec<u64>, u64),
    Skew(u64),
}

/// The node leading the most data groups (ties to the lowest id), or any live node.
async fn busiest_leader(cluster: &Cluster) -> anyhow::Result<u64> {
    let status = cluster.status().await?;
    let mut led = std::collections::BTreeMap::<u64, usize>::new();
    for g in status.groups.iter().filter(|g| g.group_id != 0) {
        if let Some(l) = g.leader_id {
            *led.entry(l).or_insert(0) += 1;
        }
    }
    let live = cluster.live_ids();
    led.into_iter()
        .filter(|(n, _)| live.contains(n))
        .max_by_key(|&(n, c)| (c, std::cmp::Reverse(n)))
        .map(|(n, _)| n)
        .or_else(|| live.first().copied())
        .context("no node is running")
}

/// Sets node `id`'s injected `proposed_at` skew through its fault endpoint.
pub async fn set_clock_skew(cluster: &Cluster, id: u64, ms: i64) -> anyhow::Result<()> {
    let r = cluster
        .http(id)
        .post(&format!("/fault/clock-skew?ms={ms}"), "text/plain", b"")
        .await?;
    if r.status != 200 {
        bail!(
            "node {id}: POST /fault/clock-skew answered {}: {}",
            r.status,
            r.body
        );
    }
    Ok(())
}

/// Kills node `id` with SIGKILL and, with `power_loss`, cuts its log files back to what
/// was fsynced (the crash journal), as a power cut would.
pub fn crash(cluster: &mut Cluster, id: u64, power_loss: bool) -> anyhow::Result<String> {
    cluster.kill(id)?;
    if !power_loss {
        return Ok(format!("SIGKILL node {id}"));
    }
    let report = adclick_storage::log::crash::drop_unsynced(cluster.data_dir(id))
        .with_context(|| format!("dropping node {id}'s unsynced writes"))?;
    Ok(format!("SIGKILL + power loss on node {id} ({report})"))
}

/// Injects `step`'s fault.
pub async fn inject(
    step: &Step,
    cluster: &mut Cluster,
    mesh: &Mesh,
    power_loss: bool,
) -> anyhow::Result<Injected> {
    let mut rng = StdRng::seed_from_u64(step.seed);
    let ids = cluster.ids();
    let any = |rng: &mut StdRng| ids[rng.random_range(0..ids.len())];
    let done = |detail: String, minority: Vec<u64>, undo: Undo| Injected {
        detail,
        minority,
        no_quorum: false,
        undo,
    };
    Ok(match step.nemesis {
        Nemesis::Kill => {
            let n = if rng.random_bool(0.5) {
                busiest_leader(cluster).await?
            } else {
                any(&mut rng)
            };
            done(
                crash(cluster, n, power_loss)?,
                vec![],
                Undo::Restart(vec![n]),
            )
        }
        Nemesis::Pause => {
            let n = busiest_leader(cluster).await?;
            cluster.pause(n)?;
            done(format!("SIGSTOP node {n}"), vec![], Undo::Resume(n))
        }
        Nemesis::IsolateLeader => {
            let n = busiest_leader(cluster).await?;
            mesh.isolate(n, LinkMode::Drop);
            done(format!("node {n} cut off (dropped)"), vec![n], Undo::Mesh)
        }
        Nemesis::Split => {
            let n = any(&mut rng);
            let rest: Vec<u64> = ids.iter().copied().filter(|&x| x != n).collect();
            mesh.partition(&[&[n], &rest], LinkMode::Reset);
            done(
                format!("partition [{n}] | {rest:?} (reset)"),
                vec![n],
                Undo::Mesh,
            )
        }
        Nemesis::OneWay => {
            let n = busiest_leader(cluster).await?;
            mesh.one_way_in(n, LinkMode::Drop);
            done(
                format!("node {n} can send but not receive"),
                vec![n],
                Undo::Mesh,
            )
        }
        Nemesis::Bridge => {
            let a = any(&mut rng);
            let others: Vec<u64> = ids.iter().copied().filter(|&x| x != a).collect();
            let b = others[rng.random_range(0..others.len())];
            mesh.set(a, b, LinkMode::Drop);
            mesh.set(b, a, LinkMode::Drop);
            done(
                format!("link {a} <-> {b} cut, the others bridge"),
                vec![],
                Undo::Mesh,
            )
        }
        Nemesis::SlowNetwork => {
            let d = Duration::from_millis(rng.random_range(100..=500));
            for &a in &ids {
                for &b in ids.iter().filter(|&&b| b != a) {
                    mesh.set(a, b, LinkMode::Delay(d));
                }
            }
            done(
                format!("every link delayed {} ms", d.as_millis()),
                vec![],
                Undo::Mesh,
            )
        }
        Nemesis::RollingRestart => {
            for &n in &ids {
                cluster.stop(n).await?;
                cluster.restart(n)?;
                cluster.wait_ready(Duration::from_secs(30)).await?;
            }
            done(
                format!("SIGTERM + restart of nodes {ids:?} in turn"),
                vec![],
                Undo::Nothing,
            )
        }
        Nemesis::ClockSkew => {
            // Behind for half the hold (live clicks are too far ahead of it: rejected, and
            // never counted), then ahead for the hold (nothing visible should change).
            let n = busiest_leader(cluster).await?;
            let behind = -rng.random_range(150_000..=600_000);
            let ahead = rng.random_range(120_000..=900_000);
            set_clock_skew(cluster, n, behind).await?;
            tokio::time::sleep(step.hold / 2).await;
            set_clock_skew(cluster, n, ahead).await?;
            done(
                format!("node {n}'s proposed_at clock {behind:+} ms, then {ahead:+} ms"),
                vec![],
                Undo::Skew(n),
            )
        }
        Nemesis::MajorityDown | Nemesis::MajorityDownLateThaw => {
            // The third node is frozen while the others write on, then thawed once they
            // are dead: the last second of writes is on the two that crash and nowhere
            // else (they must bring it back from what they fsynced), and the survivor,
            // alone, must refuse everything until they return.
            let s = any(&mut rng);
            let pair: Vec<u64> = ids.iter().copied().filter(|&x| x != s).collect();
            cluster.pause(s)?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut detail = vec![format!("SIGSTOP node {s}")];
            for &n in &pair {
                detail.push(crash(cluster, n, power_loss)?);
            }
            if step.nemesis == Nemesis::MajorityDownLateThaw {
                // The pair comes back alone: it must elect and serve from its own disks
                // before the stale third node rejoins.
                return Ok(Injected {
                    detail: detail.join("; "),
                    minority: vec![],
                    no_quorum: true,
                    undo: Undo::RestartThenResume(pair, s),
                });
            }
            cluster.resume(s)?;
            detail.push(format!("SIGCONT node {s}"));
            Injected {
                detail: detail.join("; "),
                minority: vec![s],
                no_quorum: true,
                undo: Undo::Restart(pair),
            }
        }
    })
}

/// Undoes an injected fault.
pub async fn heal(injected: &Injected, cluster: &mut Cluster, mesh: &Mesh) -> anyhow::Result<()> {
    match &injected.undo {
        Undo::Nothing => {}
        Undo::Mesh => mesh.heal(),
        Undo::Restart(nodes) => {
            for &n in nodes {
                cluster.restart(n)?;
            }
        }
        Undo::Resume(n) => cluster.resume(*n)?,
        Undo::RestartThenResume(nodes, s) => {
            for &n in nodes {
                cluster.restart(n)?;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.resume(*s)?;
        }
        Undo::Skew(n) => set_clock_skew(cluster, *n, 0).await?,
    }
    Ok(())
}
