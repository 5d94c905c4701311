//! What install checks about a snapshot's *contents* before it changes anything.
//!
//! [`super::snapshot`] checks the file's structure (magic, version, lengths, crcs, key
//! order, footer). Checksums prove the bytes are the ones the sender wrote, not that the
//! sender wrote a state this code can load: a buggy or hostile peer can send a
//! well-formed file of nonsense. Installed unchecked, such a file is published (older
//! snapshots deleted), replaces the group's keys, and only then fails to reload, leaving
//! a database that no longer opens. So every record is decoded here, as `open` would
//! decode it, and compared with the header, before the file is published.
//!
//! Per record (keys without their group prefix, in ascending order, so meta and filters
//! come before the counters that refer to them):
//! - meta: only the applied id, membership, settings and clock, each decoding; settings
//!   not negative; the applied id and membership equal the header's (absent means
//!   nothing applied / the default membership);
//! - filter: a valid name, a decodable record whose expression compiles, an id no greater
//!   than the applied index and not used by another filter;
//! - counter, late tally: a valid key and a value of at most [`format::MAX_COUNT`];
//! - filter counter: as a counter, and its filter is one of the snapshot's filters;
//! - dedup id (first layout): a valid key (1..=64 byte event id) and an empty value;
//! - dedup block: a valid key and a block of 1..=64 byte ids (see `format::DedupBlock`).
//!
//! Anything else (the install marker included) is refused.

use std::collections::BTreeSet;

use adclick_proto::model::EventId;

use super::filters;
use super::format::{self, meta, tag, DecodeResult, Keys, Malformed};
use crate::types::{LogId, SnapshotMeta, StoredMembership};

/// Checks a snapshot's records one by one, then against its header.
pub struct RecordCheck<'h> {
    keys: Keys,
    header: &'h SnapshotMeta,
    applied: Option<LogId>,
    membership: Option<StoredMembership>,
    filter_ids: BTreeSet<u64>,
    key: Vec<u8>,
}

fn bad<T>(why: impl Into<String>) -> DecodeResult<T> {
    Err(Malformed(why.into()))
}

impl<'h> RecordCheck<'h> {
    /// Checks records destined for `keys`' group, of a snapshot whose header is `header`.
    pub fn new(keys: Keys, header: &'h SnapshotMeta) -> Self {
        RecordCheck {
            keys,
            header,
            applied: None,
            membership: None,
            filter_ids: BTreeSet::new(),
            key: Vec::new(),
        }
    }

    /// Checks one record: `suffix` is the key without its group prefix.
    pub fn record(&mut self, suffix: &[u8], value: &[u8]) -> DecodeResult<()> {
        // One buffer for every record's full key, not an allocation each.
        self.keys.rehome_into(&mut self.key, suffix);
        let (key, keys) = (&self.key, &self.keys);
        match suffix {
            [tag::META, id] => match *id {
                meta::APPLIED => self.applied = Some(format::decode_log_id(value)?),
                meta::MEMBERSHIP => self.membership = Some(format::decode_membership(value)?),
                meta::SETTINGS => {
                    let s = format::decode_settings(value)?;
                    if s.allowed_lateness_ms < 0 || s.max_future_skew_ms < 0 {
                        return bad(format!("negative settings {s:?}"));
                    }
                }
                meta::CLOCK => {
                    format::decode_clock(value)?;
                }
                other => return bad(format!("meta key {other:#04x} is not state")),
            },
            [tag::FILTER, ..] => {
                let name = format::parse_filter_key(keys, key)?;
                let record = format::decode_filter(value)?;
                filters::reload(name, &record)
                    .map_err(|why| Malformed(format!("filter {name:?}: {why}")))?;
                if self.header.last_log_id.is_none_or(|l| record.id > l.index) {
                    return bad(format!(
                        "filter {name:?} has id {} beyond the applied index",
                        record.id
                    ));
                }
                if !self.filter_ids.insert(record.id) {
                    return bad(format!("filter id {} used twice", record.id));
                }
            }
            [tag::COUNT, ..] => {
                format::parse_count_key(keys, key)?;
                format::decode_count(value)?;
            }
            [tag::FILTER_COUNT, ..] => {
                let (id, _, _) = format::parse_filter_count_key(keys, key)?;
                if !self.filter_ids.contains(&id) {
                    return bad(format!("counter of unknown filter id {id}"));
                }
                format::decode_count(value)?;
            }
            [tag::LATE, ..] => {
                format::parse_late_key(keys, key)?;
                format::decode_count(value)?;
            }
            [tag::DEDUP_IDS, ..] => {
                let (_, id) = format::parse_dedup_id_key(keys, key)?;
                EventId::new(id.to_vec()).map_err(|e| Malformed(format!("dedup id: {e}")))?;
                if !value.is_empty() {
                    return bad(format!("dedup value of {} bytes", value.len()));
                }
            }
            [tag::DEDUP, ..] => {
                format::parse_dedup_block_key(keys, key)?;
                format::decode_dedup_block(value, |_| ())?;
            }
            _ => return bad(format!("record key {suffix:02x?} is not a state key")),
        }
        Ok(())
    }

    /// Checks what the records said against the header.
    pub fn finish(self) -> DecodeResult<()> {
        if self.applied != self.header.last_log_id {
            return bad(format!(
                "records hold applied id {:?}, header says {:?}",
                self.applied, self.header.last_log_id
            ));
        }
        let membership = self.membership.unwrap_or_default();
        if membership != self.header.last_membership {
            return bad(format!(
                "records hold membership {membership:?}, header says {:?}",
                self.header.last_membership
            ));
        }
        Ok(())
    }
}
