//! Codec tests: exact layouts for a few fixed values, round trips of arbitrary entries, and
//! decoding of arbitrary or mutated bytes (which must fail cleanly, never panic).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use adclick_proto::model::{AdId, Click, EventId};
use openraft::{BasicNode, EntryPayload, Membership};
use proptest::prelude::*;

use super::*;
use crate::types::{log_id, Command, Entry, FilterDef, GroupSettings, IngestBatch};

fn click(id: &str, ad: &str, t: i64) -> Click {
    Click {
        event_id: EventId::new(id.as_bytes().to_vec()).expect("valid event id"),
        ad_id: AdId::new(ad).expect("valid ad id"),
        event_time_ms: t,
        user_id: "user-1".into(),
        ip: "207.148.22.22".parse().expect("valid ip"),
        country: "USA".into(),
    }
}

fn encode(e: &Entry) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_entry(e, &mut buf);
    buf
}

#[test]
fn blank_entry_has_the_documented_layout() {
    let e = Entry {
        log_id: log_id(3, 1, 300),
        payload: EntryPayload::Blank,
    };
    // version, term, node, index (300 = 0xac 0x02), payload kind.
    assert_eq!(encode(&e), vec![1, 3, 1, 0xac, 0x02, 0]);
    assert_eq!(decode_entry(&encode(&e)), Ok(e));
}

#[test]
fn click_has_the_documented_layout() {
    let mut buf = Vec::new();
    let mut c = click("e1", "ad001", 1_000);
    c.user_id = "u".into();
    c.country = "FR".into();
    c.ip = "1.2.3.4".parse().expect("valid ip");
    encode_click(&c, &mut buf);
    let want: Vec<u8> = [
        &[1][..],                           // click format version
        &[2, b'e', b'1'],                   // event_id
        &[5, b'a', b'd', b'0', b'0', b'1'], // ad_id
        &[0xd0, 0x0f],                      // zigzag(1000) = 2000
        &[1, b'u'],                         // user_id
        &[4, 1, 2, 3, 4],                   // ipv4
        &[2, b'F', b'R'],                   // country
    ]
    .concat();
    assert_eq!(buf, want);
    assert_eq!(decode_click(&buf), Ok(c));
}

#[test]
fn a_typical_click_in_a_batch_takes_about_its_field_bytes() {
    let proposed = 1_720_483_201_000;
    let clicks: Vec<_> = (0..100)
        .map(|i| {
            click(
                &format!("0190a1b2-c3d4-7e5f-8a9b-{i:012}"),
                "ad001",
                proposed - 1_500,
            )
        })
        .collect();
    let e = Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
            proposed_at_ms: proposed,
            clicks,
        })),
    };
    let per_click = encode(&e).len() / 100;
    // 36-byte uuid + 5-byte ad + 6-byte user + 4-byte ip + 3-byte country = 54 bytes of data.
    assert!(per_click <= 54 + 8, "{per_click} bytes per click");
}

#[test]
fn unknown_versions_and_kinds_are_corruption() {
    let e = Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Normal(Command::DropFilter { name: "f".into() }),
    };
    let good = encode(&e);
    let mut bad = good.clone();
    bad[0] = 2;
    assert!(decode_entry(&bad)
        .expect_err("version 2")
        .reason
        .contains("version"));
    let mut bad = good.clone();
    bad[4] = 9;
    assert!(decode_entry(&bad)
        .expect_err("kind 9")
        .reason
        .contains("payload kind"));
    let mut bad = good.clone();
    bad[5] = 9;
    assert!(decode_entry(&bad)
        .expect_err("cmd 9")
        .reason
        .contains("command kind"));
    let mut bad = good;
    bad.push(0);
    assert!(decode_entry(&bad)
        .expect_err("trailing")
        .reason
        .contains("trailing"));
}

#[test]
fn decoded_clicks_are_validated_by_the_domain_constructors() {
    let mut buf = Vec::new();
    encode_click(&click("e1", "ad001", 5), &mut buf);
    // Replace a byte of the ad id by a space, outside its alphabet.
    let pos = buf.iter().position(|&b| b == b'a').expect("ad id present");
    buf[pos] = b' ';
    let err = decode_click(&buf).expect_err("bad ad id");
    assert_eq!(err.offset, pos - 1, "points at the ad id field");
    let err: crate::Error = err.into();
    assert!(err.is_corruption());
}

#[test]
fn invalid_memberships_are_refused() {
    // One config {1} but no node for voter 1.
    let bytes = [
        1, 1, 1, 0, 2, /* configs */ 1, 1, 1, /* nodes */ 0,
    ];
    let err = decode_entry(&bytes).expect_err("voter without node");
    assert!(err.reason.contains("membership"), "{err}");
}

#[test]
fn decode_log_id_reads_only_the_header() {
    let e = Entry {
        log_id: log_id(7, 2, 99),
        payload: EntryPayload::Normal(Command::Configure(GroupSettings::default())),
    };
    let bytes = encode(&e);
    assert_eq!(decode_log_id(&bytes), Ok(log_id(7, 2, 99)));
    assert_eq!(decode_log_id(&bytes[..4]), Ok(log_id(7, 2, 99)));
    assert!(decode_log_id(&bytes[..3]).is_err());
}

#[test]
fn entries_take_at_least_min_entry_len_and_their_log_id_fits_the_prefix() {
    let smallest = Entry {
        log_id: log_id(0, 0, 0),
        payload: EntryPayload::Blank,
    };
    assert_eq!(encode(&smallest).len(), MIN_ENTRY_LEN);
    let largest_id = log_id(u64::MAX, u64::MAX, u64::MAX);
    let bytes = encode(&Entry {
        log_id: largest_id,
        payload: EntryPayload::Blank,
    });
    assert_eq!(bytes.len(), MAX_LOG_ID_PREFIX_LEN + 1);
    assert_eq!(
        decode_log_id(&bytes[..MAX_LOG_ID_PREFIX_LEN]),
        Ok(largest_id)
    );
}

// ---- property tests ----

fn arb_event_id() -> impl Strategy<Value = EventId> {
    proptest::collection::vec(any::<u8>(), 1..=64)
        .prop_map(|b| EventId::new(b).expect("1..=64 bytes"))
}

fn arb_ad_id() -> impl Strategy<Value = AdId> {
    "[A-Za-z0-9_.:-]{1,64}".prop_map(|s| AdId::new(&s).expect("ad id alphabet"))
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// A string of at most `max` bytes (any Unicode, trimmed at a char boundary).
fn arb_text(max: usize) -> impl Strategy<Value = String> {
    any::<String>().prop_map(move |mut s| {
        while s.len() > max {
            s.pop();
        }
        s
    })
}

fn arb_click() -> impl Strategy<Value = Click> {
    (
        arb_event_id(),
        arb_ad_id(),
        any::<i64>(),
        arb_text(128),
        arb_ip(),
        arb_text(64),
    )
        .prop_map(
            |(event_id, ad_id, event_time_ms, user_id, ip, country)| Click {
                event_id,
                ad_id,
                event_time_ms,
                user_id,
                ip,
                country,
            },
        )
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<i64>(), proptest::collection::vec(arb_click(), 0..8)).prop_map(
            |(proposed_at_ms, clicks)| {
                Command::Ingest(IngestBatch {
                    proposed_at_ms,
                    clicks,
                })
            }
        ),
        (any::<i64>(), any::<i64>()).prop_map(|(a, b)| Command::Configure(GroupSettings {
            allowed_lateness_ms: a,
            max_future_skew_ms: b,
        })),
        (any::<String>(), any::<String>())
            .prop_map(|(name, expr)| Command::CreateFilter(FilterDef { name, expr })),
        any::<String>().prop_map(|name| Command::DropFilter { name }),
    ]
}

fn arb_membership() -> impl Strategy<Value = Membership<u64, BasicNode>> {
    (
        proptest::collection::vec(proptest::collection::btree_set(any::<u64>(), 1..5), 0..3),
        proptest::collection::btree_map(any::<u64>(), "[a-z0-9.:]{0,20}", 0..4),
    )
        .prop_map(
            |(configs, learners): (Vec<BTreeSet<u64>>, BTreeMap<u64, String>)| {
                let mut nodes: BTreeMap<u64, BasicNode> = learners
                    .into_iter()
                    .map(|(id, addr)| (id, BasicNode { addr }))
                    .collect();
                for id in configs.iter().flatten() {
                    nodes
                        .entry(*id)
                        .or_insert_with(|| BasicNode::new(format!("n{id}")));
                }
                Membership::new(configs, nodes).expect("every voter has a node")
            },
        )
}

pub(crate) fn arb_entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        arb_command().prop_map(EntryPayload::Normal),
        arb_membership().prop_map(EntryPayload::Membership),
    ];
    (any::<u64>(), any::<u64>(), any::<u64>(), payload).prop_map(|(t, n, i, payload)| Entry {
        log_id: log_id(t, n, i),
        payload,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_entry_roundtrips(e in arb_entry()) {
        let bytes = encode(&e);
        prop_assert_eq!(decode_log_id(&bytes), Ok(e.log_id));
        prop_assert_eq!(decode_entry(&bytes), Ok(e));
    }

    #[test]
    fn any_click_roundtrips_standalone(c in arb_click()) {
        let mut buf = Vec::new();
        encode_click(&c, &mut buf);
        prop_assert_eq!(decode_click(&buf), Ok(c));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_entry(&bytes);
        let _ = decode_log_id(&bytes);
        let _ = decode_click(&bytes);
        let _ = decode_command(&bytes);
    }

    #[test]
    fn mutated_or_truncated_entries_never_panic(
        e in arb_entry(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let bytes = encode(&e);
        let _ = decode_entry(&bytes[..cut.index(bytes.len() + 1)]);
        let mut bad = bytes;
        for (at, x) in flips {
            let i = at.index(bad.len());
            bad[i] ^= x;
        }
        let _ = decode_entry(&bad);
    }
}
