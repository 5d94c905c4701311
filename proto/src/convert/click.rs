//! [`wire::Click`] <-> [`Click`]: the edge check every ingested click passes.
//!
//! Wire -> domain checks, in field order, and reports the first failure:
//! - `event_id`: 1 to 64 bytes ([`EventId::new`]);
//! - `ad_id`: 1 to 64 bytes of `[A-Za-z0-9_.:-]` ([`AdId::from_bytes`]);
//! - `event_time_ms`: set (not 0), not before the epoch, not after 9999-12-31;
//! - `ip`: present, a literal IPv4 or IPv6 address without zone or port. An IPv4-mapped
//!   IPv6 address (`::ffff:1.2.3.4`) becomes its IPv4 form, so one client counts the same
//!   under a filter whichever way its proxy wrote the address;
//! - `user_id`: at most 128 bytes; `country`: at most 64 bytes ([`Click::validate`]).
//!
//! `event_time_ms == 0` is refused rather than counted in 1970 because it is what a
//! producer that forgot the field sends: proto3 cannot tell "unset" from 0, and a silent
//! `late` would hide the bug. Domain -> wire is lossless, so a domain click that passes
//! these checks roundtrips unchanged.

use std::net::IpAddr;

use super::timestamp::{quoted, MAX_TIMESTAMP_MS};
use crate::model::{check_len, AdId, Click, EventId, InvalidInput};
use crate::wire;

/// Longest accepted `ip` text: a full IPv6 address with an IPv4 tail
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`) is 45 characters.
pub const MAX_IP_TEXT_LEN: usize = 45;

impl TryFrom<wire::Click> for Click {
    type Error = InvalidInput;

    fn try_from(w: wire::Click) -> Result<Self, InvalidInput> {
        let event_id = EventId::new(w.event_id)?;
        // `String` -> `Bytes` reuses the allocation: no copy of the id.
        let ad_id = AdId::try_from(w.ad_id)?;
        let event_time_ms = check_event_time(w.event_time_ms)?;
        let click = Click {
            event_id,
            ad_id,
            event_time_ms,
            ip: parse_ip(&w.ip)?,
            user_id: w.user_id,
            country: w.country,
        };
        click.validate()?;
        Ok(click)
    }
}

impl TryFrom<&wire::Click> for Click {
    type Error = InvalidInput;

    fn try_from(w: &wire::Click) -> Result<Self, InvalidInput> {
        Click::try_from(w.clone())
    }
}

impl From<&Click> for wire::Click {
    fn from(c: &Click) -> Self {
        wire::Click::from(c.clone())
    }
}

impl From<Click> for wire::Click {
    fn from(c: Click) -> Self {
        wire::Click {
            event_id: c.event_id.to_bytes(),
            ad_id: c.ad_id.as_str().to_owned(),
            event_time_ms: c.event_time_ms,
            ip: c.ip.to_string(),
            user_id: c.user_id,
            country: c.country,
        }
    }
}

fn check_event_time(ms: i64) -> Result<i64, InvalidInput> {
    const FIELD: &str = "event_time_ms";
    match ms {
        0 => Err(InvalidInput::Missing { field: FIELD }),
        ..0 => Err(InvalidInput::Malformed {
            field: FIELD,
            reason: format!("{ms} is before 1970-01-01T00:00:00Z"),
        }),
        _ if ms > MAX_TIMESTAMP_MS => Err(InvalidInput::Malformed {
            field: FIELD,
            reason: format!("{ms} is after 9999-12-31T23:59:59.999Z"),
        }),
        _ => Ok(ms),
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, InvalidInput> {
    const FIELD: &str = "ip";
    check_len(FIELD, text.len(), MAX_IP_TEXT_LEN)?;
    text.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| InvalidInput::Malformed {
            field: FIELD,
            reason: format!("{} is not an IPv4 or IPv6 address", quoted(text)),
        })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use bytes::Bytes;

    use super::*;

    fn seed_click() -> wire::Click {
        // The seed line `[AdClickEvent] ad001, 2024-07-09 00:00:01, user-1, 207.148.22.22, USA`.
        wire::Click {
            event_id: Bytes::from_static(b"seed-0"),
            ad_id: "ad001".into(),
            event_time_ms: 1_720_483_201_000,
            user_id: "user-1".into(),
            ip: "207.148.22.22".into(),
            country: "USA".into(),
        }
    }

    fn reject(edit: impl FnOnce(&mut wire::Click)) -> String {
        let mut w = seed_click();
        edit(&mut w);
        Click::try_from(w).expect_err("invalid click").to_string()
    }

    #[test]
    fn a_valid_click_roundtrips() {
        let click = Click::try_from(seed_click()).expect("valid");
        assert_eq!(click.ad_id.as_str(), "ad001");
        assert_eq!(click.ip, IpAddr::V4(Ipv4Addr::new(207, 148, 22, 22)));
        assert_eq!(wire::Click::from(&click), seed_click());
        assert_eq!(wire::Click::from(click), seed_click());
    }

    #[test]
    fn ipv6_is_accepted_and_ipv4_mapped_becomes_ipv4() {
        let mut w = seed_click();
        w.ip = "2001:DB8::1".into();
        let click = Click::try_from(&w).expect("valid v6");
        assert_eq!(
            click.ip,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
        );
        assert_eq!(wire::Click::from(&click).ip, "2001:db8::1");

        w.ip = "::ffff:207.148.22.22".into();
        let click = Click::try_from(w).expect("valid mapped");
        assert_eq!(click.ip, IpAddr::V4(Ipv4Addr::new(207, 148, 22, 22)));
    }

    #[test]
    fn event_id_must_be_one_to_sixty_four_bytes() {
        assert_eq!(
            reject(|w| w.event_id = Bytes::new()),
            "event_id is required"
        );
        assert_eq!(
            reject(|w| w.event_id = Bytes::from(vec![7u8; 65])),
            "event_id is 65 bytes, longer than the limit of 64"
        );
    }

    #[test]
    fn ad_id_must_use_its_alphabet() {
        assert_eq!(reject(|w| w.ad_id.clear()), "ad_id is required");
        assert_eq!(
            reject(|w| w.ad_id = "ad 001".into()),
            "ad_id contains ' ', outside [A-Za-z0-9_.:-]"
        );
        assert_eq!(
            reject(|w| w.ad_id = "ad\u{e9}".into()),
            "ad_id contains '\u{c3}', outside [A-Za-z0-9_.:-]"
        );
        assert_eq!(
            reject(|w| w.ad_id = "a".repeat(65)),
            "ad_id is 65 bytes, longer than the limit of 64"
        );
    }

    #[test]
    fn event_time_must_be_set_and_plausible() {
        assert_eq!(reject(|w| w.event_time_ms = 0), "event_time_ms is required");
        assert_eq!(
            reject(|w| w.event_time_ms = -5),
            "event_time_ms: -5 is before 1970-01-01T00:00:00Z"
        );
        assert_eq!(
            reject(|w| w.event_time_ms = i64::MAX),
            format!(
                "event_time_ms: {} is after 9999-12-31T23:59:59.999Z",
                i64::MAX
            )
        );
    }

    #[test]
    fn ip_must_be_a_literal_address() {
        assert_eq!(reject(|w| w.ip.clear()), "ip is required");
        assert_eq!(
            reject(|w| w.ip = "1.2.3".into()),
            "ip: \"1.2.3\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            reject(|w| w.ip = "1.2.3.4:80".into()),
            "ip: \"1.2.3.4:80\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            reject(|w| w.ip = " 1.2.3.4".into()),
            "ip: \" 1.2.3.4\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            reject(|w| w.ip = "f".repeat(46)),
            "ip is 46 bytes, longer than the limit of 45"
        );
    }

    #[test]
    fn free_text_fields_have_limits() {
        assert_eq!(
            reject(|w| w.user_id = "u".repeat(129)),
            "user_id is 129 bytes, longer than the limit of 128"
        );
        assert_eq!(
            reject(|w| w.country = "c".repeat(65)),
            "country is 65 bytes, longer than the limit of 64"
        );
        let mut w = seed_click();
        w.user_id.clear();
        w.country.clear();
        assert!(
            Click::try_from(w).is_ok(),
            "user_id and country may be empty"
        );
    }

    #[test]
    fn the_first_invalid_field_is_reported() {
        let err = reject(|w| {
            w.ad_id.clear();
            w.ip.clear();
        });
        assert_eq!(err, "ad_id is required");
    }
}
