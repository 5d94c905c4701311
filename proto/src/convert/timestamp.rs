//! Timestamps as people and scripts type them: RFC 3339 (`2024-07-09T00:00:01Z`,
//! `2024-07-09T02:00:01.250+02:00`) or milliseconds since the Unix epoch
//! (`1720483201000`). HTTP query parameters and CLI flags go through
//! [`parse_timestamp_ms`]; [`format_timestamp_ms`] prints the RFC 3339 form back.
//!
//! Every accepted timestamp lies in the years 0000 to 9999, the range RFC 3339 can
//! write, whichever form it came in. That bound is what lets range arithmetic
//! (minute rounding, `last M minutes`) run without overflow checks downstream.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::model::InvalidInput;

/// The earliest accepted timestamp: 0000-01-01T00:00:00Z, in ms since the epoch.
pub const MIN_TIMESTAMP_MS: i64 = -62_167_219_200_000;
/// The latest accepted timestamp: 9999-12-31T23:59:59.999Z, in ms since the epoch.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

const NANOS_PER_MS: i128 = 1_000_000;

/// Parses `text` as epoch milliseconds (an optionally negative integer) or as an RFC 3339
/// date-time with an offset, into ms since the epoch (UTC). Sub-millisecond digits are
/// truncated towards the past. `field` names the parameter in the error, e.g. `"from"`.
pub fn parse_timestamp_ms(field: &'static str, text: &str) -> Result<i64, InvalidInput> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InvalidInput::Missing { field });
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let ms = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>().map_err(|_| InvalidInput::Malformed {
            field,
            reason: format!("{} is out of range", quoted(text)),
        })?
    } else {
        let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| InvalidInput::Malformed {
            field,
            reason: format!(
                "{} is neither epoch milliseconds nor an RFC 3339 date-time \
                 (e.g. 2024-07-09T00:00:01Z): {e}",
                quoted(text)
            ),
        })?;
        // The parser only yields years 0000..=9999, so this always fits in an i64.
        i64::try_from(t.unix_timestamp_nanos().div_euclid(NANOS_PER_MS)).map_err(|_| {
            InvalidInput::Malformed {
                field,
                reason: format!("{} is out of range", quoted(text)),
            }
        })?
    };
    check_timestamp_ms(field, ms)
}

/// Checks that `ms` lies in [`MIN_TIMESTAMP_MS`]..=[`MAX_TIMESTAMP_MS`].
pub(crate) fn check_timestamp_ms(field: &'static str, ms: i64) -> Result<i64, InvalidInput> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(InvalidInput::Malformed {
            field,
            reason: format!("{ms} ms is outside the years 0000 to 9999"),
        })
    }
}

/// Formats ms since the epoch as RFC 3339 in UTC (`2024-07-09T00:00:01Z`, with a
/// fraction only when the milliseconds are not zero). Values outside the RFC 3339 years
/// print as the plain number, so this never fails.
pub fn format_timestamp_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * NANOS_PER_MS)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Quotes user text for an error message, cut to a readable length so a megabyte of
/// garbage does not come back in the error.
pub(crate) fn quoted(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<i64, InvalidInput> {
        parse_timestamp_ms("from", text)
    }

    #[test]
    fn epoch_milliseconds_parse_as_is() {
        assert_eq!(parse("1720483201000"), Ok(1_720_483_201_000));
        assert_eq!(parse(" 0 "), Ok(0));
        assert_eq!(parse("-60000"), Ok(-60_000));
    }

    #[test]
    fn rfc3339_parses_to_utc_milliseconds() {
        assert_eq!(parse("2024-07-09T00:00:01Z"), Ok(1_720_483_201_000));
        assert_eq!(parse("2024-07-09T02:00:01+02:00"), Ok(1_720_483_201_000));
        assert_eq!(parse("2024-07-09T00:00:01.2509Z"), Ok(1_720_483_201_250));
        assert_eq!(parse("1969-12-31T23:59:59.9995Z"), Ok(-1));
    }

    #[test]
    fn the_bounds_are_the_rfc3339_years() {
        assert_eq!(parse("0000-01-01T00:00:00Z"), Ok(MIN_TIMESTAMP_MS));
        assert_eq!(parse("9999-12-31T23:59:59.999Z"), Ok(MAX_TIMESTAMP_MS));
        assert_eq!(parse(&MAX_TIMESTAMP_MS.to_string()), Ok(MAX_TIMESTAMP_MS));
        let err = parse(&(MAX_TIMESTAMP_MS + 1).to_string()).expect_err("past 9999");
        assert_eq!(
            err.to_string(),
            "from: 253402300800000 ms is outside the years 0000 to 9999"
        );
    }

    #[test]
    fn garbage_is_refused_with_the_field_name() {
        assert_eq!(parse("  "), Err(InvalidInput::Missing { field: "from" }));
        let err = parse("yesterday").expect_err("not a timestamp");
        assert!(
            err.to_string().starts_with(
                "from: \"yesterday\" is neither epoch milliseconds nor an RFC 3339 date-time"
            ),
            "{err}"
        );
        assert!(parse("2024-07-09 00:00:01").is_err(), "no offset, no T");
        assert!(parse("-").is_err());
        assert_eq!(
            parse("99999999999999999999").map_err(|e| e.to_string()),
            Err("from: \"99999999999999999999\" is out of range".to_owned())
        );
    }

    #[test]
    fn formatting_roundtrips_through_parsing() {
        assert_eq!(
            format_timestamp_ms(1_720_483_201_000),
            "2024-07-09T00:00:01Z"
        );
        assert_eq!(
            format_timestamp_ms(1_720_483_201_250),
            "2024-07-09T00:00:01.25Z"
        );
        for ms in [0, -1, 1_720_483_201_250, MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS] {
            assert_eq!(parse(&format_timestamp_ms(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(format_timestamp_ms(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn long_input_is_cut_in_messages() {
        let err = parse(&"x".repeat(10_000)).expect_err("garbage");
        assert!(err.to_string().len() < 300, "{err}");
    }
}
