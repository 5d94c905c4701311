//! Helpers shared by the state machine's integration tests: a fixed clock, log ids of
//! one leader, and clicks built from a few fields.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, Ipv4Addr};

use adclick_proto::model::{AdId, Click, EventId, Minute, MinuteRange};
use adclick_storage::types::LogId;

/// One minute in milliseconds.
pub const MIN: i64 = 60_000;
/// A fixed "now": 2024-07-09T00:00Z.
pub const T0: i64 = 1_720_483_200_000;
/// The group the tests' state lives under.
pub const GROUP: u64 = 3;

/// The log id of entry `index` of term 1, proposed by node 1.
pub fn log_id(index: u64) -> LogId {
    adclick_storage::types::log_id(1, 1, index)
}

/// A click of ad `ad` at time `t`, with id `id` and fixed attributes.
pub fn click(id: &str, ad: &str, t: i64) -> Click {
    Click {
        event_id: EventId::new(id.as_bytes().to_vec()).expect("valid event id"),
        ad_id: AdId::new(ad).expect("valid ad id"),
        event_time_ms: t,
        user_id: "user-1".into(),
        ip: IpAddr::V4(Ipv4Addr::new(207, 148, 22, 22)),
        country: "US".into(),
    }
}

/// Every minute from the epoch to the end of representable time.
pub fn all_time() -> MinuteRange {
    MinuteRange::new(Minute(0), Minute(i64::MAX / MIN)).expect("valid range")
}
