//! What the commands print: text for people, or JSON (`--json`) for scripts, and the
//! time formats people type.

use adclick_client::model::{InvalidInput, MinuteRange, Tally};
use adclick_client::{CountAnswer, FilterInfo, TopAnswer};
use adclick_proto::convert::{format_timestamp_ms, parse_timestamp_ms};
use adclick_proto::wire;
use serde_json::{json, Value};

/// Parses a time a person typed: RFC 3339, epoch milliseconds, or the seed files'
/// `YYYY-MM-DD HH:MM:SS` (read as UTC). `field` names it in the error.
pub fn parse_time(field: &'static str, text: &str) -> Result<i64, InvalidInput> {
    let t = text.trim();
    // `2024-07-09 00:00:01`: a date, one space, a time, no offset.
    let b = t.as_bytes();
    if b.len() == 19 && b[10] == b' ' && b[4] == b'-' && b[13] == b':' {
        return parse_timestamp_ms(field, &format!("{}T{}Z", &t[..10], &t[11..]));
    }
    parse_timestamp_ms(field, t)
}

/// The printer of one command's results.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints one JSON document on its own line.
    pub fn json(&self, v: &Value) {
        println!("{v}");
    }

    pub fn count(&self, ad_id: &str, a: &CountAnswer) {
        if self.json {
            let mut v = json!({ "ad_id": ad_id, "count": a.count, "late": a.late });
            add_range(&mut v, a.range);
            self.json(&v);
        } else {
            let late = if a.late > 0 {
                format!(" ({} more arrived late, not counted)", a.late)
            } else {
                String::new()
            };
            println!(
                "{ad_id}: {} clicks in {}{late}",
                a.count,
                range_text(a.range)
            );
        }
    }

    pub fn top(&self, a: &TopAnswer) {
        if self.json {
            let rows: Vec<Value> = a
                .rows
                .iter()
                .map(|r| json!({ "ad_id": r.ad_id.as_str(), "count": r.count }))
                .collect();
            let mut v = json!({ "rows": rows });
            add_range(&mut v, a.range);
            self.json(&v);
            return;
        }
        println!("top {} in {}", a.rows.len(), range_text(a.range));
        print!("{}", top_table(a));
    }

    pub fn filters(&self, filters: &[FilterInfo]) {
        if self.json {
            let rows: Vec<Value> = filters
                .iter()
                .map(|f| {
                    json!({ "name": f.name, "expr": f.expr, "state": f.state.as_str(),
                            "created_at_ms": f.created_at_ms })
                })
                .collect();
            self.json(&json!({ "filters": rows }));
            return;
        }
        if filters.is_empty() {
            println!("no filters");
        }
        for f in filters {
            println!("{}  {}  ({})", f.name, f.expr, f.state.as_str());
        }
    }

    pub fn dropped(&self, name: &str, existed: bool) {
        if self.json {
            self.json(&json!({ "name": name, "existed": existed }));
        } else if existed {
            println!("dropped filter {name}");
        } else {
            println!("no filter named {name} (nothing to drop)");
        }
    }

    pub fn status(&self, s: &wire::ClusterStatusResponse) {
        if self.json {
            self.json(&status_json(s));
            return;
        }
        println!(
            "answered by node {}, shard map version {}",
            s.node_id, s.shard_map_version
        );
        println!("nodes:");
        for n in &s.nodes {
            let node = n.node.clone().unwrap_or_default();
            let health = wire::NodeHealth::try_from(n.health)
                .map(|h| {
                    h.as_str_name()
                        .trim_start_matches("NODE_HEALTH_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| "unknown".into());
            println!("  {:>3}  {:<22} {health}", node.node_id, node.addr);
        }
        println!("groups:");
        println!("  group  leader  term  committed  applied  apply-lag  watermark");
        for g in &s.groups {
            let leader = g.leader_id.map_or("-".into(), |l| l.to_string());
            let wm = g.watermark_ms.map_or("-".into(), format_timestamp_ms);
            println!(
                "  {:>5}  {:>6}  {:>4}  {:>9}  {:>7}  {:>9}  {wm}",
                g.group_id, leader, g.term, g.committed_index, g.applied_index, g.apply_lag
            );
        }
    }

    pub fn tally_json(t: &Tally) -> Value {
        json!({ "accepted": t.accepted, "duplicate": t.duplicate, "late": t.late,
                "rejected": t.rejected })
    }
}

/// A top answer as an aligned table, one line per ad.
pub fn top_table(a: &TopAnswer) -> String {
    let width = a
        .rows
        .iter()
        .map(|r| r.ad_id.as_str().len())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for (i, r) in a.rows.iter().enumerate() {
        s.push_str(&format!(
            "{:>4}. {:<width$}  {:>10}\n",
            i + 1,
            r.ad_id.as_str(),
            r.count
        ));
    }
    s
}

/// `[from, to)` of a minute range, in RFC 3339.
pub fn range_text(r: MinuteRange) -> String {
    format!(
        "[{}, {})",
        format_timestamp_ms(r.from.start_ms()),
        format_timestamp_ms(r.to.start_ms())
    )
}

fn add_range(v: &mut Value, r: MinuteRange) {
    v["from"] = json!(format_timestamp_ms(r.from.start_ms()));
    v["to"] = json!(format_timestamp_ms(r.to.start_ms()));
    v["from_ms"] = json!(r.from.start_ms());
    v["to_ms"] = json!(r.to.start_ms());
}

fn status_json(s: &wire::ClusterStatusResponse) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            let node = n.node.clone().unwrap_or_default();
            json!({ "node_id": node.node_id, "addr": node.addr,
                    "health": wire::NodeHealth::try_from(n.health)
                        .map(|h| h.as_str_name()).unwrap_or("NODE_HEALTH_UNKNOWN"),
                    "last_seen_ms": n.last_seen_ms })
        })
        .collect();
    let groups: Vec<Value> = s
        .groups
        .iter()
        .map(|g| {
            json!({ "group_id": g.group_id, "leader_id": g.leader_id, "term": g.term,
                    "committed_index": g.committed_index, "applied_index": g.applied_index,
                    "commit_lag": g.commit_lag, "apply_lag": g.apply_lag,
                    "watermark_ms": g.watermark_ms, "reported_by": g.reported_by,
                    "members": g.members.iter().map(|m| m.node_id).collect::<Vec<_>>() })
        })
        .collect();
    json!({ "node_id": s.node_id, "shard_map_version": s.shard_map_version,
            "nodes": nodes, "groups": groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let ms = 1_720_483_201_000;
        assert_eq!(parse_time("t", "2024-07-09 00:00:01"), Ok(ms));
        assert_eq!(parse_time("t", "2024-07-09T00:00:01Z"), Ok(ms));
        assert_eq!(parse_time("t", "1720483201000"), Ok(ms));
        let e = parse_time("--from", "2024-07-09 25:00:01").expect_err("hour 25");
        assert_eq!(e.field(), "--from");
        assert!(parse_time("t", "yesterday").is_err());
    }
}
