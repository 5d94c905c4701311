//! Property tests of the conversions: no wire input can make them panic, whatever they
//! accept survives a roundtrip unchanged, and every valid domain value roundtrips.
//! proptest prints the failing input (and saves its seed under `proptest-regressions/`).

use std::net::IpAddr;

use proptest::prelude::*;

use super::{parse_timestamp_ms, TimeSpec, MAX_LAST_MINUTES, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::model::{AdId, Click, EventId};
use crate::wire;

/// Valid domain clicks: every field anywhere inside its limits.
fn valid_click() -> impl Strategy<Value = Click> {
    (
        proptest::collection::vec(any::<u8>(), 1..=64),
        "[A-Za-z0-9_.:-]{1,64}",
        1..=MAX_TIMESTAMP_MS,
        // At most 32 chars of at most 4 bytes: within user_id's 128-byte limit.
        ".{0,32}",
        any::<IpAddr>(),
        ".{0,16}",
    )
        .prop_map(
            |(event_id, ad_id, event_time_ms, user_id, ip, country)| Click {
                event_id: EventId::new(event_id).expect("1..=64 bytes"),
                ad_id: AdId::new(&ad_id).expect("generated from the alphabet"),
                event_time_ms,
                user_id,
                // The wire form of an IPv4-mapped address is its IPv4 form.
                ip: ip.to_canonical(),
                country,
            },
        )
}

/// Wire clicks of any shape: valid, nearly valid and garbage, field by field.
fn any_wire_click() -> impl Strategy<Value = wire::Click> {
    (
        proptest::collection::vec(any::<u8>(), 0..80),
        prop_oneof!["[A-Za-z0-9_.:-]{0,70}", ".{0,70}"],
        prop_oneof![any::<i64>(), -10i64..10, 1..=MAX_TIMESTAMP_MS],
        ".{0,140}",
        prop_oneof![
            any::<IpAddr>().prop_map(|ip| ip.to_string()),
            "[0-9a-fA-F:.%]{0,50}",
            ".{0,50}",
        ],
        ".{0,70}",
    )
        .prop_map(
            |(event_id, ad_id, event_time_ms, user_id, ip, country)| wire::Click {
                event_id: event_id.into(),
                ad_id,
                event_time_ms,
                user_id,
                ip,
                country,
            },
        )
}

proptest! {
    #[test]
    fn valid_domain_clicks_roundtrip(click in valid_click()) {
        let w = wire::Click::from(&click);
        prop_assert_eq!(Click::try_from(w), Ok(click));
    }

    #[test]
    fn wire_clicks_never_panic_and_accepted_ones_are_stable(w in any_wire_click()) {
        match Click::try_from(w) {
            Ok(click) => {
                let again = Click::try_from(wire::Click::from(&click));
                prop_assert_eq!(again, Ok(click));
            }
            Err(e) => {
                let field = e.field();
                prop_assert!(
                    ["event_id", "ad_id", "event_time_ms", "user_id", "ip", "country"]
                        .contains(&field),
                    "error names no click field: {}", e
                );
            }
        }
    }

    #[test]
    fn timestamp_parsing_never_panics(text in ".{0,40}") {
        if let Ok(ms) = parse_timestamp_ms("t", &text) {
            prop_assert!((MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms));
        }
    }

    #[test]
    fn epoch_milliseconds_roundtrip_through_text(ms in MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS) {
        prop_assert_eq!(parse_timestamp_ms("t", &ms.to_string()), Ok(ms));
        prop_assert_eq!(parse_timestamp_ms("t", &super::format_timestamp_ms(ms)), Ok(ms));
    }

    #[test]
    fn resolved_intervals_cover_every_requested_millisecond(
        from in MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS,
        len in 0i64..10_000_000,
        now in MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS,
    ) {
        let to = from.saturating_add(len).min(MAX_TIMESTAMP_MS);
        let range = TimeSpec::between(from, to)
            .and_then(|s| s.resolve(now))
            .expect("valid interval");
        if to > from {
            prop_assert!(range.from.start_ms() <= from && from - range.from.start_ms() < 60_000);
            prop_assert!(range.to.start_ms() >= to && range.to.start_ms() - to < 60_000);
        } else {
            prop_assert!(range.is_empty());
        }
    }

    #[test]
    fn any_wire_time_range_converts_or_errs(last in any::<u32>(), from in any::<i64>(), to in any::<i64>(), pick in any::<bool>()) {
        let range = if pick {
            wire::time_range::Range::LastMinutes(last)
        } else {
            wire::time_range::Range::Between(wire::Interval { from_ms: from, to_ms: to })
        };
        if let Ok(spec) = TimeSpec::try_from(wire::TimeRange { range: Some(range) }) {
            let resolved = spec.resolve(0).expect("validated spec resolves");
            prop_assert!(resolved.len() <= u64::try_from(MAX_TIMESTAMP_MS - MIN_TIMESTAMP_MS).unwrap_or(u64::MAX));
            if let TimeSpec::Last { minutes } = spec {
                prop_assert!((1..=MAX_LAST_MINUTES).contains(&minutes));
                prop_assert_eq!(resolved.len(), u64::from(minutes));
            }
        }
    }
}
