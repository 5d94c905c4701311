//! Behaviour of the aggregation state machine through its public API: the outcome rules,
//! watermark and dedup expiry, filters, queries (memory and disk minutes), reopen,
//! snapshots (build, install, corruption) and the openraft trait surface.

mod common;

use common::{all_time, click, log_id, GROUP, MIN, T0};
use std::io;
use std::path::Path;

use adclick_proto::model::{AdId, Click, Minute, MinuteRange, Outcome, RejectReason};
use adclick_storage::sm::format::{self, meta, Keys};
use adclick_storage::sm::{
    open_db, IncomingSnapshot, SmOptions, SnapshotFile, StateMachine, MAX_TOP_N,
};
use adclick_storage::types::{
    Command, CommandResponse, Entry, FilterDef, GroupSettings, IngestBatch, StoredMembership,
};
use adclick_storage::Error;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, Membership};

fn in_country(mut c: Click, country: &str) -> Click {
    c.country = country.into();
    c
}

fn minutes(from: i64, to: i64) -> MinuteRange {
    MinuteRange::new(Minute::of_ms(from), Minute::of_ms(to)).expect("valid range")
}

fn ad(s: &str) -> AdId {
    AdId::new(s).expect("valid ad id")
}

/// A state machine in a temp dir plus the next log index to apply.
struct Group {
    dir: tempfile::TempDir,
    sm: Option<StateMachine>,
    next: u64,
    opts: SmOptions,
}

impl Group {
    fn new() -> Self {
        Self::with(SmOptions::default())
    }

    fn with(opts: SmOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = open(dir.path(), opts.clone());
        Group {
            dir,
            sm: Some(sm),
            next: 1,
            opts,
        }
    }

    fn sm(&mut self) -> &mut StateMachine {
        self.sm.as_mut().expect("open")
    }

    fn reopen(&mut self) {
        self.sm = None;
        self.sm = Some(open(self.dir.path(), self.opts.clone()));
    }

    fn entry(
        &mut self,
        payload: EntryPayload<Command, u64, openraft::BasicNode>,
    ) -> CommandResponse {
        let e = Entry {
            log_id: log_id(self.next),
            payload,
        };
        self.next += 1;
        let mut out = self.sm().apply_entries([e]).expect("apply");
        out.pop().expect("one response per entry")
    }

    fn cmd(&mut self, c: Command) -> CommandResponse {
        self.entry(EntryPayload::Normal(c))
    }

    fn ingest(&mut self, at: i64, clicks: Vec<Click>) -> Vec<Outcome> {
        match self.cmd(Command::Ingest(IngestBatch {
            proposed_at_ms: at,
            clicks,
        })) {
            CommandResponse::Ingest(o) => o,
            other => panic!("ingest answered {other:?}"),
        }
    }

    fn count(&mut self, a: &str, range: MinuteRange, filter: Option<&str>) -> u64 {
        self.sm()
            .reader()
            .count(&ad(a), range, filter)
            .expect("count")
            .count
    }

    fn top(&mut self, n: usize, range: MinuteRange, filter: Option<&str>) -> Vec<(String, u64)> {
        let rows = self.sm().reader().top(n, range, filter).expect("top").rows;
        rows.into_iter()
            .map(|r| (r.ad_id.to_string(), r.count))
            .collect()
    }

    fn digest(&mut self) -> adclick_storage::sm::StateDigest {
        self.sm().reader().digest().expect("digest")
    }
}

fn open(dir: &Path, opts: SmOptions) -> StateMachine {
    let db = open_db(&dir.join("db")).expect("open db");
    StateMachine::open(db, GROUP, dir.join("snapshots"), opts).expect("open state machine")
}

fn create_filter(name: &str, expr: &str) -> Command {
    Command::CreateFilter(FilterDef {
        name: name.into(),
        expr: expr.into(),
    })
}

#[test]
fn each_rule_decides_its_outcome_and_only_accepted_clicks_count() {
    let mut g = Group::new();
    let mut too_long = click("bad", "ad1", T0);
    too_long.country = "x".repeat(65);
    let out = g.ingest(
        T0,
        vec![
            click("e1", "ad1", T0),
            click("e1", "ad1", T0),
            click("e2", "ad1", T0 + MIN + 1),
            click("e3", "ad1", T0 - 5 * MIN - 1),
            too_long,
            click("e4", "ad1", T0 - 5 * MIN),
        ],
    );
    assert_eq!(
        out,
        [
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Rejected(RejectReason::FutureEvent),
            Outcome::Late,
            Outcome::Rejected(RejectReason::Invalid),
            Outcome::Accepted,
        ]
    );
    let answer = g
        .sm()
        .reader()
        .count(&ad("ad1"), all_time(), None)
        .expect("count");
    assert_eq!((answer.count, answer.late), (2, 1));
    assert_eq!(answer.applied_index, Some(1));
    assert_eq!(answer.watermark_ms, Some(T0 - 5 * MIN));
}

#[test]
fn the_watermark_follows_the_newest_counted_event_and_expires_dedup_ids() {
    let mut g = Group::new();
    assert_eq!(g.sm().reader().watermark_ms().expect("watermark"), None);
    g.ingest(T0, vec![click("a", "ad1", T0 + 30_000)]);
    assert_eq!(
        g.sm().reader().watermark_ms().expect("wm"),
        Some(T0 + 30_000 - 5 * MIN)
    );
    // A rejected future event does not move it.
    g.ingest(T0, vec![click("f", "ad1", T0 + 10 * MIN)]);
    assert_eq!(
        g.sm().reader().watermark_ms().expect("wm"),
        Some(T0 + 30_000 - 5 * MIN)
    );
    // Within lateness a retry is a duplicate...
    assert_eq!(
        g.ingest(T0, vec![click("a", "ad1", T0 + 30_000)]),
        [Outcome::Duplicate]
    );
    // ...once the watermark passes its whole minute, the id is gone and a retry is late.
    g.ingest(T0 + 7 * MIN, vec![click("b", "ad2", T0 + 7 * MIN)]);
    assert_eq!(
        g.sm().reader().watermark_ms().expect("wm"),
        Some(T0 + 2 * MIN)
    );
    assert_eq!(
        g.ingest(T0 + 7 * MIN, vec![click("a", "ad1", T0 + 30_000)]),
        [Outcome::Late]
    );
    assert_eq!(g.count("ad1", all_time(), None), 1);
}

#[test]
fn a_reused_id_with_a_different_time_is_still_a_duplicate() {
    let mut g = Group::new();
    g.ingest(T0, vec![click("x", "ad1", T0)]);
    let out = g.ingest(
        T0,
        vec![
            click("x", "ad1", T0 - 3 * MIN),
            click("x", "ad2", T0 + 40_000),
        ],
    );
    assert_eq!(out, [Outcome::Duplicate, Outcome::Duplicate]);
    assert_eq!(
        (
            g.count("ad1", all_time(), None),
            g.count("ad2", all_time(), None)
        ),
        (1, 0)
    );
}

#[test]
fn settings_replace_the_defaults_and_negative_ones_are_refused() {
    let mut g = Group::new();
    let s = GroupSettings {
        allowed_lateness_ms: MIN,
        max_future_skew_ms: 0,
    };
    assert_eq!(g.cmd(Command::Configure(s)), CommandResponse::Configured);
    assert_eq!(g.sm().reader().settings().expect("settings"), s);
    let out = g.ingest(
        T0,
        vec![
            click("a", "ad1", T0 + 1),
            click("b", "ad1", T0),
            click("c", "ad1", T0 - MIN - 1),
        ],
    );
    assert_eq!(
        out,
        [
            Outcome::Rejected(RejectReason::FutureEvent),
            Outcome::Accepted,
            Outcome::Late
        ]
    );
    let bad = GroupSettings {
        allowed_lateness_ms: -5,
        max_future_skew_ms: 0,
    };
    assert!(matches!(
        g.cmd(Command::Configure(bad)),
        CommandResponse::Refused(_)
    ));
    assert_eq!(g.sm().reader().settings().expect("settings"), s);
}

#[test]
fn a_filter_counts_matching_clicks_from_its_registration_on() {
    let mut g = Group::new();
    g.ingest(T0, vec![click("0", "ad1", T0)]);
    let created = g.cmd(create_filter("us", "country = \"US\""));
    assert_eq!(created, CommandResponse::FilterCreated { since_index: 2 });
    g.ingest(
        T0,
        vec![
            click("1", "ad1", T0),
            in_country(click("2", "ad1", T0), "FR"),
            click("3", "ad2", T0),
        ],
    );
    assert_eq!(g.count("ad1", all_time(), None), 3);
    assert_eq!(g.count("ad1", all_time(), Some("us")), 1);
    assert_eq!(
        g.top(10, all_time(), Some("us")),
        [("ad1".into(), 1), ("ad2".into(), 1)]
    );
    let filters = g.sm().reader().filters().expect("filters");
    assert_eq!(filters.len(), 1);
    assert_eq!(
        (filters[0].name.as_str(), filters[0].since_index),
        ("us", 2)
    );
}

#[test]
fn filter_registration_refuses_a_taken_name_a_bad_name_and_a_bad_expression() {
    let mut g = Group::new();
    assert!(matches!(
        g.cmd(create_filter("us", "country = \"US\"")),
        CommandResponse::FilterCreated { .. }
    ));
    let digest = g.digest();
    for (name, expr) in [
        ("us", "country = \"FR\""),
        ("f2", "country =="),
        ("bad name", "country = \"US\""),
    ] {
        assert!(
            matches!(
                g.cmd(create_filter(name, expr)),
                CommandResponse::Refused(_)
            ),
            "{name}: {expr}"
        );
    }
    let after = g.digest();
    assert_eq!(
        after.keys, digest.keys,
        "a refused command changes nothing but the applied id"
    );
    assert_eq!(g.sm().reader().filters().expect("filters").len(), 1);
}

#[test]
fn dropping_a_filter_removes_it_and_its_counters() {
    let mut g = Group::new();
    g.cmd(create_filter("us", "country = \"US\""));
    g.ingest(T0, vec![click("1", "ad1", T0)]);
    assert_eq!(
        g.cmd(Command::DropFilter { name: "us".into() }),
        CommandResponse::FilterDropped { existed: true }
    );
    let err = g
        .sm()
        .reader()
        .count(&ad("ad1"), all_time(), Some("us"))
        .expect_err("dropped filter");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(matches!(
        g.sm().reader().top(5, all_time(), Some("us")),
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        g.cmd(Command::DropFilter { name: "us".into() }),
        CommandResponse::FilterDropped { existed: false }
    );
    // Re-created under the same name it starts from zero.
    assert_eq!(
        g.cmd(create_filter("us", "country = \"US\"")),
        CommandResponse::FilterCreated { since_index: 5 }
    );
    assert_eq!(g.count("ad1", all_time(), Some("us")), 0);
    g.reopen();
    assert_eq!(g.count("ad1", all_time(), Some("us")), 0);
    assert_eq!(g.count("ad1", all_time(), None), 1);
}

#[test]
fn top_orders_by_count_then_ad_id_and_caps_n() {
    let mut g = Group::new();
    let mut clicks = Vec::new();
    for (i, a) in ["b", "a", "c", "a", "b", "d"].iter().enumerate() {
        clicks.push(click(&format!("e{i}"), a, T0 + i as i64));
    }
    g.ingest(T0, clicks);
    assert_eq!(
        g.top(3, all_time(), None),
        [("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]
    );
    assert_eq!(g.top(0, all_time(), None), []);
    assert_eq!(g.top(usize::MAX, all_time(), None).len(), 4);
    let many: Vec<Click> = (0..MAX_TOP_N + 5)
        .map(|i| click(&format!("m{i}"), &format!("many{i:05}"), T0))
        .collect();
    g.ingest(T0, many);
    assert_eq!(
        g.top(usize::MAX, all_time(), None).len(),
        MAX_TOP_N,
        "n is capped"
    );
    let empty = MinuteRange::new(Minute(5), Minute(5)).expect("range");
    assert_eq!(g.top(3, empty, None), []);
    let backward = MinuteRange {
        from: Minute(6),
        to: Minute(5),
    };
    let err = g
        .sm()
        .reader()
        .top(3, backward, None)
        .expect_err("backward range");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(matches!(
        g.sm().reader().count(&ad("a"), backward, None),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn final_minutes_are_served_from_disk_with_the_same_answers() {
    // Nothing final is kept in memory, so old minutes come from RocksDB.
    let mut g = Group::with(SmOptions {
        keep_final_minutes: 0,
        ..SmOptions::default()
    });
    let mut expect = std::collections::BTreeMap::new();
    let mut n = 0;
    for m in 0..30i64 {
        let at = T0 + m * MIN;
        let mut clicks = Vec::new();
        for k in 0..(m % 4 + 1) {
            let a = format!("ad{}", (m + k) % 5);
            clicks.push(click(&format!("e{n}"), &a, at + k));
            *expect.entry(a).or_insert(0u64) += 1;
            n += 1;
        }
        g.ingest(at, clicks);
    }
    let status = g.sm().reader().status().expect("status");
    assert!(
        status.memory_minutes <= 6,
        "old minutes left memory: {}",
        status.memory_minutes
    );
    for (a, c) in &expect {
        assert_eq!(g.count(a, all_time(), None), *c, "{a}");
    }
    let mut want: Vec<(String, u64)> = expect.into_iter().collect();
    want.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    assert_eq!(g.top(3, all_time(), None), want[..3]);
    // A range straddling disk and memory: minutes 20..30.
    let r = minutes(T0 + 20 * MIN, T0 + 30 * MIN);
    let mut sum = 0;
    for a in ["ad0", "ad1", "ad2", "ad3", "ad4"] {
        sum += g.count(a, r, None);
    }
    assert_eq!(sum, (20..30).map(|m| m % 4 + 1).sum::<i64>() as u64);
    let top_sum: u64 = g.top(10, r, None).iter().map(|(_, c)| c).sum();
    assert_eq!(top_sum, sum);
}

#[test]
fn reopening_rebuilds_the_same_state_and_keeps_deduplicating() {
    let mut g = Group::with(SmOptions {
        keep_final_minutes: 1,
        ..SmOptions::default()
    });
    g.cmd(create_filter("us", "country = \"US\""));
    for m in 0..12i64 {
        let at = T0 + m * MIN;
        g.ingest(
            at,
            vec![
                click(&format!("a{m}"), "ad1", at),
                in_country(click(&format!("b{m}"), "ad2", at), "FR"),
            ],
        );
    }
    g.ingest(T0 + 12 * MIN, vec![click("late", "ad1", T0)]);
    let before = (
        g.digest(),
        g.top(5, all_time(), None),
        g.sm().reader().status().expect("status"),
    );
    let counts = (
        g.count("ad1", all_time(), Some("us")),
        g.count("ad2", all_time(), None),
    );
    g.reopen();
    let after = (
        g.digest(),
        g.top(5, all_time(), None),
        g.sm().reader().status().expect("status"),
    );
    assert_eq!(before, after);
    assert_eq!(
        counts,
        (
            g.count("ad1", all_time(), Some("us")),
            g.count("ad2", all_time(), None)
        )
    );
    let late = g
        .sm()
        .reader()
        .count(&ad("ad1"), all_time(), None)
        .expect("count")
        .late;
    assert_eq!(late, 1);
    // The dedup index came back: a retry of a live id is still a duplicate.
    assert_eq!(
        g.ingest(T0 + 12 * MIN, vec![click("a11", "ad1", T0 + 11 * MIN)]),
        [Outcome::Duplicate]
    );
}

#[test]
fn ids_stored_one_key_each_by_older_versions_still_deduplicate_and_expire() {
    let mut g = Group::new();
    g.ingest(T0, vec![click("new", "ad1", T0)]);
    g.sm = None;
    // What a version before dedup blocks left behind: one key per id.
    let keys = Keys::new(GROUP);
    let legacy = keys.dedup_id(Minute::of_ms(T0), b"old");
    {
        let db = open_db(&g.dir.path().join("db")).expect("open db");
        let cf = db.cf_handle(format::CF_NAME).expect("cf");
        db.put_cf(cf, &legacy, []).expect("put");
    }
    g.reopen();
    assert_eq!(
        g.ingest(T0, vec![click("old", "ad1", T0), click("new", "ad1", T0)]),
        [Outcome::Duplicate, Outcome::Duplicate]
    );
    // The watermark passes the minute: both layouts' ids expire from disk as well.
    g.ingest(T0 + 7 * MIN, vec![click("next", "ad1", T0 + 7 * MIN)]);
    g.sm = None;
    {
        let db = open_db(&g.dir.path().join("db")).expect("open db");
        let cf = db.cf_handle(format::CF_NAME).expect("cf");
        assert_eq!(db.get_cf(cf, &legacy).expect("get"), None);
        for t in [format::tag::DEDUP_IDS, format::tag::DEDUP] {
            let (a, b) = keys.dedup_all(t);
            let mut it = db.raw_iterator_cf(cf);
            it.seek(&a);
            let first = it.key().filter(|k| *k < b.as_slice()).map(|k| k.to_vec());
            let only_newest = first.is_none_or(|k| {
                t == format::tag::DEDUP
                    && format::parse_dedup_block_key(&keys, &k).map(|(m, _, _)| m)
                        == Ok(Minute::of_ms(T0 + 7 * MIN))
            });
            assert!(only_newest, "tag {t:#x}: an expired dedup key survived");
        }
    }
}

#[test]
fn wait_applied_returns_once_queries_see_the_index() {
    let mut g = Group::new();
    g.ingest(T0, vec![click("a", "ad1", T0)]);
    let reader = g.sm().reader();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let short = std::time::Duration::from_millis(20);
    assert_eq!(rt.block_on(reader.wait_applied(1, short)).ok(), Some(true));
    assert_eq!(rt.block_on(reader.wait_applied(2, short)).ok(), Some(false));
    let waiter = {
        let reader = reader.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let reached = rt.block_on(reader.wait_applied(2, std::time::Duration::from_secs(20)));
            // What the waiter is released to read must already include entry 2.
            let count = reader.count(&ad("ad1"), all_time(), None).expect("count");
            (reached.ok(), count.applied_index, count.count)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    g.ingest(T0, vec![click("b", "ad1", T0)]);
    assert_eq!(waiter.join().expect("waiter"), (Some(true), Some(2), 2));
    drop(reader);
    g.reopen();
    let reader = g.sm().reader();
    assert_eq!(
        rt.block_on(reader.wait_applied(2, short)).ok(),
        Some(true),
        "a reopened group publishes its applied index"
    );
}

#[test]
fn applying_through_openraft_tracks_applied_id_and_membership() {
    let mut g = Group::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sm = g.sm();
        assert_eq!(
            sm.applied_state().await.expect("state"),
            (None, StoredMembership::default())
        );
        let m = Membership::new_with_defaults(vec![[1u64, 2, 3].into_iter().collect()], []);
        let entries = vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Membership(m.clone()),
            },
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Blank,
            },
        ];
        let stream =
            futures::stream::iter(entries.into_iter().map(|e| Ok::<_, io::Error>((e, None))));
        sm.apply(stream).await.expect("apply");
        let (applied, membership) = sm.applied_state().await.expect("state");
        assert_eq!(applied, Some(log_id(2)));
        assert_eq!(membership, StoredMembership::new(Some(log_id(1)), m));
    });
    g.next = 3;
    g.reopen();
    assert_eq!(g.sm().applied(), Some(log_id(2)));
    assert_eq!(g.sm().membership().log_id(), &Some(log_id(1)));
}

fn populate(g: &mut Group) {
    g.cmd(create_filter("us", "country = \"US\""));
    for m in 0..15i64 {
        let at = T0 + m * MIN;
        let clicks = (0..(m % 3 + 1))
            .map(|k| {
                let c = click(&format!("p{m}-{k}"), &format!("ad{}", (m * k) % 4), at + k);
                if k == 1 {
                    in_country(c, "DE")
                } else {
                    c
                }
            })
            .collect();
        g.ingest(at, clicks);
    }
    g.ingest(T0 + 15 * MIN, vec![click("late", "ad0", T0)]);
}

#[test]
fn a_snapshot_installed_on_a_fresh_store_gives_the_same_digest_and_answers() {
    let mut a = Group::new();
    populate(&mut a);
    let b_dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        assert!(a
            .sm()
            .get_current_snapshot()
            .await
            .expect("current")
            .is_none());
        let mut builder = a
            .sm()
            .try_create_snapshot_builder(true)
            .await
            .expect("builder");
        let snap = builder.build_snapshot().await.expect("build");
        assert_eq!(snap.meta.last_log_id, a.sm().applied());
        let current = a
            .sm()
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(current.meta, snap.meta);

        // Ship the bytes as the network would: into an IncomingSnapshot on the receiver.
        let mut b = open(b_dir.path(), SmOptions::default());
        let mut incoming = IncomingSnapshot::create(b.snapshot_dir()).expect("incoming");
        let mut src = current.snapshot.into_file();
        io::copy(&mut src, &mut incoming).expect("copy");
        let received = incoming.finish().expect("finish");
        b.install_snapshot(&current.meta, received)
            .await
            .expect("install");
        assert_eq!(
            b.applied_state().await.expect("state"),
            a.sm().applied_state().await.expect("state")
        );
        let got = b
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("installed snapshot kept");
        assert_eq!(got.meta, current.meta);

        let (ra, rb) = (a.sm().reader(), b.reader());
        assert_eq!(ra.digest().expect("digest"), rb.digest().expect("digest"));
        assert_eq!(ra.status().expect("status"), rb.status().expect("status"));
        for n in [1, 3, 10] {
            assert_eq!(
                ra.top(n, all_time(), Some("us")).expect("top"),
                rb.top(n, all_time(), Some("us")).expect("top")
            );
        }
        for x in ["ad0", "ad1", "ad2", "ad3"] {
            assert_eq!(
                ra.count(&ad(x), all_time(), None).expect("c"),
                rb.count(&ad(x), all_time(), None).expect("c")
            );
        }
        // Both continue identically: the installed dedup index is live.
        let next = Entry {
            log_id: log_id(a.next),
            payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
                proposed_at_ms: T0 + 15 * MIN,
                clicks: vec![
                    click("p14-0", "ad0", T0 + 14 * MIN),
                    click("new", "ad3", T0 + 15 * MIN),
                ],
            })),
        };
        let out_a = a.sm().apply_entries([next.clone()]).expect("apply a");
        let out_b = b.apply_entries([next]).expect("apply b");
        assert_eq!(out_a, out_b);
        assert_eq!(
            out_a,
            [CommandResponse::Ingest(vec![
                Outcome::Duplicate,
                Outcome::Accepted
            ])]
        );
        assert_eq!(
            a.sm().reader().digest().expect("digest"),
            b.reader().digest().expect("digest")
        );
    });
}

#[test]
fn a_corrupt_snapshot_is_refused_and_the_state_is_unchanged() {
    let mut a = Group::new();
    populate(&mut a);
    let snap = a.sm().snapshot_builder().build_blocking().expect("build");
    let bytes = std::fs::read(snap.snapshot.path()).expect("read snapshot");

    let mut b = Group::new();
    b.ingest(T0, vec![click("own", "ad9", T0)]);
    let before = b.digest();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for at in [3, bytes.len() / 2, bytes.len() - 3] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let mut incoming = IncomingSnapshot::create(b.sm().snapshot_dir()).expect("incoming");
        io::Write::write_all(&mut incoming, &bad).expect("write");
        let file = incoming.finish().expect("finish");
        let err = rt
            .block_on(b.sm().install_snapshot(&snap.meta, file))
            .expect_err("corrupt snapshot installed");
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidData,
            "flip at {at}: {err}"
        );
        assert_eq!(b.digest(), before, "flip at {at} changed the state");
    }
    assert!(rt
        .block_on(b.sm().get_current_snapshot())
        .expect("current")
        .is_none());
    // A valid file whose header disagrees with the install request is refused too.
    let mut wrong = snap.meta.clone();
    wrong.last_log_id = Some(log_id(999));
    let file = SnapshotFile::open(snap.snapshot.path()).expect("open");
    let err = b
        .sm()
        .install_snapshot_file(&wrong, file)
        .expect_err("mismatched meta");
    assert!(err.is_corruption(), "{err}");
    assert_eq!(b.digest(), before);
}

#[test]
fn only_the_latest_snapshot_is_kept() {
    let mut g = Group::new();
    g.ingest(T0, vec![click("a", "ad1", T0)]);
    g.sm().snapshot_builder().build_blocking().expect("first");
    g.ingest(T0, vec![click("b", "ad1", T0)]);
    let second = g.sm().snapshot_builder().build_blocking().expect("second");
    let files: Vec<_> = std::fs::read_dir(g.sm().snapshot_dir())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files, [second.snapshot.path().to_path_buf()]);
    assert_eq!(second.meta.last_log_id, Some(log_id(2)));
}

#[test]
fn an_interrupted_install_is_wiped_on_open() {
    let mut g = Group::new();
    g.ingest(T0, vec![click("a", "ad1", T0)]);
    g.sm = None;
    {
        let db = open_db(&g.dir.path().join("db")).expect("db");
        let cf = db.cf_handle("sm").expect("cf");
        db.put_cf(cf, Keys::new(GROUP).meta(meta::INSTALLING), [])
            .expect("marker");
    }
    g.reopen();
    assert_eq!(g.sm().applied(), None);
    assert_eq!(g.digest().keys, 0);
}

#[test]
fn groups_sharing_a_database_do_not_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(&dir.path().join("db")).expect("db");
    let mut g1 =
        StateMachine::open(db.clone(), 1, dir.path().join("s1"), SmOptions::default()).expect("g1");
    let g2 = StateMachine::open(db, 2, dir.path().join("s2"), SmOptions::default()).expect("g2");
    let e = Entry {
        log_id: log_id(1),
        payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
            proposed_at_ms: T0,
            clicks: vec![click("a", "ad1", T0)],
        })),
    };
    g1.apply_entries([e]).expect("apply");
    assert_eq!(
        g1.reader()
            .count(&ad("ad1"), all_time(), None)
            .expect("c")
            .count,
        1
    );
    assert_eq!(
        g2.reader()
            .count(&ad("ad1"), all_time(), None)
            .expect("c")
            .count,
        0
    );
    assert_eq!(g2.reader().digest().expect("digest").keys, 0);
}

#[test]
fn answers_stay_consistent_with_their_applied_index_while_applying() {
    // Every entry i adds one counted click of `hot` and one late click of `cold`, and
    // moves event time by 20 s, so minutes keep leaving memory (nothing final is kept).
    // A concurrent reader must always see count == late == applied index.
    let mut g = Group::with(SmOptions {
        keep_final_minutes: 0,
        ..SmOptions::default()
    });
    let reader = g.sm().reader();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut checked = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let hot = reader
                    .count(&ad("hot"), all_time(), None)
                    .expect("count hot");
                let cold = reader
                    .count(&ad("cold"), all_time(), None)
                    .expect("count cold");
                let i = hot.applied_index.unwrap_or(0);
                assert_eq!((hot.count, hot.late), (i, 0), "hot at index {i}");
                if cold.applied_index == hot.applied_index {
                    assert_eq!((cold.count, cold.late), (0, i), "cold at index {i}");
                }
                let top = reader.top(1, all_time(), None).expect("top");
                let i = top.applied_index.unwrap_or(0);
                assert_eq!(
                    top.rows.first().map_or(0, |r| r.count),
                    i,
                    "top at index {i}"
                );
                checked += 1;
            }
            checked
        })
    };
    for i in 1..=600i64 {
        let at = T0 + i * 20_000;
        let out = g.ingest(
            at,
            vec![
                click(&format!("h{i}"), "hot", at),
                click(&format!("c{i}"), "cold", T0 - 60 * MIN),
            ],
        );
        assert_eq!(out, [Outcome::Accepted, Outcome::Late]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checked = checker.join().expect("checker saw an inconsistent answer");
    assert!(checked > 0);
    assert!(g.sm().reader().status().expect("status").memory_minutes < 10);
}
