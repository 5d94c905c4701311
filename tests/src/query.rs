//! Builders for query requests and a local model of the expected answers.

use std::collections::BTreeMap;

use adclick_proto::wire;

/// `[from_ms, to_ms)` as a query range.
pub fn between(from_ms: i64, to_ms: i64) -> wire::TimeRange {
    wire::TimeRange {
        range: Some(wire::time_range::Range::Between(wire::Interval {
            from_ms,
            to_ms,
        })),
    }
}

/// The last `minutes` minutes as a query range.
pub fn last_minutes(minutes: u32) -> wire::TimeRange {
    wire::TimeRange {
        range: Some(wire::time_range::Range::LastMinutes(minutes)),
    }
}

/// A Count request.
pub fn count_request(
    ad_id: &str,
    range: wire::TimeRange,
    filter: &str,
    consistency: wire::Consistency,
) -> wire::CountRequest {
    wire::CountRequest {
        ad_id: ad_id.to_owned(),
        range: Some(range),
        filter: filter.to_owned(),
        consistency: consistency as i32,
    }
}

/// A Top request.
pub fn top_request(
    n: u32,
    range: wire::TimeRange,
    filter: &str,
    consistency: wire::Consistency,
) -> wire::TopRequest {
    wire::TopRequest {
        n,
        range: Some(range),
        filter: filter.to_owned(),
        consistency: consistency as i32,
    }
}

/// The expected top `n` of `counts`: count descending, ties by ad id ascending, ads with
/// no clicks left out.
pub fn expected_top(counts: &BTreeMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(a, c)| (a.clone(), *c))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(n);
    rows
}

/// A Top response's rows as `(ad_id, count)` pairs.
pub fn top_rows(resp: &wire::TopResponse) -> Vec<(String, u64)> {
    resp.rows
        .iter()
        .map(|r| (r.ad_id.clone(), r.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_top_breaks_ties_by_ad_id() {
        let counts: BTreeMap<String, u64> = [("b", 5), ("a", 5), ("c", 7), ("d", 0)]
            .into_iter()
            .map(|(a, c)| (a.to_owned(), c))
            .collect();
        assert_eq!(
            expected_top(&counts, 10),
            vec![("c".into(), 7), ("a".into(), 5), ("b".into(), 5)]
        );
        assert_eq!(expected_top(&counts, 2).len(), 2);
    }
}
