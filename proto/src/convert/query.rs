//! Count and top queries: [`wire::CountRequest`] / [`wire::TopRequest`] <-> the validated
//! [`CountQuery`] / [`TopQuery`], [`ReadConsistency`], and [`AdCount`] <->
//! [`wire::AdCount`]. Filter names follow [`FilterName`]'s rule.
//!
//! HTTP and the CLI build the same query structs from their own parameters (with
//! [`TimeSpec`] and [`super::parse_timestamp_ms`]), so every surface applies the same
//! rules. The range stays unresolved here: "last M minutes" is resolved by the node that
//! serves the query, against its own clock.

use crate::filter::FilterName;
use crate::model::{AdCount, AdId, InvalidInput};
use crate::wire;

use super::range::TimeSpec;

/// Rows returned by a top query that does not say how many.
pub const DEFAULT_TOP_N: u32 = 10;
/// The most rows a top query may ask for. Every data group sends its local top N to the
/// coordinator, so N bounds the fan-in of each query.
pub const MAX_TOP_N: u32 = 1000;

/// How fresh a read must be (`Consistency` on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ReadConsistency {
    /// Confirmed by the group leader: reflects every write acknowledged before the query.
    #[default]
    Linearizable,
    /// From any replica's applied state: may miss recent writes.
    Stale,
}

/// A validated count query: clicks of one ad over a range, optionally under a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountQuery {
    /// The ad.
    pub ad_id: AdId,
    /// The range, not yet resolved to minutes.
    pub range: TimeSpec,
    /// A registered filter's name, or `None` for all clicks.
    pub filter: Option<FilterName>,
    /// Linearizable or stale.
    pub consistency: ReadConsistency,
}

/// A validated top-N query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopQuery {
    /// How many rows, 1..=[`MAX_TOP_N`].
    pub n: u32,
    /// The range, not yet resolved to minutes.
    pub range: TimeSpec,
    /// A registered filter's name, or `None` for all clicks.
    pub filter: Option<FilterName>,
    /// Linearizable or stale.
    pub consistency: ReadConsistency,
}

impl CountQuery {
    /// A linearizable count of `ad_id`'s clicks over `range`, with no filter.
    pub fn new(ad_id: AdId, range: TimeSpec) -> Self {
        CountQuery {
            ad_id,
            range,
            filter: None,
            consistency: ReadConsistency::Linearizable,
        }
    }
}

impl TopQuery {
    /// A linearizable top-`n` over `range`, with no filter. `n` must be 1 to
    /// [`MAX_TOP_N`]; [`TopQuery::validate`] checks it.
    pub fn new(n: u32, range: TimeSpec) -> Self {
        TopQuery {
            n,
            range,
            filter: None,
            consistency: ReadConsistency::Linearizable,
        }
    }

    /// Checks `n` and the range, for a value built from its public fields.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.n == 0 || self.n > MAX_TOP_N {
            return Err(InvalidInput::Malformed {
                field: "n",
                reason: format!("{} is outside 1 to {MAX_TOP_N}", self.n),
            });
        }
        self.range.validate().map(|_| ())
    }
}

/// The optional `filter` field of a query: empty means none. The name rule is
/// [`FilterName`]'s; the error is renamed to the field it came from.
fn optional_filter(name: String) -> Result<Option<FilterName>, InvalidInput> {
    if name.is_empty() {
        return Ok(None);
    }
    FilterName::new(&name)
        .map(Some)
        .map_err(|e| e.with_field("filter"))
}

impl TryFrom<i32> for ReadConsistency {
    type Error = InvalidInput;

    /// From the raw enum field, refusing values this version does not know (a newer
    /// client's stronger mode must not silently become a weaker one).
    fn try_from(value: i32) -> Result<Self, InvalidInput> {
        match wire::Consistency::try_from(value) {
            Ok(wire::Consistency::Linearizable) => Ok(ReadConsistency::Linearizable),
            Ok(wire::Consistency::Stale) => Ok(ReadConsistency::Stale),
            Err(_) => Err(InvalidInput::Malformed {
                field: "consistency",
                reason: format!("unknown value {value}"),
            }),
        }
    }
}

impl From<ReadConsistency> for wire::Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => wire::Consistency::Linearizable,
            ReadConsistency::Stale => wire::Consistency::Stale,
        }
    }
}

impl TryFrom<wire::CountRequest> for CountQuery {
    type Error = InvalidInput;

    fn try_from(w: wire::CountRequest) -> Result<Self, InvalidInput> {
        Ok(CountQuery {
            ad_id: AdId::try_from(w.ad_id)?,
            range: TimeSpec::try_from(w.range)?,
            filter: optional_filter(w.filter)?,
            consistency: ReadConsistency::try_from(w.consistency)?,
        })
    }
}

impl From<CountQuery> for wire::CountRequest {
    fn from(q: CountQuery) -> Self {
        wire::CountRequest {
            ad_id: q.ad_id.as_str().to_owned(),
            range: Some(q.range.into()),
            filter: q.filter.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            consistency: wire::Consistency::from(q.consistency).into(),
        }
    }
}

impl TryFrom<wire::TopRequest> for TopQuery {
    type Error = InvalidInput;

    /// `n == 0` means [`DEFAULT_TOP_N`]; more than [`MAX_TOP_N`] is an error.
    fn try_from(w: wire::TopRequest) -> Result<Self, InvalidInput> {
        let n = match w.n {
            0 => DEFAULT_TOP_N,
            n if n > MAX_TOP_N => {
                return Err(InvalidInput::Malformed {
                    field: "n",
                    reason: format!("{n} is more than the limit of {MAX_TOP_N}"),
                })
            }
            n => n,
        };
        Ok(TopQuery {
            n,
            range: TimeSpec::try_from(w.range)?,
            filter: optional_filter(w.filter)?,
            consistency: ReadConsistency::try_from(w.consistency)?,
        })
    }
}

impl From<TopQuery> for wire::TopRequest {
    fn from(q: TopQuery) -> Self {
        wire::TopRequest {
            n: q.n,
            range: Some(q.range.into()),
            filter: q.filter.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            consistency: wire::Consistency::from(q.consistency).into(),
        }
    }
}

impl From<&AdCount> for wire::AdCount {
    fn from(row: &AdCount) -> Self {
        wire::AdCount {
            ad_id: row.ad_id.as_str().to_owned(),
            count: row.count,
        }
    }
}

impl From<AdCount> for wire::AdCount {
    fn from(row: AdCount) -> Self {
        wire::AdCount::from(&row)
    }
}

impl TryFrom<wire::AdCount> for AdCount {
    type Error = InvalidInput;

    fn try_from(w: wire::AdCount) -> Result<Self, InvalidInput> {
        Ok(AdCount {
            ad_id: AdId::try_from(w.ad_id)?,
            count: w.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_request() -> wire::CountRequest {
        wire::CountRequest {
            ad_id: "ad001".into(),
            range: Some(TimeSpec::last(60).expect("valid").into()),
            filter: "usa".into(),
            consistency: wire::Consistency::Stale.into(),
        }
    }

    fn top_request() -> wire::TopRequest {
        wire::TopRequest {
            n: 5,
            range: Some(
                TimeSpec::between(1_720_483_200_000, 1_720_486_800_000)
                    .expect("valid")
                    .into(),
            ),
            filter: String::new(),
            consistency: wire::Consistency::Linearizable.into(),
        }
    }

    #[test]
    fn count_requests_roundtrip() {
        let q = CountQuery::try_from(count_request()).expect("valid");
        assert_eq!(q.ad_id.as_str(), "ad001");
        assert_eq!(q.range, TimeSpec::Last { minutes: 60 });
        assert_eq!(q.filter.as_ref().map(FilterName::as_str), Some("usa"));
        assert_eq!(q.consistency, ReadConsistency::Stale);
        assert_eq!(wire::CountRequest::from(q), count_request());
    }

    #[test]
    fn top_requests_roundtrip() {
        let q = TopQuery::try_from(top_request()).expect("valid");
        assert_eq!((q.n, q.filter.as_ref()), (5, None));
        assert_eq!(q.consistency, ReadConsistency::Linearizable);
        assert_eq!(wire::TopRequest::from(q), top_request());
    }

    #[test]
    fn count_requests_are_validated_field_by_field() {
        let err = |edit: fn(&mut wire::CountRequest)| {
            let mut w = count_request();
            edit(&mut w);
            CountQuery::try_from(w).expect_err("invalid").to_string()
        };
        assert_eq!(err(|w| w.ad_id.clear()), "ad_id is required");
        assert_eq!(err(|w| w.range = None), "range is required");
        assert!(err(|w| w.filter = "us a".into()).starts_with("filter: "));
        assert_eq!(err(|w| w.consistency = 7), "consistency: unknown value 7");
    }

    #[test]
    fn top_n_defaults_to_ten_and_is_bounded() {
        let mut w = top_request();
        w.n = 0;
        assert_eq!(
            TopQuery::try_from(w.clone()).expect("valid").n,
            DEFAULT_TOP_N
        );
        w.n = MAX_TOP_N;
        assert!(TopQuery::try_from(w.clone()).is_ok());
        w.n = MAX_TOP_N + 1;
        assert_eq!(
            TopQuery::try_from(w).expect_err("too many").to_string(),
            "n: 1001 is more than the limit of 1000"
        );
    }

    #[test]
    fn filter_errors_name_the_filter_field() {
        let err = |name: &str| {
            let mut w = count_request();
            w.filter = name.into();
            CountQuery::try_from(w)
                .map(|q| q.filter)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            err("us_private-2.v1"),
            Ok(Some(FilterName::new("us_private-2.v1").expect("valid")))
        );
        assert_eq!(err(""), Ok(None), "empty means no filter");
        assert_eq!(
            err(&"f".repeat(65)),
            Err("filter is 65 bytes, longer than the limit of 64".to_owned())
        );
        let bad = err("us a").expect_err("space");
        assert!(bad.starts_with("filter: "), "{bad}");
    }

    #[test]
    fn top_rows_roundtrip_and_check_the_ad_id() {
        let row = AdCount {
            ad_id: AdId::new("ad001").expect("valid"),
            count: 42,
        };
        assert_eq!(
            AdCount::try_from(wire::AdCount::from(&row)),
            Ok(row.clone())
        );
        assert_eq!(AdCount::try_from(wire::AdCount::from(row.clone())), Ok(row));
        assert_eq!(
            AdCount::try_from(wire::AdCount {
                ad_id: String::new(),
                count: 1
            }),
            Err(InvalidInput::Missing { field: "ad_id" })
        );
    }
}
