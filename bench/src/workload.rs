//! A seeded generator of realistic click traffic: ads drawn from a Zipf distribution,
//! several countries and address ranges, an event clock that moves forward, and a known
//! share of deliberate duplicates, late clicks and far-future clicks.
//!
//! The generator labels every click with what it is ([`Kind`]), so a run can check the
//! engine's outcomes against what was sent: a fresh click must be accepted, a resent one
//! must be a duplicate, a late one late, a future one rejected. The same seed always
//! produces the same clicks.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use adclick_proto::model::{AdId, Click, EventId, MS_PER_MINUTE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Countries and their share of traffic (weights sum to 100).
const COUNTRIES: &[(&str, u32)] = &[
    ("USA", 40),
    ("DEU", 15),
    ("GBR", 12),
    ("IND", 12),
    ("BRA", 8),
    ("JPN", 8),
    ("FRA", 5),
];

/// What the generator meant a click to be, and so which outcome it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A new click inside the allowed lateness: must be accepted.
    Fresh,
    /// A resend of a recent click (same event id and time): must be a duplicate.
    Duplicate,
    /// A new click older than the watermark: must be late.
    Late,
    /// A new click far ahead of the proposer's clock: must be rejected.
    Future,
}

/// Shape of the traffic.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Distinct ads (`ad-000001` ...).
    pub ads: u64,
    /// Zipf exponent: higher means a few ads take most clicks.
    pub zipf_s: f64,
    /// Clicks per minute of event time: how fast the event clock moves.
    pub clicks_per_minute: u64,
    /// Event time of the first click, ms since the epoch.
    pub start_ms: i64,
    /// Share of clicks that resend a recent click.
    pub duplicate_rate: f64,
    /// Share of clicks that are older than the watermark.
    pub late_rate: f64,
    /// Share of clicks that are far in the future.
    pub future_rate: f64,
    /// The engine's allowed lateness (late clicks are made older than this).
    pub allowed_lateness_ms: i64,
    /// The engine's future-skew limit (future clicks are made newer than this).
    pub max_future_skew_ms: i64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            ads: 5_000,
            zipf_s: 1.1,
            clicks_per_minute: 20_000,
            start_ms: 1_720_483_200_000, // 2024-07-09T00:00:00Z, the seed log's day
            duplicate_rate: 0.02,
            late_rate: 0.01,
            future_rate: 0.001,
            allowed_lateness_ms: 5 * MS_PER_MINUTE,
            max_future_skew_ms: 60_000,
        }
    }
}

/// The generator. Not thread-safe; make one per producer with its own seed.
#[derive(Debug)]
pub struct Workload {
    cfg: WorkloadConfig,
    seed: u64,
    rng: StdRng,
    zipf: Zipf<f64>,
    seq: u64,
    clock_ms: f64,
    step_ms: f64,
    /// Recent fresh clicks, candidates for resending. Bounded, and only clicks well
    /// inside the lateness window, so a resend is always a duplicate and never late.
    recent: VecDeque<Click>,
}

/// Most recent clicks remembered for duplicates.
const RECENT: usize = 4096;

impl Workload {
    /// A generator for `cfg`, reproducible from `seed`.
    pub fn new(cfg: WorkloadConfig, seed: u64) -> Result<Self, String> {
        if cfg.ads == 0 || cfg.clicks_per_minute == 0 {
            return Err("ads and clicks_per_minute must be positive".into());
        }
        let zipf = Zipf::new(cfg.ads as f64, cfg.zipf_s).map_err(|e| format!("zipf: {e}"))?;
        let step_ms = MS_PER_MINUTE as f64 / cfg.clicks_per_minute as f64;
        Ok(Workload {
            clock_ms: cfg.start_ms as f64,
            step_ms,
            cfg,
            seed,
            rng: StdRng::seed_from_u64(seed),
            zipf,
            seq: 0,
            recent: VecDeque::with_capacity(RECENT),
        })
    }

    /// The seed this generator was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The event clock: the time a fresh click gets now, ms since the epoch. A proposer
    /// simulating a live leader uses it as `proposed_at`.
    pub fn now_ms(&self) -> i64 {
        self.clock_ms as i64
    }

    /// The id of ad number `n` (1-based), as the generator names ads.
    pub fn ad_name(n: u64) -> String {
        format!("ad-{n:06}")
    }

    /// The next click and what it is meant to be.
    pub fn next_click(&mut self) -> (Click, Kind) {
        self.clock_ms += self.step_ms;
        let roll: f64 = self.rng.random();
        let dup_cut = self.cfg.duplicate_rate;
        let late_cut = dup_cut + self.cfg.late_rate;
        let future_cut = late_cut + self.cfg.future_rate;
        if roll < dup_cut && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            return (self.recent[i].clone(), Kind::Duplicate);
        }
        let now = self.now_ms();
        let (time, kind) = if roll < late_cut && roll >= dup_cut {
            // Older than any watermark: lateness plus one to five minutes.
            let extra = self.rng.random_range(MS_PER_MINUTE..=5 * MS_PER_MINUTE);
            (now - self.cfg.allowed_lateness_ms - extra, Kind::Late)
        } else if roll < future_cut && roll >= late_cut {
            let extra = self.rng.random_range(MS_PER_MINUTE..=10 * MS_PER_MINUTE);
            (now + self.cfg.max_future_skew_ms + extra, Kind::Future)
        } else {
            // A little jitter: clicks arrive slightly out of order, as in real traffic.
            (now - self.rng.random_range(0..2_000), Kind::Fresh)
        };
        let click = self.make_click(time);
        if kind == Kind::Fresh {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(click.clone());
        }
        (click, kind)
    }

    fn make_click(&mut self, event_time_ms: i64) -> Click {
        self.seq += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.seed.to_be_bytes());
        id[8..].copy_from_slice(&self.seq.to_be_bytes());
        let ad = self.zipf.sample(&mut self.rng) as u64;
        let user = self.rng.random_range(1..=1_000_000u32);
        Click {
            event_id: valid(EventId::new(id.to_vec())),
            ad_id: valid(AdId::new(&Self::ad_name(ad))),
            event_time_ms,
            user_id: format!("user-{user}"),
            ip: self.random_ip(),
            country: self.random_country().to_string(),
        }
    }

    fn random_country(&mut self) -> &'static str {
        let mut pick = self.rng.random_range(0..100u32);
        for (name, weight) in COUNTRIES {
            if pick < *weight {
                return name;
            }
            pick -= weight;
        }
        COUNTRIES[0].0
    }

    fn random_ip(&mut self) -> IpAddr {
        match self.rng.random_range(0..10u8) {
            // Some traffic from a private range, so a CIDR filter has something to match.
            0 => IpAddr::V4(Ipv4Addr::new(
                10,
                self.rng.random(),
                self.rng.random(),
                self.rng.random(),
            )),
            1 => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                self.rng.random(),
            )),
            _ => IpAddr::V4(Ipv4Addr::from(
                self.rng.random_range(0x0100_0000u32..0xdf00_0000),
            )),
        }
    }
}

/// The generator builds ids from fixed formats that are valid by construction.
fn valid<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("workload generated an invalid id: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_the_same_clicks() {
        let mut a = Workload::new(WorkloadConfig::default(), 7).expect("config");
        let mut b = Workload::new(WorkloadConfig::default(), 7).expect("config");
        for _ in 0..1000 {
            assert_eq!(a.next_click(), b.next_click());
        }
    }

    #[test]
    fn mix_of_kinds_follows_the_rates() {
        let mut w = Workload::new(WorkloadConfig::default(), 1).expect("config");
        let mut dup = 0;
        let mut late = 0;
        for _ in 0..100_000 {
            match w.next_click().1 {
                Kind::Duplicate => dup += 1,
                Kind::Late => late += 1,
                _ => {}
            }
        }
        assert!((1500..2500).contains(&dup), "duplicates: {dup}");
        assert!((700..1300).contains(&late), "late: {late}");
    }

    #[test]
    fn duplicates_resend_an_earlier_click_exactly() {
        let mut w = Workload::new(WorkloadConfig::default(), 3).expect("config");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let (c, kind) = w.next_click();
            if kind == Kind::Duplicate {
                assert!(seen.contains(&c.event_id), "duplicate of an unseen id");
            } else {
                assert!(seen.insert(c.event_id.clone()), "fresh id reused");
            }
        }
    }
}
