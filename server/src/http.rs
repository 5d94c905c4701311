//! The HTTP surface on `--http`: the JSON API for producers and readers that do not speak
//! gRPC, plus `/healthz` and `/metrics`.
//!
//! | route | does |
//! |---|---|
//! | `GET /ads/{ad_id}/aggregated_count?window=M` or `?from=&to=` (+ `filter`, `consistency`) | one ad's count ([`query::count`]) |
//! | `GET /ads/popular?count=N&window=M` or `?from=&to=` (+ `filter`, `consistency`) | the top N ads ([`query::top`]) |
//! | `POST /clicks` (JSON array or NDJSON) | ingest a batch ([`ingest::ingest`]) |
//! | `GET /healthz` | 200 when serving, 503 while starting or draining |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//!
//! The query and ingest routes run the same operations as the gRPC services, with the same
//! validation (`adclick_proto::convert`), the same drain guard and the same metrics. Every
//! failure, including a malformed query string, an unreadable body, an unknown route or a
//! wrong method, is a JSON object `{"error": "..."}` with a 4xx/5xx status from
//! [`Error::http_status`]; 5xx only ever means the server could not serve a valid request.
//!
//! Query parameters: `window` (the last M minutes, ending with the serving node's current
//! minute) or both `from` and `to` (`[from, to)`, RFC 3339 or epoch milliseconds, widened
//! to whole minutes): exactly one of the two forms. `filter` names a registered filter;
//! `consistency` is `linearizable` (default) or `stale`. An empty value counts as absent;
//! an unknown or repeated parameter is a 400, so a typo is never silently ignored.
//!
//! Ingest bodies: a JSON array of click objects, or NDJSON (one object per line, blank
//! lines skipped), chosen by `Content-Type: application/x-ndjson` (or `application/ndjson`)
//! or else by the first non-blank byte (`[` or `{`). A click object has `event_id`,
//! `ad_id`, `timestamp` (RFC 3339 string or epoch-ms integer), `ip`, and optionally
//! `user_id` and `country`; other keys are refused. A body that is not in this shape
//! (invalid JSON, a missing or unknown key, a value of the wrong JSON type) is refused as a
//! whole with a 400 naming the line (NDJSON) or element (array, counted from 1); a click
//! whose values break a rule (a bad `ip`, `ad_id` or `timestamp` text, ...) is answered
//! `rejected` / `invalid` in its result and the rest of the batch is ingested, as over
//! gRPC. The answer has the tally and one result per click, in request order. A body over
//! [`body_limit`] (`max_batch_clicks` × [`CLICK_BODY_BYTES`] + [`BODY_SLACK_BYTES`], at
//! most [`MAX_BODY_BYTES`]) is a 413; more than `max_batch_clicks` clicks a 400, found
//! while parsing: the body is read click by click and refused at the first click past the
//! limit, so a request never holds more than `max_batch_clicks` parsed clicks.
//!
//! A `fault-injection` build adds `POST /fault/clock-skew?ms=N` (`crate::fault::routes`).
//!
//! Retryable errors carry their hints: 429 has `Retry-After` (seconds, rounded up) and
//! `x-adclick-retry-after-ms`, with `retry_after_ms` in the body; a not-leader 503 has
//! `x-adclick-leader` and `"leader": {"node_id", "addr"}` (a gRPC address) when known.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use adclick_proto::convert::{
    format_timestamp_ms, parse_timestamp_ms, CountQuery, ReadConsistency, TimeSpec, TopQuery,
    DEFAULT_TOP_N, MAX_TOP_N,
};
use adclick_proto::filter::FilterName;
use adclick_proto::json::{self, ClickObject};
use adclick_proto::model::{AdId, Click, InvalidInput, Outcome, Tally};
use adclick_proto::wire;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::metrics::Op;
use crate::node::Node;
use crate::service::{ingest, query};

/// The largest `POST /clicks` body whatever the batch limit: 32 MiB. A larger one is
/// refused with 413.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The body bytes allowed per click of the batch limit: 2 KiB. The largest valid click
/// written compactly (64-byte `event_id` and `ad_id`, 128-byte `user_id`, 64-byte
/// `country`, 45-byte `ip`, an RFC 3339 `timestamp`, the keys and punctuation) is about
/// 500 bytes, so this leaves 4× room for whitespace and escapes.
pub const CLICK_BODY_BYTES: usize = 2 << 10;

/// The body bytes allowed on top of the per-click allowance (the array brackets, leading
/// whitespace, a byte-order mark, ...): 64 KiB.
pub const BODY_SLACK_BYTES: usize = 64 << 10;

/// The largest `POST /clicks` body for a batch limit of `max_batch_clicks`:
/// `max_batch_clicks` × [`CLICK_BODY_BYTES`] + [`BODY_SLACK_BYTES`], at most
/// [`MAX_BODY_BYTES`]. A body of `max_batch_clicks` real clicks always fits; a body far
/// larger than any valid batch is refused before it is read whole.
pub fn body_limit(max_batch_clicks: usize) -> usize {
    max_batch_clicks
        .saturating_mul(CLICK_BODY_BYTES)
        .saturating_add(BODY_SLACK_BYTES)
        .min(MAX_BODY_BYTES)
}

/// The parameters `GET /ads/{ad_id}/aggregated_count` takes.
const COUNT_PARAMS: &[&str] = &["window", "from", "to", "filter", "consistency"];
/// The parameters `GET /ads/popular` takes.
const TOP_PARAMS: &[&str] = &["count", "window", "from", "to", "filter", "consistency"];

/// The HTTP routes of `node`.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = body_limit(node.config.max_batch_clicks);
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ads/popular", get(popular))
        .route("/ads/{ad_id}/aggregated_count", get(aggregated_count))
        .route(
            "/clicks",
            post(clicks).layer(DefaultBodyLimit::max(body_limit)),
        );
    #[cfg(feature = "fault-injection")]
    let routes = routes.merge(crate::fault::routes(Arc::clone(&node.faults)));
    json_errors(routes).with_state(node)
}

/// Makes the router's own answers JSON too: unknown routes (404) and wrong methods (405,
/// with axum's `Allow` header). Must be applied after every route is added.
fn json_errors<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}; the API is GET /ads/{{ad_id}}/aggregated_count, \
             GET /ads/popular, POST /clicks, GET /healthz and GET /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// 200 once the node serves and every group has a known leader; 503 otherwise.
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    let leaderless: Vec<u64> = node
        .groups()
        .filter(|g| g.metrics().current_leader.is_none())
        .map(|g| g.id)
        .collect();
    let serving = leaderless.is_empty() && !node.is_draining();
    let body = serde_json::json!({
        "status": if serving { "serving" } else if node.is_draining() { "draining" } else { "starting" },
        "node_id": node.id(),
        "groups_without_leader": leaderless,
    });
    let code = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(&node),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Handlers

/// Runs one client operation the way the gRPC services do: refused while the node drains
/// (the guard keeps the drain waiting until the answer is built), counted and timed under
/// `op`, and answered as JSON or as the error's JSON body and status.
async fn serve<T, F>(node: &Node, op: Op, f: F) -> Response
where
    T: Serialize,
    F: Future<Output = std::result::Result<T, Failure>>,
{
    match node.serve(op, f).await {
        Ok(answer) => Json(answer).into_response(),
        Err(Failure::Op(e)) => error_response(&e),
        Err(Failure::Http(status, message)) => json_error(status, message),
    }
}

/// Why a request failed: an operation's [`Error`], or a condition only HTTP has (a body
/// over the size limit).
#[derive(Debug)]
enum Failure {
    Op(Error),
    Http(StatusCode, String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Op(e)
    }
}

/// `GET /ads/{ad_id}/aggregated_count`.
async fn aggregated_count(
    State(node): State<Arc<Node>>,
    path: std::result::Result<Path<String>, PathRejection>,
    params: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    serve(&node, Op::Count, async {
        let Path(ad_id) = path
            .map_err(|r| Error::InvalidArgument(format!("ad_id in the path: {}", r.body_text())))?;
        let q = count_query(ad_id, query_pairs(params)?)?;
        let (ad_id, filter) = (q.ad_id.clone(), q.filter.clone());
        let resp = query::count(&node, q).await?;
        let (from_ms, to_ms) = interval(resp.range)?;
        let position = resp
            .position
            .ok_or_else(|| Error::Internal("the count answer has no position".into()))?;
        Ok(CountAnswer {
            ad_id: ad_id.as_str().to_owned(),
            count: resp.count,
            late: resp.late,
            from: format_timestamp_ms(from_ms),
            to: format_timestamp_ms(to_ms),
            from_ms,
            to_ms,
            filter: filter.map(|f| f.as_str().to_owned()),
            position: position.into(),
        })
    })
    .await
}

/// `GET /ads/popular`.
async fn popular(
    State(node): State<Arc<Node>>,
    params: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    serve(&node, Op::Top, async {
        let q = top_query(query_pairs(params)?)?;
        let filter = q.filter.clone();
        let resp = query::top(&node, q).await?;
        let (from_ms, to_ms) = interval(resp.range)?;
        Ok(TopAnswer {
            ads: resp
                .rows
                .into_iter()
                .map(|r| AdCountJson {
                    ad_id: r.ad_id,
                    count: r.count,
                })
                .collect(),
            from: format_timestamp_ms(from_ms),
            to: format_timestamp_ms(to_ms),
            from_ms,
            to_ms,
            filter: filter.map(|f| f.as_str().to_owned()),
            positions: resp.positions.into_iter().map(PositionJson::from).collect(),
        })
    })
    .await
}

/// `POST /clicks`.
async fn clicks(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    serve(&node, Op::Ingest, async {
        let limit = node.config.max_batch_clicks;
        let body = body.map_err(|r| body_error(r, body_limit(limit)))?;
        // The batch limit counts every click of the request, as over gRPC, including
        // those answered here; parsing stops at the first click past it.
        let parsed = parse_clicks(&body, is_ndjson(&headers), limit)?;
        // Clicks whose values break a rule are answered here, like the gRPC edge check
        // would, but naming the HTTP field; the rest go to the shared ingest path.
        let mut results: Vec<Option<ResultJson>> = Vec::with_capacity(parsed.len());
        let mut valid = Vec::with_capacity(parsed.len());
        let mut refused = Tally::default();
        for click in parsed {
            match click.and_then(|w| checked(w).map_err(http_field)) {
                Ok(w) => {
                    valid.push(w);
                    results.push(None);
                }
                Err(e) => {
                    refused.add(INVALID);
                    results.push(Some(ResultJson::invalid(&e)));
                }
            }
        }
        if refused.rejected > 0 {
            node.metrics.record_tally(&refused);
        }
        let resp = ingest::ingest(&node, valid, ingest::Origin::Client).await?;
        let mut tally = resp.tally.map(Tally::from).unwrap_or_default();
        tally.merge(&refused);
        let mut answered = resp.results.iter();
        let results = results
            .into_iter()
            .map(|r| match r {
                Some(r) => Ok(r),
                None => answered
                    .next()
                    .ok_or_else(|| Error::Internal("the ingest answered too few results".into()))
                    .and_then(ResultJson::from_wire),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(IngestAnswer {
            accepted: tally.accepted,
            duplicate: tally.duplicate,
            late: tally.late,
            rejected: tally.rejected,
            results,
        })
    })
    .await
}

const INVALID: Outcome = Outcome::Rejected(adclick_proto::model::RejectReason::Invalid);

/// The edge check of [`Click::try_from`], keeping the wire click to send on.
fn checked(w: wire::Click) -> std::result::Result<wire::Click, InvalidInput> {
    Click::try_from(&w).map(|_| w)
}

/// Names the HTTP field in an edge-check error: the body says `timestamp`, the wire
/// `event_time_ms`.
fn http_field(e: InvalidInput) -> InvalidInput {
    if e.field() == "event_time_ms" {
        e.with_field("timestamp")
    } else {
        e
    }
}

// ---------------------------------------------------------------------------------------
// Answers

/// The answer of `GET /ads/{ad_id}/aggregated_count`.
#[derive(Debug, Serialize)]
struct CountAnswer {
    ad_id: String,
    count: u64,
    late: u64,
    from: String,
    to: String,
    from_ms: i64,
    to_ms: i64,
    filter: Option<String>,
    position: PositionJson,
}

/// The answer of `GET /ads/popular`.
#[derive(Debug, Serialize)]
struct TopAnswer {
    ads: Vec<AdCountJson>,
    from: String,
    to: String,
    from_ms: i64,
    to_ms: i64,
    filter: Option<String>,
    positions: Vec<PositionJson>,
}

#[derive(Debug, Serialize)]
struct AdCountJson {
    ad_id: String,
    count: u64,
}

/// Where a group stood when it answered.
#[derive(Debug, Serialize)]
struct PositionJson {
    group_id: u64,
    node_id: u64,
    applied_index: u64,
    watermark_ms: Option<i64>,
}

impl From<wire::GroupPosition> for PositionJson {
    fn from(p: wire::GroupPosition) -> Self {
        PositionJson {
            group_id: p.group_id,
            node_id: p.node_id,
            applied_index: p.applied_index,
            watermark_ms: p.watermark_ms,
        }
    }
}

/// The answer of `POST /clicks`: the tally and one result per click, in request order.
#[derive(Debug, Serialize)]
struct IngestAnswer {
    accepted: u64,
    duplicate: u64,
    late: u64,
    rejected: u64,
    results: Vec<ResultJson>,
}

/// One click's result: `reason` (`invalid` or `future_event`) and `message` are set only
/// for `rejected`, and are `null` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ResultJson {
    outcome: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
}

impl ResultJson {
    fn invalid(e: &InvalidInput) -> Self {
        ResultJson {
            outcome: INVALID.as_str(),
            reason: Some(adclick_proto::model::RejectReason::Invalid.as_str()),
            message: Some(e.to_string()),
        }
    }

    fn from_wire(r: &wire::EventResult) -> Result<Self> {
        let outcome = Outcome::try_from(r)
            .map_err(|e| Error::Internal(format!("the ingest answered a bad result: {e}")))?;
        Ok(match outcome {
            Outcome::Rejected(reason) => ResultJson {
                outcome: outcome.as_str(),
                reason: Some(reason.as_str()),
                message: Some(r.message.clone()),
            },
            _ => ResultJson {
                outcome: outcome.as_str(),
                reason: None,
                message: None,
            },
        })
    }
}

/// The resolved range of a query answer, in ms.
fn interval(range: Option<wire::Interval>) -> Result<(i64, i64)> {
    range
        .map(|i| (i.from_ms, i.to_ms))
        .ok_or_else(|| Error::Internal("the query answer has no range".into()))
}

// ---------------------------------------------------------------------------------------
// Errors

/// `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The JSON answer for `e`: its status, `{"error": ...}`, and for 429 `Retry-After`
/// (whole seconds, rounded up) with `retry_after_ms` in the body, for a not-leader 503 the
/// leader (`{"node_id", "addr"}`, its gRPC address) in the body and `x-adclick-leader`.
pub(crate) fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::Map::new();
    let mut headers = HeaderMap::new();
    let message = match e {
        Error::NotLeader { .. } => format!("{e}; retry"),
        _ => e.to_string(),
    };
    body.insert("error".into(), message.into());
    match e {
        Error::Overloaded { retry_after, .. } => {
            let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
            let secs = ms.div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            headers.insert(
                HeaderName::from_static(wire::metadata::RETRY_AFTER_MS),
                HeaderValue::from(ms),
            );
            body.insert("retry_after_ms".into(), ms.into());
        }
        Error::NotLeader {
            leader: Some(l), ..
        } => {
            if let Ok(v) = HeaderValue::from_str(&l.to_string()) {
                headers.insert(HeaderName::from_static(wire::metadata::LEADER), v);
            }
            body.insert(
                "leader".into(),
                serde_json::json!({ "node_id": l.node_id, "addr": l.addr }),
            );
        }
        _ => {}
    }
    (status, headers, Json(serde_json::Value::Object(body))).into_response()
}

/// An unreadable body: 413 over the route's limit (`limit` bytes, [`body_limit`]), else
/// 400.
fn body_error(r: BytesRejection, limit: usize) -> Failure {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Failure::Http(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than the limit of {}; send fewer clicks per request",
                byte_size(limit)
            ),
        )
    } else {
        Failure::Op(Error::InvalidArgument(format!(
            "could not read the body: {}",
            r.body_text()
        )))
    }
}

/// `n` bytes in the largest whole unit: `32 MiB`, `20064 KiB`, `16 bytes`.
fn byte_size(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

// ---------------------------------------------------------------------------------------
// Query parameters

/// The query string's pairs, or a 400 if it does not decode.
pub(crate) fn query_pairs(
    q: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>> {
    q.map(|Query(pairs)| pairs)
        .map_err(|r| Error::InvalidArgument(format!("query string: {}", r.body_text())))
}

/// The query parameters by name, each at most once and each one of `known`; an empty value
/// counts as absent.
pub(crate) fn params(
    pairs: Vec<(String, String)>,
    known: &[&'static str],
) -> Result<BTreeMap<&'static str, String>> {
    let mut out = BTreeMap::new();
    let mut seen = Vec::new();
    for (name, value) in pairs {
        let Some(&key) = known.iter().find(|k| **k == name) else {
            return Err(Error::InvalidArgument(format!(
                "unknown query parameter {name:?}; this endpoint takes {}",
                known.join(", ")
            )));
        };
        if seen.contains(&key) {
            return Err(Error::InvalidArgument(format!(
                "query parameter {key} is given more than once"
            )));
        }
        seen.push(key);
        let value = value.trim();
        if !value.is_empty() {
            out.insert(key, value.to_owned());
        }
    }
    Ok(out)
}

/// The count query of `GET /ads/{ad_id}/aggregated_count`.
fn count_query(ad_id: String, pairs: Vec<(String, String)>) -> Result<CountQuery> {
    let p = params(pairs, COUNT_PARAMS)?;
    let get = |k: &str| p.get(k).map(String::as_str);
    Ok(CountQuery {
        ad_id: AdId::try_from(ad_id)?,
        range: time_spec(get("window"), get("from"), get("to"))?,
        filter: filter(get("filter"))?,
        consistency: consistency(get("consistency"))?,
    })
}

/// The top query of `GET /ads/popular`.
fn top_query(pairs: Vec<(String, String)>) -> Result<TopQuery> {
    let p = params(pairs, TOP_PARAMS)?;
    let get = |k: &str| p.get(k).map(String::as_str);
    Ok(TopQuery {
        n: top_n(get("count"))?,
        range: time_spec(get("window"), get("from"), get("to"))?,
        filter: filter(get("filter"))?,
        consistency: consistency(get("consistency"))?,
    })
}

/// `window` (the last M minutes) or `from` and `to`, exactly one of the two forms.
fn time_spec(window: Option<&str>, from: Option<&str>, to: Option<&str>) -> Result<TimeSpec> {
    match (window, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Error::InvalidArgument(
            "give either window (the last M minutes) or from and to, not both".into(),
        )),
        (Some(w), None, None) => {
            let minutes: u32 = w.parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "window: {w:?} is not a whole number of minutes (e.g. window=60)"
                ))
            })?;
            Ok(TimeSpec::last(minutes).map_err(|e| e.with_field("window"))?)
        }
        (None, Some(f), Some(t)) => {
            let from_ms = parse_timestamp_ms("from", f)?;
            let to_ms = parse_timestamp_ms("to", t)?;
            if to_ms < from_ms {
                return Err(Error::InvalidArgument(format!(
                    "to ({}) is before from ({})",
                    format_timestamp_ms(to_ms),
                    format_timestamp_ms(from_ms)
                )));
            }
            Ok(TimeSpec::between(from_ms, to_ms)?)
        }
        (None, Some(_), None) => Err(Error::InvalidArgument(
            "from needs to (the range is [from, to)); or give window=M instead".into(),
        )),
        (None, None, Some(_)) => Err(Error::InvalidArgument(
            "to needs from (the range is [from, to)); or give window=M instead".into(),
        )),
        (None, None, None) => Err(Error::InvalidArgument(
            "a time range is required: window=M (the last M minutes) or from= and to= \
             (RFC 3339 or epoch milliseconds)"
                .into(),
        )),
    }
}

/// `count`: how many ads, default [`DEFAULT_TOP_N`], 1 to [`MAX_TOP_N`].
fn top_n(count: Option<&str>) -> Result<u32> {
    let Some(text) = count else {
        return Ok(DEFAULT_TOP_N);
    };
    match text.parse::<u64>() {
        Ok(n) if n > u64::from(MAX_TOP_N) => Err(Error::InvalidArgument(format!(
            "count: {n} is more than the limit of {MAX_TOP_N}"
        ))),
        Ok(n) if n > 0 => Ok(u32::try_from(n).unwrap_or(MAX_TOP_N)),
        _ => Err(Error::InvalidArgument(format!(
            "count: {text:?} is not a number from 1 to {MAX_TOP_N}"
        ))),
    }
}

/// `filter`: a registered filter's name, or absent.
fn filter(name: Option<&str>) -> Result<Option<FilterName>> {
    name.map(|n| FilterName::new(n).map_err(|e| e.with_field("filter").into()))
        .transpose()
}

/// `consistency`: `linearizable` (default) or `stale`, in any case.
fn consistency(text: Option<&str>) -> Result<ReadConsistency> {
    match text {
        None => Ok(ReadConsistency::Linearizable),
        Some(t) if t.eq_ignore_ascii_case("linearizable") => Ok(ReadConsistency::Linearizable),
        Some(t) if t.eq_ignore_ascii_case("stale") => Ok(ReadConsistency::Stale),
        Some(t) => Err(Error::InvalidArgument(format!(
            "consistency: {t:?} is neither linearizable nor stale"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Ingest bodies

/// Whether the `Content-Type` says NDJSON.
fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/x-ndjson")
                || mime.eq_ignore_ascii_case("application/ndjson")
        })
        .unwrap_or(false)
}

/// One parsed click: the wire click, or the error of a value that did not parse (a
/// `timestamp` text), which the click is rejected for.
type ParsedClick = std::result::Result<wire::Click, InvalidInput>;

/// Parses an ingest body: NDJSON if `ndjson` or if the first non-blank byte is `{`, a JSON
/// array if it is `[`. A body not in the click shape is an error naming the line (NDJSON)
/// or element (array, from 1). A body of more than `max` clicks is refused
/// ([`too_many_clicks`]) as soon as click `max + 1` starts, without parsing it or
/// anything after it.
fn parse_clicks(body: &[u8], ndjson: bool, max: usize) -> Result<Vec<ParsedClick>> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if ndjson {
        return parse_ndjson(body, max);
    }
    match first {
        Some(b'[') => parse_array(body, max),
        Some(b'{') => parse_ndjson(body, max),
        Some(_) => Err(Error::InvalidArgument(
            "the body must be a JSON array of click objects or NDJSON (one click object \
             per line)"
                .into(),
        )),
        None => Err(Error::InvalidArgument(
            "the body is empty: send a JSON array of click objects or NDJSON".into(),
        )),
    }
}

/// The answer to a body of more than `max` clicks, as over gRPC.
fn too_many_clicks(max: usize) -> Error {
    Error::InvalidArgument(format!(
        "a batch holds at most {max} clicks; this one has more: split it"
    ))
}

fn parse_ndjson(body: &[u8], max: usize) -> Result<Vec<ParsedClick>> {
    let mut clicks = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if clicks.len() == max {
            return Err(too_many_clicks(max));
        }
        let click = json::parse_line(line)
            .map_err(|e| Error::InvalidArgument(format!("line {}: {e}", i + 1)))?;
        clicks.push(click);
    }
    Ok(clicks)
}

fn parse_array(body: &[u8], max: usize) -> Result<Vec<ParsedClick>> {
    let over = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let clicks = de
        .deserialize_seq(ClickArray { max, over: &over })
        .and_then(|clicks| de.end().map(|()| clicks))
        .map_err(|e| {
            if over.get() {
                return too_many_clicks(max);
            }
            let (message, line, column) = json::without_position(&e);
            let at = if line > 0 {
                format!(" (line {line}, column {column})")
            } else {
                String::new()
            };
            Error::InvalidArgument(format!("{message}{at}"))
        })?;
    Ok(clicks.into_iter().map(ClickObject::into_wire).collect())
}

/// Visits a JSON array of clicks, whose errors name the element (from 1), taking at most
/// `max` of them: at element `max + 1` it sets `over` and fails before reading the element.
struct ClickArray<'a> {
    max: usize,
    over: &'a Cell<bool>,
}

impl<'de> Visitor<'de> for ClickArray<'_> {
    type Value = Vec<ClickObject>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of click objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Vec<ClickObject>, A::Error> {
        let cap = seq.size_hint().unwrap_or(0).min(self.max).min(4096);
        let mut clicks = Vec::with_capacity(cap);
        loop {
            let n = clicks.len() + 1;
            let next = if clicks.len() == self.max {
                // Another element is one too many: refuse it without reading it.
                seq.next_element_seed(OverLimit(self.over)).map(|_| None)
            } else {
                seq.next_element::<ClickObject>()
            };
            match next {
                Ok(Some(c)) => clicks.push(c),
                Ok(None) => return Ok(clicks),
                Err(e) if self.over.get() => return Err(e),
                // The inner error's text carries its position; the outer one gets the
                // position again from serde_json, so keep only the message.
                Err(e) => {
                    let text = e.to_string();
                    let text = text.rsplit_once(" at line ").map_or(&*text, |(m, _)| m);
                    return Err(de::Error::custom(format!("element {n}: {text}")));
                }
            }
        }
    }
}

/// The seed of an array element past the batch limit: sets the flag and fails without
/// reading the element.
struct OverLimit<'a>(&'a Cell<bool>);

impl<'de> de::DeserializeSeed<'de> for OverLimit<'_> {
    type Value = de::IgnoredAny;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> std::result::Result<Self::Value, D::Error> {
        self.0.set(true);
        Err(de::Error::custom("too many clicks"))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn message<T: fmt::Debug>(r: Result<T>) -> String {
        match r.expect_err("should fail") {
            Error::InvalidArgument(m) => m,
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    const T0: i64 = 1_720_483_200_000; // 2024-07-09T00:00:00Z

    #[test]
    fn window_is_the_last_m_minutes() {
        assert_eq!(
            time_spec(Some("60"), None, None).expect("valid"),
            TimeSpec::Last { minutes: 60 }
        );
        assert_eq!(
            message(time_spec(Some("0"), None, None)),
            "window is required"
        );
        assert!(message(time_spec(Some("527041"), None, None)).starts_with("window: 527041"));
        assert!(message(time_spec(Some("-1"), None, None)).starts_with("window: \"-1\""));
        assert!(message(time_spec(Some("1h"), None, None)).contains("whole number of minutes"));
    }

    #[test]
    fn from_and_to_take_rfc3339_or_epoch_ms() {
        let spec = time_spec(None, Some("2024-07-09T00:00:00Z"), Some("1720486800000"));
        assert_eq!(
            spec.expect("valid"),
            TimeSpec::Between {
                from_ms: T0,
                to_ms: T0 + 3_600_000
            }
        );
        let spec = time_spec(
            None,
            Some("2024-07-09T02:00:00+02:00"),
            Some(&T0.to_string()),
        );
        assert!(spec.is_ok(), "an empty range is valid: {spec:?}");
        let err = message(time_spec(None, Some("yesterday"), Some("1")));
        assert!(err.starts_with("from: \"yesterday\" is neither"), "{err}");
        let err = message(time_spec(None, Some("1"), Some("soon")));
        assert!(err.starts_with("to: "), "{err}");
        assert_eq!(
            message(time_spec(None, Some("120000"), Some("60000"))),
            "to (1970-01-01T00:01:00Z) is before from (1970-01-01T00:02:00Z)"
        );
    }

    #[test]
    fn window_and_from_to_are_exclusive_and_one_is_required() {
        assert!(message(time_spec(Some("5"), Some("1"), Some("2"))).contains("not both"));
        assert!(message(time_spec(Some("5"), Some("1"), None)).contains("not both"));
        assert!(message(time_spec(Some("5"), None, Some("2"))).contains("not both"));
        assert!(message(time_spec(None, Some("1"), None)).starts_with("from needs to"));
        assert!(message(time_spec(None, None, Some("1"))).starts_with("to needs from"));
        assert!(message(time_spec(None, None, None)).starts_with("a time range is required"));
    }

    #[test]
    fn count_defaults_to_ten_and_is_bounded() {
        assert_eq!(top_n(None).expect("valid"), DEFAULT_TOP_N);
        assert_eq!(top_n(Some("1")).expect("valid"), 1);
        assert_eq!(top_n(Some("1000")).expect("valid"), MAX_TOP_N);
        assert_eq!(
            message(top_n(Some("1001"))),
            "count: 1001 is more than the limit of 1000"
        );
        assert_eq!(
            message(top_n(Some("0"))),
            "count: \"0\" is not a number from 1 to 1000"
        );
        assert!(message(top_n(Some("-3"))).starts_with("count: \"-3\""));
        assert!(message(top_n(Some("ten"))).starts_with("count: \"ten\""));
        assert!(message(top_n(Some("99999999999999999999999"))).starts_with("count: "));
    }

    #[test]
    fn queries_are_built_from_named_parameters() {
        let q = count_query(
            "ad001".into(),
            pairs(&[
                ("window", "15"),
                ("filter", "us_private"),
                ("consistency", "STALE"),
            ]),
        )
        .expect("valid");
        assert_eq!(q.ad_id.as_str(), "ad001");
        assert_eq!(q.range, TimeSpec::Last { minutes: 15 });
        assert_eq!(
            q.filter.as_ref().map(FilterName::as_str),
            Some("us_private")
        );
        assert_eq!(q.consistency, ReadConsistency::Stale);

        let q = top_query(pairs(&[
            ("count", "3"),
            ("from", "0"),
            ("to", "60000"),
            ("filter", ""),
        ]))
        .expect("valid");
        assert_eq!(
            (q.n, q.filter, q.consistency),
            (3, None, ReadConsistency::Linearizable)
        );

        assert!(
            message(count_query("ad 1".into(), pairs(&[("window", "1")])))
                .starts_with("ad_id contains ' '")
        );
        assert!(
            message(top_query(pairs(&[("window", "1"), ("filter", "a b")])))
                .starts_with("filter: ")
        );
        assert_eq!(
            message(top_query(pairs(&[
                ("window", "1"),
                ("consistency", "eventual")
            ]))),
            "consistency: \"eventual\" is neither linearizable nor stale"
        );
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let err = message(count_query(
            "ad001".into(),
            pairs(&[("window", "1"), ("count", "5")]),
        ));
        assert!(
            err.starts_with("unknown query parameter \"count\""),
            "{err}"
        );
        let err = message(top_query(pairs(&[("window", "1"), ("window", "2")])));
        assert_eq!(err, "query parameter window is given more than once");
        let empty_is_absent = top_query(pairs(&[("window", "1"), ("from", ""), ("to", " ")]));
        assert!(empty_is_absent.is_ok(), "{empty_is_absent:?}");
    }

    /// A batch limit the tests' bodies stay under.
    const MAX: usize = 100;

    fn click_line(id: &str, ts: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","ad_id":"ad001","timestamp":{ts},"user_id":"u","ip":"1.2.3.4","country":"USA"}}"#
        )
    }

    fn ok_clicks(r: Result<Vec<ParsedClick>>) -> Vec<wire::Click> {
        r.expect("parses")
            .into_iter()
            .map(|c| c.expect("valid click"))
            .collect()
    }

    #[test]
    fn a_json_array_of_clicks_parses_with_either_timestamp_form() {
        let body = format!(
            " \n[{}, {}]",
            click_line("e-1", "1720483201000"),
            click_line("e-2", "\"2024-07-09T00:00:01Z\"")
        );
        let clicks = ok_clicks(parse_clicks(body.as_bytes(), false, MAX));
        assert_eq!(clicks.len(), 2);
        assert_eq!(&clicks[0].event_id[..], b"e-1");
        assert_eq!(clicks[0].event_time_ms, 1_720_483_201_000);
        assert_eq!(clicks[1].event_time_ms, 1_720_483_201_000);
        assert_eq!(
            (clicks[0].ad_id.as_str(), clicks[0].ip.as_str()),
            ("ad001", "1.2.3.4")
        );
        assert_eq!(
            (clicks[0].user_id.as_str(), clicks[0].country.as_str()),
            ("u", "USA")
        );
        assert!(ok_clicks(parse_clicks(b"[]", false, MAX)).is_empty());
    }

    #[test]
    fn ndjson_parses_by_first_byte_or_content_type() {
        let body = format!(
            "{}\r\n\n   \n{}\n",
            click_line("e-1", "1720483201000"),
            click_line("e-2", "\"1720483201000\"")
        );
        let clicks = ok_clicks(parse_clicks(body.as_bytes(), false, MAX));
        assert_eq!(clicks.len(), 2);
        assert_eq!(clicks[1].event_time_ms, 1_720_483_201_000);
        assert_eq!(ok_clicks(parse_clicks(body.as_bytes(), true, MAX)).len(), 2);
        // With an NDJSON content type an array is one (bad) line, not a batch.
        let err = message(parse_clicks(b"[]", true, MAX));
        assert!(
            err.starts_with("line 1: invalid type: sequence, expected a click object"),
            "{err}"
        );

        let mut headers = HeaderMap::new();
        assert!(!is_ndjson(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_ndjson(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/X-NDJSON; charset=utf-8"),
        );
        assert!(is_ndjson(&headers));
    }

    #[test]
    fn optional_fields_default_to_empty() {
        let line = br#"{"event_id":"e","ad_id":"a","timestamp":1,"ip":"::1","user_id":null}"#;
        let clicks = ok_clicks(parse_clicks(line, false, MAX));
        assert_eq!(
            (clicks[0].user_id.as_str(), clicks[0].country.as_str()),
            ("", "")
        );
    }

    #[test]
    fn ndjson_errors_name_the_line() {
        let good = click_line("e-1", "1");
        let body = format!(
            "{good}\n\n{}\n",
            r#"{"event_id":"e-2","ad_id":"a","timestamp":1}"#
        );
        let err = message(parse_clicks(body.as_bytes(), false, MAX));
        assert_eq!(err, "line 3: missing field `ip` (column 44)");
        let body = format!("{good}\n{{\"event_id\": \n");
        let err = message(parse_clicks(body.as_bytes(), false, MAX));
        assert!(err.starts_with("line 2: EOF while parsing"), "{err}");
        let body = format!("{good}\n{}", good.replace("\"ip\"", "\"ipaddr\""));
        let err = message(parse_clicks(body.as_bytes(), false, MAX));
        assert!(err.starts_with("line 2: unknown field `ipaddr`"), "{err}");
        let body = format!("{good}\n{}", good.replace("\"ad001\"", "7"));
        let err = message(parse_clicks(body.as_bytes(), false, MAX));
        assert!(
            err.starts_with("line 2: invalid type: integer `7`, expected a string"),
            "{err}"
        );
    }

    #[test]
    fn array_errors_name_the_element() {
        let good = click_line("e-1", "1");
        let body = format!(
            "[{good},\n {good},\n {}]",
            r#"{"event_id":"e","ad_id":"a","ip":"::1"}"#
        );
        let err = message(parse_clicks(body.as_bytes(), false, MAX));
        assert!(
            err.starts_with("element 3: missing field `timestamp` (line 3"),
            "{err}"
        );
        let err = message(parse_clicks(format!("[{good}, 5]").as_bytes(), false, MAX));
        assert!(
            err.starts_with("element 2: invalid type: integer `5`, expected a click object"),
            "{err}"
        );
        let body = format!("[{good}, {}]", good.replace(":1,", ":1.5,"));
        let err = message(parse_clicks(body.as_bytes(), false, MAX));
        assert!(
            err.contains("element 2: invalid type: floating point"),
            "{err}"
        );
        assert!(
            err.contains("epoch milliseconds (an integer) or an RFC 3339"),
            "{err}"
        );
        let err = message(parse_clicks(format!("[{good}").as_bytes(), false, MAX));
        assert!(err.contains("EOF while parsing"), "{err}");
        let err = message(parse_clicks(format!("[{good}] x").as_bytes(), false, MAX));
        assert!(err.starts_with("trailing characters"), "{err}");
    }

    #[test]
    fn a_body_over_the_batch_limit_is_refused_at_the_first_click_past_it() {
        let c = click_line("e", "1");
        let limit = "a batch holds at most 3 clicks; this one has more: split it";
        // At the limit both forms parse.
        let array = format!("[{c},{c},\n{c}]");
        assert_eq!(ok_clicks(parse_clicks(array.as_bytes(), false, 3)).len(), 3);
        let ndjson = format!("{c}\n\n{c}\n  \n{c}\n\n");
        assert_eq!(
            ok_clicks(parse_clicks(ndjson.as_bytes(), false, 3)).len(),
            3
        );
        assert_eq!(ok_clicks(parse_clicks(ndjson.as_bytes(), true, 3)).len(), 3);
        // One more is refused with the gRPC rule's message.
        let array = format!("[{c},{c},{c},{c}]");
        assert_eq!(message(parse_clicks(array.as_bytes(), false, 3)), limit);
        let ndjson = format!("{c}\n{c}\n\n{c}\n{c}\n");
        assert_eq!(message(parse_clicks(ndjson.as_bytes(), false, 3)), limit);
        assert_eq!(message(parse_clicks(ndjson.as_bytes(), true, 3)), limit);
        // Parsing stops there: click 4 and whatever follows it are never read (they would
        // be a shape error otherwise), so no more than 3 clicks are ever built.
        let array = format!("[{c},{c},{c}, 5, {{\"event_id\": ");
        assert_eq!(message(parse_clicks(array.as_bytes(), false, 3)), limit);
        let array = format!("[{c},{c},{c},{}", "x".repeat(1 << 20));
        assert_eq!(message(parse_clicks(array.as_bytes(), false, 3)), limit);
        let ndjson = format!("{c}\n{c}\n{c}\nnot json\n{{\"event_id\": 7}}\n");
        assert_eq!(message(parse_clicks(ndjson.as_bytes(), false, 3)), limit);
        // Errors before the limit still name their element or line.
        let array = format!("[{c}, 5, {c}, {c}]");
        let err = message(parse_clicks(array.as_bytes(), false, 3));
        assert!(err.starts_with("element 2: invalid type"), "{err}");
        let ndjson = format!("{c}\nnot json\n{c}\n{c}\n");
        let err = message(parse_clicks(ndjson.as_bytes(), false, 3));
        assert!(err.starts_with("line 2: "), "{err}");
        // A syntax error at the separator before click 4 is still a shape error.
        let err = message(parse_clicks(format!("[{c},{c},{c},]").as_bytes(), false, 3));
        assert!(err.starts_with("element 4: trailing comma"), "{err}");
    }

    #[test]
    fn the_body_limit_follows_the_batch_limit() {
        assert_eq!(body_limit(1), CLICK_BODY_BYTES + BODY_SLACK_BYTES);
        assert_eq!(body_limit(10_000), 10_000 * 2048 + 65_536);
        assert_eq!(body_limit(1_000_000), MAX_BODY_BYTES);
        assert_eq!(body_limit(usize::MAX), MAX_BODY_BYTES);
        // The largest valid click, written compactly, is well under its allowance.
        let largest = serde_json::json!({
            "event_id": "e".repeat(adclick_proto::model::MAX_EVENT_ID_LEN),
            "ad_id": "a".repeat(adclick_proto::model::MAX_AD_ID_LEN),
            "timestamp": "2024-07-09T00:00:01.123456789+00:00",
            "ip": "f".repeat(adclick_proto::convert::MAX_IP_TEXT_LEN),
            "user_id": "u".repeat(adclick_proto::model::MAX_USER_ID_LEN),
            "country": "c".repeat(adclick_proto::model::MAX_COUNTRY_LEN),
        })
        .to_string();
        assert!(largest.len() * 4 <= CLICK_BODY_BYTES, "{}", largest.len());
        assert_eq!(byte_size(MAX_BODY_BYTES), "32 MiB");
        assert_eq!(byte_size(body_limit(10_000)), "20064 KiB");
        assert_eq!(byte_size(16), "16 bytes");
    }

    #[test]
    fn other_bodies_are_refused() {
        assert!(message(parse_clicks(b"", false, MAX)).starts_with("the body is empty"));
        assert!(message(parse_clicks(b" \n ", false, MAX)).starts_with("the body is empty"));
        assert!(message(parse_clicks(b"ad001,1,2", false, MAX)).starts_with("the body must be"));
        let bom = format!("\u{feff}[{}]", click_line("e", "1"));
        assert_eq!(ok_clicks(parse_clicks(bom.as_bytes(), false, MAX)).len(), 1);
    }

    #[test]
    fn bad_values_reject_the_click_not_the_body() {
        let body = format!(
            "{}\n{}\n{}",
            click_line("e-1", "\"yesterday\""),
            click_line("e-2", "18446744073709551615"),
            click_line("e-3", "-5")
        );
        let parsed = parse_clicks(body.as_bytes(), false, MAX).expect("shape is fine");
        let e = parsed[0].clone().expect_err("bad timestamp text");
        assert!(e.to_string().starts_with("timestamp: \"yesterday\""), "{e}");
        let e = parsed[1].clone().expect_err("u64 out of range");
        assert!(
            e.to_string().starts_with("timestamp: 18446744073709551615"),
            "{e}"
        );
        // Negative ms parse; the edge check refuses them, naming the HTTP field.
        let w = parsed[2].clone().expect("parses");
        let e = checked(w).map_err(http_field).expect_err("before 1970");
        assert!(
            e.to_string().starts_with("timestamp: -5 is before 1970"),
            "{e}"
        );
        let w = wire::Click {
            ip: "1.2.3".into(),
            event_time_ms: 1,
            ..parsed[2].clone().expect("parses")
        };
        let e = checked(w).map_err(http_field).expect_err("bad ip");
        assert_eq!(e.field(), "ip");
        let r = ResultJson::invalid(&e);
        assert_eq!((r.outcome, r.reason), ("rejected", Some("invalid")));
    }

    #[test]
    fn results_read_from_the_wire() {
        let accepted = wire::EventResult::from(Outcome::Accepted);
        assert_eq!(
            ResultJson::from_wire(&accepted).expect("valid"),
            ResultJson {
                outcome: "accepted",
                reason: None,
                message: None
            }
        );
        let future = wire::EventResult::from(Outcome::Rejected(
            adclick_proto::model::RejectReason::FutureEvent,
        ));
        let r = ResultJson::from_wire(&future).expect("valid");
        assert_eq!((r.outcome, r.reason), ("rejected", Some("future_event")));
        assert!(r.message.is_some_and(|m| !m.is_empty()));
        let bad = wire::EventResult::default();
        assert!(matches!(
            ResultJson::from_wire(&bad),
            Err(Error::Internal(_))
        ));
    }

    async fn call(
        router: Router,
        req: Request<Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let resp = router.oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        let json = serde_json::from_slice(&bytes).expect("a JSON body");
        (parts.status, parts.headers, json)
    }

    /// A router with this module's error shell and extractors, without a node.
    fn shell() -> Router {
        async fn echo(body: std::result::Result<Bytes, BytesRejection>) -> Response {
            match body.map_err(|r| body_error(r, 16)) {
                Ok(b) => Json(serde_json::json!({ "len": b.len() })).into_response(),
                Err(Failure::Http(status, message)) => json_error(status, message),
                Err(Failure::Op(e)) => error_response(&e),
            }
        }
        async fn query(
            params: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
        ) -> Response {
            match query_pairs(params).and_then(top_query) {
                Ok(q) => Json(serde_json::json!({ "n": q.n })).into_response(),
                Err(e) => error_response(&e),
            }
        }
        json_errors(
            Router::new()
                .route("/echo", post(echo).layer(DefaultBodyLimit::max(16)))
                .route("/q", get(query)),
        )
    }

    #[tokio::test]
    async fn router_errors_are_json() {
        let req = |m: &str, uri: &str, body: &'static str| {
            Request::builder()
                .method(m)
                .uri(uri)
                .body(Body::from(body))
                .expect("request")
        };
        let (status, _, json) = call(shell(), req("GET", "/nowhere", "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(json["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no route for GET /nowhere")));

        let (status, headers, json) = call(shell(), req("GET", "/echo", "")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "POST");
        assert_eq!(json["error"], "/echo does not take GET");

        let (status, _, json) = call(shell(), req("POST", "/echo", "0123456789")).await;
        assert_eq!(
            (status, &json["len"]),
            (StatusCode::OK, &serde_json::json!(10))
        );
        let (status, _, json) = call(shell(), req("POST", "/echo", "0123456789abcdefXYZ")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(json["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the body is larger than the limit of 16 bytes")));

        let (status, _, json) = call(shell(), req("GET", "/q?window=5&count=%31", "")).await;
        assert_eq!(
            (status, &json["n"]),
            (StatusCode::OK, &serde_json::json!(1))
        );
        let (status, _, json) = call(shell(), req("GET", "/q?window=5&count=%ZZ", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(json["error"].is_string(), "{json}");
        let (status, _, json) = call(shell(), req("GET", "/q", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(json["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("a time range")));
    }

    #[tokio::test]
    async fn retryable_errors_carry_their_hints() {
        let overloaded = Error::Overloaded {
            message: "busy".into(),
            retry_after: std::time::Duration::from_millis(200),
        };
        let resp = error_response(&overloaded);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()[wire::metadata::RETRY_AFTER_MS], "200");

        let not_leader = Error::NotLeader {
            node: 1,
            group: 2,
            leader: Some(adclick_proto::convert::LeaderHint {
                node_id: 3,
                addr: "10.0.0.3:7400".into(),
            }),
        };
        let resp = error_response(&not_leader);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[wire::metadata::LEADER], "3@10.0.0.3:7400");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(json["leader"]["node_id"], 3);
        assert_eq!(json["error"], "node 1 does not lead group 2; retry");
    }
}
