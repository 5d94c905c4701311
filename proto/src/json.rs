//! The JSON form of a click, shared by `POST /clicks` and `adclick ingest --format jsonl`
//! (feature `json`).
//!
//! A click object has `event_id` (text), `ad_id`, `timestamp` (epoch milliseconds as a
//! JSON integer, or a string: RFC 3339 or epoch milliseconds), `ip`, and optionally
//! `user_id` and `country` (absent or `null` mean empty). Any other key, a missing key or
//! a value of the wrong JSON type is a shape error ([`parse_line`]'s `Err`); a value of
//! the right type that breaks a rule (a `timestamp` text that does not parse) is kept as
//! the click's own error, so the caller can reject that click and go on with the rest.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::convert::parse_timestamp_ms;
use crate::model::InvalidInput;
use crate::wire;

/// Parses one line of NDJSON as a click object. `Err` is a shape error, worded for a
/// person and ending with the column when serde_json knows it; `Ok(Err)` a click whose
/// `timestamp` text did not parse.
pub fn parse_line(line: &[u8]) -> Result<Result<wire::Click, InvalidInput>, String> {
    match serde_json::from_slice::<ClickObject>(line) {
        Ok(c) => Ok(c.into_wire()),
        Err(e) => {
            let (message, _, column) = without_position(&e);
            Err(if column > 0 {
                format!("{message} (column {column})")
            } else {
                message
            })
        }
    }
}

/// A serde_json error's message without the ` at line L column C` it appends, and L, C.
pub fn without_position(e: &serde_json::Error) -> (String, usize, usize) {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
    (message, e.line(), e.column())
}

/// The fields of a click object (see the module docs). Deserialize it through
/// [`ClickObject`], which refuses every JSON shape but an object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a click object")]
struct ClickJson {
    event_id: String,
    ad_id: String,
    timestamp: Timestamp,
    ip: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    country: Option<String>,
}

impl ClickObject {
    /// The wire click, or the error of a value that did not parse (a `timestamp` text),
    /// which the click is to be rejected for. Values are not validated further here: the
    /// proposing node (or [`crate::model::Click`]'s conversion) does that.
    pub fn into_wire(self) -> Result<wire::Click, InvalidInput> {
        let c = self.0;
        Ok(wire::Click {
            event_id: Bytes::from(c.event_id.into_bytes()),
            ad_id: c.ad_id,
            event_time_ms: c.timestamp.0?,
            user_id: c.user_id.unwrap_or_default(),
            ip: c.ip,
            country: c.country.unwrap_or_default(),
        })
    }
}

/// A [`ClickJson`] that must be a JSON object: serde's derived impls would also take a
/// JSON array of the values in field order, which no producer means.
pub struct ClickObject(ClickJson);

impl<'de> Deserialize<'de> for ClickObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClickObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a click object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ClickObject, A::Error> {
                ClickJson::deserialize(de::value::MapAccessDeserializer::new(map)).map(ClickObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// A click's `timestamp`: epoch ms (a JSON integer) or a string, RFC 3339 or epoch ms.
/// A string that does not parse is kept as the click's error, not the body's.
#[derive(Debug)]
struct Timestamp(Result<i64, InvalidInput>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds (an integer) or an RFC 3339 date-time string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(Ok(v)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(i64::try_from(v).map_err(|_| {
                    InvalidInput::Malformed {
                        field: "timestamp",
                        reason: format!("{v} is out of range"),
                    }
                })))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Ok(Timestamp(parse_timestamp_ms("timestamp", v)))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_parses_to_a_wire_click() {
        let line = br#"{"event_id":"e-1","ad_id":"ad001","timestamp":"2024-07-09T00:00:01Z","ip":"1.2.3.4","country":"USA"}"#;
        let c = parse_line(line).expect("shape").expect("values");
        assert_eq!(&c.event_id[..], b"e-1");
        assert_eq!(c.ad_id, "ad001");
        assert_eq!(c.event_time_ms, 1_720_483_201_000);
        assert_eq!(c.user_id, "");
        assert_eq!(c.country, "USA");
    }

    #[test]
    fn a_bad_timestamp_text_is_the_clicks_error_not_the_lines() {
        let line = br#"{"event_id":"e","ad_id":"a","timestamp":"yesterday","ip":"::1"}"#;
        let err = parse_line(line).expect("shape").expect_err("value");
        assert_eq!(err.field(), "timestamp");
    }

    #[test]
    fn shape_errors_name_the_problem_and_column() {
        let err = parse_line(br#"{"event_id":"e","ad_id":"a","timestamp":1,"ip":"::1","x":1}"#)
            .expect_err("unknown key");
        assert!(err.contains("unknown field `x`"), "{err}");
        assert!(err.contains("(column "), "{err}");
        let err = parse_line(br#"["e","a",1,"::1"]"#).expect_err("an array is not a click");
        assert!(err.contains("a click object"), "{err}");
        let err = parse_line(br#"{"event_id":"e","ad_id":"a","ip":"::1"}"#).expect_err("missing");
        assert!(err.contains("missing field `timestamp`"), "{err}");
    }
}
