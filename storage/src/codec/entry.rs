//! The byte encoding of Raft log entries, commands and clicks (format version
//! [`ENTRY_FORMAT_VERSION`]); the layout is documented in `docs/log-format.md`.
//!
//! An encoded entry starts with the format version and the log id, so
//! [`decode_log_id`] can index a log without decoding payloads. Clicks are encoded field by
//! field; inside an ingest batch their event times are stored relative to the batch's
//! `proposed_at_ms` (clicks are close to it, so the zigzag varint is 2-3 bytes instead of 6).
//!
//! Decoding never panics and never trusts a length: every value is rebuilt through the
//! domain constructors (`EventId::new`, `AdId::from_bytes`, `Click::validate`,
//! `Membership::new`), so a decoded value satisfies the same invariants as one built from
//! client input. Any failure is a [`DecodeError`] (corruption).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use adclick_proto::model::{
    AdId, Click, EventId, MAX_AD_ID_LEN, MAX_COUNTRY_LEN, MAX_EVENT_ID_LEN, MAX_USER_ID_LEN,
};
use bytes::Bytes;
use openraft::{BasicNode, EntryPayload, Membership};

use super::wire::{put_bytes, put_ivarint, put_uvarint, DecodeError, Reader, MAX_VARINT_LEN};
use crate::types::{log_id, Command, Entry, FilterDef, GroupSettings, IngestBatch, LogId};

/// Version byte that opens every encoded entry. Bump it (and keep decoding the old one)
/// whenever the layout below changes.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// Version byte that opens a standalone encoded click ([`encode_click`]).
pub const CLICK_FORMAT_VERSION: u8 = 1;

/// Fewest bytes an encoded entry takes: the version, three one-byte varints (term, leader
/// node, index) and the payload kind (a blank entry at term, node and index 0).
pub const MIN_ENTRY_LEN: usize = 5;
/// Most bytes the version and log id opening an entry take: [`decode_log_id`] never reads
/// further.
pub const MAX_LOG_ID_PREFIX_LEN: usize = 1 + 3 * MAX_VARINT_LEN;

/// Payload kind: a blank entry (a new leader's first entry).
pub const PAYLOAD_BLANK: u8 = 0;
/// Payload kind: an application [`Command`].
pub const PAYLOAD_NORMAL: u8 = 1;
/// Payload kind: a membership change.
pub const PAYLOAD_MEMBERSHIP: u8 = 2;

/// Command kind: [`Command::Ingest`].
pub const CMD_INGEST: u8 = 1;
/// Command kind: [`Command::Configure`].
pub const CMD_CONFIGURE: u8 = 2;
/// Command kind: [`Command::CreateFilter`].
pub const CMD_CREATE_FILTER: u8 = 3;
/// Command kind: [`Command::DropFilter`].
pub const CMD_DROP_FILTER: u8 = 4;

/// Address family tag of an IPv4 address (4 bytes follow).
pub const IP_V4: u8 = 4;
/// Address family tag of an IPv6 address (16 bytes follow).
pub const IP_V6: u8 = 6;

/// Longest filter name, filter expression or node address accepted by the decoder. Far
/// above any sane value; it only bounds what corrupt bytes can make us allocate.
pub const MAX_TEXT_LEN: usize = 1 << 20;

/// Fewest bytes one click can take inside a batch (two 1-byte ids with their lengths, a
/// 1-byte time, empty user and country, an IPv4 address): bounds the capacity a corrupt
/// click count can make us reserve.
const MIN_CLICK_LEN: usize = 2 + 2 + 1 + 1 + 5 + 1;

/// Appends the encoding of `entry` to `buf`.
pub fn encode_entry(entry: &Entry, buf: &mut Vec<u8>) {
    buf.reserve(16 + payload_size_hint(&entry.payload));
    buf.push(ENTRY_FORMAT_VERSION);
    put_uvarint(buf, entry.log_id.leader_id.term);
    put_uvarint(buf, entry.log_id.leader_id.node_id);
    put_uvarint(buf, entry.log_id.index);
    match &entry.payload {
        EntryPayload::Blank => buf.push(PAYLOAD_BLANK),
        EntryPayload::Normal(cmd) => {
            buf.push(PAYLOAD_NORMAL);
            encode_command(cmd, buf);
        }
        EntryPayload::Membership(m) => {
            buf.push(PAYLOAD_MEMBERSHIP);
            encode_membership(m, buf);
        }
    }
}

/// Decodes an entry encoded by [`encode_entry`]; the whole buffer must be consumed.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut r = Reader::new(bytes);
    let log_id = read_log_id(&mut r)?;
    let payload = match r.u8("payload kind")? {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => EntryPayload::Normal(read_command(&mut r)?),
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(read_membership(&mut r)?),
        k => {
            return Err(DecodeError::new(
                r.position() - 1,
                format!("unknown payload kind {k}"),
            ))
        }
    };
    r.finish()?;
    Ok(Entry { log_id, payload })
}

/// Decodes only the version and log id at the start of an encoded entry (for indexing a log
/// without decoding payloads).
pub fn decode_log_id(bytes: &[u8]) -> Result<LogId, DecodeError> {
    read_log_id(&mut Reader::new(bytes))
}

fn read_log_id(r: &mut Reader<'_>) -> Result<LogId, DecodeError> {
    let version = r.u8("format version")?;
    if version != ENTRY_FORMAT_VERSION {
        return Err(DecodeError::new(
            0,
            format!("unsupported entry format version {version}"),
        ));
    }
    let term = r.uvarint("term")?;
    let node_id = r.uvarint("leader node id")?;
    let index = r.uvarint("index")?;
    Ok(log_id(term, node_id, index))
}

/// Appends the encoding of a command (kind tag, then its fields) to `buf`.
pub fn encode_command(cmd: &Command, buf: &mut Vec<u8>) {
    match cmd {
        Command::Ingest(batch) => {
            buf.push(CMD_INGEST);
            put_ivarint(buf, batch.proposed_at_ms);
            put_uvarint(buf, batch.clicks.len() as u64);
            for click in &batch.clicks {
                put_click(click, batch.proposed_at_ms, buf);
            }
        }
        Command::Configure(s) => {
            buf.push(CMD_CONFIGURE);
            put_ivarint(buf, s.allowed_lateness_ms);
            put_ivarint(buf, s.max_future_skew_ms);
        }
        Command::CreateFilter(def) => {
            buf.push(CMD_CREATE_FILTER);
            put_bytes(buf, def.name.as_bytes());
            put_bytes(buf, def.expr.as_bytes());
        }
        Command::DropFilter { name } => {
            buf.push(CMD_DROP_FILTER);
            put_bytes(buf, name.as_bytes());
        }
    }
}

/// Decodes a command encoded by [`encode_command`]; the whole buffer must be consumed.
pub fn decode_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    let mut r = Reader::new(bytes);
    let cmd = read_command(&mut r)?;
    r.finish()?;
    Ok(cmd)
}

fn read_command(r: &mut Reader<'_>) -> Result<Command, DecodeError> {
    let kind_at = r.position();
    match r.u8("command kind")? {
        CMD_INGEST => {
            let proposed_at_ms = r.ivarint("proposed_at_ms")?;
            let count_at = r.position();
            let count = r.uvarint("click count")?;
            let max = (r.remaining() / MIN_CLICK_LEN) as u64;
            if count > max {
                return Err(DecodeError::new(
                    count_at,
                    format!(
                        "click count {count} cannot fit in the {} bytes left",
                        r.remaining()
                    ),
                ));
            }
            // `count <= max`, which came from a usize.
            let mut clicks = Vec::with_capacity(count as usize);
            for _ in 0..count {
                clicks.push(read_click(r, proposed_at_ms)?);
            }
            Ok(Command::Ingest(IngestBatch {
                proposed_at_ms,
                clicks,
            }))
        }
        CMD_CONFIGURE => Ok(Command::Configure(GroupSettings {
            allowed_lateness_ms: r.ivarint("allowed_lateness_ms")?,
            max_future_skew_ms: r.ivarint("max_future_skew_ms")?,
        })),
        CMD_CREATE_FILTER => Ok(Command::CreateFilter(FilterDef {
            name: r.string(MAX_TEXT_LEN, "filter name")?,
            expr: r.string(MAX_TEXT_LEN, "filter expression")?,
        })),
        CMD_DROP_FILTER => Ok(Command::DropFilter {
            name: r.string(MAX_TEXT_LEN, "filter name")?,
        }),
        k => Err(DecodeError::new(
            kind_at,
            format!("unknown command kind {k}"),
        )),
    }
}

/// Appends a standalone click (version byte, then the fields with an absolute event time).
/// For the state machine, which may keep raw clicks outside the log.
pub fn encode_click(click: &Click, buf: &mut Vec<u8>) {
    buf.push(CLICK_FORMAT_VERSION);
    put_click(click, 0, buf);
}

/// Decodes a click encoded by [`encode_click`]; the whole buffer must be consumed.
pub fn decode_click(bytes: &[u8]) -> Result<Click, DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("click format version")?;
    if version != CLICK_FORMAT_VERSION {
        return Err(DecodeError::new(
            0,
            format!("unsupported click format version {version}"),
        ));
    }
    let click = read_click(&mut r, 0)?;
    r.finish()?;
    Ok(click)
}

/// One click's fields; the event time is stored as `event_time_ms - base_ms`.
fn put_click(click: &Click, base_ms: i64, buf: &mut Vec<u8>) {
    put_bytes(buf, click.event_id.as_bytes());
    put_bytes(buf, click.ad_id.as_bytes());
    // Wrapping both ways makes every (time, base) pair round-trip, even absurd ones.
    put_ivarint(buf, click.event_time_ms.wrapping_sub(base_ms));
    put_bytes(buf, click.user_id.as_bytes());
    match click.ip {
        IpAddr::V4(ip) => {
            buf.push(IP_V4);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(IP_V6);
            buf.extend_from_slice(&ip.octets());
        }
    }
    put_bytes(buf, click.country.as_bytes());
}

fn read_click(r: &mut Reader<'_>, base_ms: i64) -> Result<Click, DecodeError> {
    let start = r.position();
    let at = r.position();
    let event_id = EventId::new(Bytes::copy_from_slice(
        r.bytes(MAX_EVENT_ID_LEN, "event_id")?,
    ))
    .map_err(|e| DecodeError::new(at, e.to_string()))?;
    let at = r.position();
    let ad_id = AdId::from_bytes(Bytes::copy_from_slice(r.bytes(MAX_AD_ID_LEN, "ad_id")?))
        .map_err(|e| DecodeError::new(at, e.to_string()))?;
    let event_time_ms = r.ivarint("event_time")?.wrapping_add(base_ms);
    let user_id = r.string(MAX_USER_ID_LEN, "user_id")?;
    let at = r.position();
    let ip = match r.u8("ip family")? {
        IP_V4 => {
            let b: [u8; 4] = r
                .take(4, "ipv4 address")?
                .try_into()
                .map_err(|_| DecodeError::new(at, "ipv4 address"))?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        IP_V6 => {
            let b: [u8; 16] = r
                .take(16, "ipv6 address")?
                .try_into()
                .map_err(|_| DecodeError::new(at, "ipv6 address"))?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        f => return Err(DecodeError::new(at, format!("unknown ip family {f}"))),
    };
    let country = r.string(MAX_COUNTRY_LEN, "country")?;
    let click = Click {
        event_id,
        ad_id,
        event_time_ms,
        user_id,
        ip,
        country,
    };
    click
        .validate()
        .map_err(|e| DecodeError::new(start, e.to_string()))?;
    Ok(click)
}

fn encode_membership(m: &Membership<u64, BasicNode>, buf: &mut Vec<u8>) {
    let configs = m.get_joint_config();
    put_uvarint(buf, configs.len() as u64);
    for config in configs {
        put_uvarint(buf, config.len() as u64);
        for id in config {
            put_uvarint(buf, *id);
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    put_uvarint(buf, nodes.len() as u64);
    for (id, node) in nodes {
        put_uvarint(buf, *id);
        put_bytes(buf, node.addr.as_bytes());
    }
}

fn read_membership(r: &mut Reader<'_>) -> Result<Membership<u64, BasicNode>, DecodeError> {
    let start = r.position();
    // Every id takes at least one byte, so a count can never exceed the bytes left.
    let n_configs = r.len(usize::MAX, "membership config count")?;
    let mut configs = Vec::with_capacity(n_configs);
    for _ in 0..n_configs {
        let n = r.len(usize::MAX, "membership config size")?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            let at = r.position();
            let id = r.uvarint("voter id")?;
            // BTreeSet iterates in ascending order; anything else was not written by us.
            if set.last().is_some_and(|&last| id <= last) {
                return Err(DecodeError::new(at, "voter ids not strictly ascending"));
            }
            set.insert(id);
        }
        configs.push(set);
    }
    let n_nodes = r.len(usize::MAX, "membership node count")?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n_nodes {
        let at = r.position();
        let id = r.uvarint("node id")?;
        if nodes.last_key_value().is_some_and(|(&last, _)| id <= last) {
            return Err(DecodeError::new(at, "node ids not strictly ascending"));
        }
        let addr = r.string(MAX_TEXT_LEN, "node address")?;
        nodes.insert(id, BasicNode { addr });
    }
    Membership::new(configs, nodes)
        .map_err(|e| DecodeError::new(start, format!("invalid membership: {e}")))
}

/// A cheap upper-ish estimate of a payload's encoded size, to size the buffer once.
fn payload_size_hint(payload: &EntryPayload<Command, u64, BasicNode>) -> usize {
    match payload {
        EntryPayload::Normal(Command::Ingest(b)) => 16 + b.clicks.len() * 100,
        EntryPayload::Membership(_) => 128,
        _ => 64,
    }
}
