//! `adclick ingest`: reads clicks from a file or stdin, sends them through a
//! [`Producer`], and reports every line that was not counted, by line number.
//!
//! Formats:
//! - `seed`: `[AdClickEvent] ad001, 2024-07-09 00:00:01, user-1, 207.148.22.22, USA` (the
//!   `[AdClickEvent]` tag is optional; the time is UTC, or RFC 3339, or epoch ms). A line
//!   carries no event id, so one is derived from the source and the line's byte offset:
//!   ingesting the same file again, or a longer version of it (a log that grew), sends the
//!   same ids for the same lines and counts nothing twice. The source is identified by its
//!   first non-blank line (so a copy of the file, renamed or moved, is the same source)
//!   unless `--source-id` names it; two different files that start with the same line need
//!   distinct `--source-id`s.
//! - `jsonl`: one JSON click object per line, with its own `event_id` (the `POST /clicks`
//!   object: `event_id`, `ad_id`, `timestamp`, `ip`, optional `user_id`, `country`).
//!
//! Blank lines are skipped. A line that does not parse, or a click the cluster rejects, is
//! reported with its line number and the rest goes on.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_client::model::{Click, Outcome, Tally};
use adclick_client::{Client, Delivery, Producer, ProducerConfig};
use adclick_proto::wire;
use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::output::{parse_time, Output};

/// The most bad lines printed one by one; the rest are counted.
const MAX_REPORTED_LINES: usize = 100;

/// How often `--follow` looks for new data at the end of the file.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `[AdClickEvent] ad_id, YYYY-MM-DD HH:MM:SS, user_id, ip, country`
    Seed,
    /// One JSON click object per line, with its own event_id.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The file to read, or `-` for stdin.
    file: String,
    /// The line format.
    #[arg(long, value_enum, default_value_t = Format::Seed)]
    format: Format,
    /// Keep reading as the file grows, like `tail -f`, until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Name of the source that seed-format event ids derive from (default: the file's
    /// first non-blank line).
    #[arg(long, value_name = "ID")]
    source_id: Option<String>,
    /// Clicks per request.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

/// A line that was not counted, and why.
#[derive(Debug, Clone)]
struct BadLine {
    line: u64,
    reason: String,
}

/// What the run has done so far, shared with the progress display.
#[derive(Debug, Default)]
struct Progress {
    lines: AtomicU64,
    bytes: AtomicU64,
    tally: Mutex<Tally>,
    bad: Mutex<Vec<BadLine>>,
    bad_count: AtomicU64,
    unconfirmed: AtomicU64,
}

impl Progress {
    fn bad(&self, line: u64, reason: String) {
        self.bad_count.fetch_add(1, Ordering::Relaxed);
        let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        if bad.len() < MAX_REPORTED_LINES {
            bad.push(BadLine { line, reason });
        }
    }

    fn tally(&self) -> Tally {
        *self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Turns lines into clicks: the format's parser and, for seed files, the event ids.
#[derive(Debug)]
struct LineParser {
    format: Format,
    /// The hash of the source identity (seed format), once known.
    source: Option<[u8; 16]>,
}

impl LineParser {
    fn new(format: Format, source_id: Option<&str>) -> Self {
        LineParser {
            format,
            source: source_id.map(|s| source_hash(s.as_bytes())),
        }
    }

    /// Parses one non-blank line that starts at byte `offset` of the source.
    fn parse(&mut self, line: &str, offset: u64) -> Result<Click, String> {
        let wire = match self.format {
            Format::Jsonl => {
                adclick_proto::json::parse_line(line.as_bytes())?.map_err(|e| e.to_string())?
            }
            Format::Seed => {
                let source = *self
                    .source
                    .get_or_insert_with(|| source_hash(line.as_bytes()));
                parse_seed_line(line, seed_event_id(&source, offset))?
            }
        };
        Click::try_from(wire).map_err(|e| e.to_string())
    }
}

/// The 16-byte hash identifying a seed source.
fn source_hash(identity: &[u8]) -> [u8; 16] {
    let mut input = b"adclick seed source v1\n".to_vec();
    input.extend_from_slice(identity);
    xxhash_rust::xxh3::xxh3_128(&input).to_be_bytes()
}

/// A seed line's event id: its source hash, then its byte offset (big-endian), 24 bytes.
fn seed_event_id(source: &[u8; 16], offset: u64) -> Bytes {
    let mut id = Vec::with_capacity(24);
    id.extend_from_slice(source);
    id.extend_from_slice(&offset.to_be_bytes());
    Bytes::from(id)
}

/// Parses `[AdClickEvent] ad001, 2024-07-09 00:00:01, user-1, 207.148.22.22, USA` into a
/// wire click (checked when converted to a domain click).
fn parse_seed_line(line: &str, event_id: Bytes) -> Result<wire::Click, String> {
    let body = line.trim();
    let body = body.strip_prefix("[AdClickEvent]").unwrap_or(body);
    let fields: Vec<&str> = body.split(',').map(str::trim).collect();
    let [ad_id, time, user_id, ip, country] = fields[..] else {
        return Err(format!(
            "expected 5 comma-separated fields (ad_id, time, user_id, ip, country), found {}",
            fields.len()
        ));
    };
    Ok(wire::Click {
        event_id,
        ad_id: ad_id.to_owned(),
        event_time_ms: parse_time("time", time).map_err(|e| e.to_string())?,
        user_id: user_id.to_owned(),
        ip: ip.to_owned(),
        country: country.to_owned(),
    })
}

pub async fn run(client: Client, args: IngestArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.follow && args.file == "-" {
        anyhow::bail!("--follow needs a file, not stdin");
    }
    let (reader, size): (Box<dyn AsyncBufRead + Unpin + Send>, Option<u64>) = if args.file == "-" {
        (Box::new(BufReader::new(tokio::io::stdin())), None)
    } else {
        let path = Path::new(&args.file);
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().await.ok().map(|m| m.len());
        (
            Box::new(BufReader::with_capacity(1 << 20, file)),
            size.filter(|_| !args.follow),
        )
    };
    let mut config = ProducerConfig::default();
    config.max_batch_clicks = args.batch as usize;
    config.linger = Duration::from_millis(20);
    let producer = Producer::new(client, config)?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let show = std::io::stderr().is_terminal();
    let ticker = show.then(|| tokio::spawn(show_progress(Arc::clone(&progress), size, started)));

    let (tx, rx) = mpsc::channel::<(u64, Delivery)>(100_000);
    let collector = tokio::spawn(collect(rx, Arc::clone(&progress)));
    let parser = LineParser::new(args.format, args.source_id.as_deref());
    let read = read_lines(reader, parser, &producer, &tx, &progress, args.follow).await;
    drop(tx);
    let stats = producer.close().await;
    collector.await.context("the result collector failed")?;
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[2K");
    }
    read?;
    report(&args.file, &progress, started.elapsed(), stats.batches, out)
}

/// Reads every line, sending the clicks and recording the bad lines, until the end of the
/// input (or Ctrl-C with `follow`).
async fn read_lines(
    mut reader: Box<dyn AsyncBufRead + Unpin + Send>,
    mut parser: LineParser,
    producer: &Producer,
    deliveries: &mpsc::Sender<(u64, Delivery)>,
    progress: &Progress,
    follow: bool,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let n = reader
            .read_until(b'\n', &mut buf)
            .await
            .context("reading the input")?;
        let complete = buf.ends_with(b"\n");
        if !complete && follow {
            // At the end of the file, maybe mid-line: wait for more (the partial line stays
            // in `buf` and is completed by the next read).
            tokio::select! {
                _ = &mut interrupted => break,
                () = tokio::time::sleep(FOLLOW_POLL) => continue,
            }
        }
        if n == 0 && buf.is_empty() {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += buf.len() as u64;
        progress.lines.store(line_no, Ordering::Relaxed);
        progress.bytes.store(offset, Ordering::Relaxed);
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim_end_matches(['\n', '\r']),
            Err(e) => {
                progress.bad(line_no, format!("not UTF-8 text: {e}"));
                buf.clear();
                continue;
            }
        };
        if !text.trim().is_empty() {
            match parser.parse(text, start) {
                Ok(click) => {
                    let delivery = producer.send(click).await?;
                    // The collector only stops once this sender is dropped.
                    if deliveries.send((line_no, delivery)).await.is_err() {
                        anyhow::bail!("the result collector stopped early");
                    }
                }
                Err(reason) => progress.bad(line_no, reason),
            }
        }
        buf.clear();
        if !complete {
            break;
        }
    }
    Ok(())
}

/// Awaits every click's result in order, tallying outcomes and recording the lines that
/// were rejected or whose batch failed.
async fn collect(mut rx: mpsc::Receiver<(u64, Delivery)>, progress: Arc<Progress>) {
    while let Some((line, delivery)) = rx.recv().await {
        match delivery.await {
            Ok(result) => {
                progress
                    .tally
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(result.outcome);
                if let Outcome::Rejected(reason) = result.outcome {
                    progress.bad(line, format!("rejected ({reason}): {}", result.message));
                }
            }
            Err(e) => {
                progress.unconfirmed.fetch_add(1, Ordering::Relaxed);
                progress.bad(line, format!("not confirmed, ingest it again: {e}"));
            }
        }
    }
}

/// Redraws one progress line on stderr four times a second.
async fn show_progress(progress: Arc<Progress>, size: Option<u64>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let lines = progress.lines.load(Ordering::Relaxed);
        let t = progress.tally();
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let pct = size
            .filter(|&s| s > 0)
            .map(|s| {
                let done = progress.bytes.load(Ordering::Relaxed) as f64 / s as f64;
                format!("{:5.1}%  ", 100.0 * done)
            })
            .unwrap_or_default();
        eprint!(
            "\r\x1b[2K{pct}{lines} lines, {} counted ({:.0}/s), {} duplicate, {} late, {} bad",
            t.accepted,
            t.total() as f64 / secs,
            t.duplicate,
            t.late,
            progress.bad_count.load(Ordering::Relaxed),
        );
    }
}

fn report(
    file: &str,
    progress: &Progress,
    elapsed: Duration,
    batches: u64,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let t = progress.tally();
    let lines = progress.lines.load(Ordering::Relaxed);
    let bad_count = progress.bad_count.load(Ordering::Relaxed);
    let unconfirmed = progress.unconfirmed.load(Ordering::Relaxed);
    let mut bad = progress
        .bad
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    bad.sort_by_key(|b| b.line);
    if out.is_json() {
        let errors: Vec<_> = bad
            .iter()
            .map(|b| json!({ "line": b.line, "error": b.reason }))
            .collect();
        out.json(&json!({
            "file": file, "lines": lines, "batches": batches,
            "seconds": elapsed.as_secs_f64(),
            "tally": Output::tally_json(&t),
            "bad_lines": bad_count, "unconfirmed": unconfirmed,
            "errors": errors,
        }));
    } else {
        println!(
            "{file}: {lines} lines in {:.1} s: accepted {}, duplicate {}, late {}, rejected {}, \
             unparsable {}, unconfirmed {unconfirmed}",
            elapsed.as_secs_f64(),
            t.accepted,
            t.duplicate,
            t.late,
            t.rejected,
            bad_count - t.rejected - unconfirmed,
        );
        for b in &bad {
            eprintln!("line {}: {}", b.line, b.reason);
        }
        if bad_count > bad.len() as u64 {
            eprintln!("... and {} more", bad_count - bad.len() as u64);
        }
    }
    Ok(if bad_count > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "[AdClickEvent] ad001, 2024-07-09 00:00:01, user-1, 207.148.22.22, USA";

    #[test]
    fn a_seed_line_becomes_a_click() {
        let mut p = LineParser::new(Format::Seed, None);
        let c = p.parse(LINE, 0).expect("valid");
        assert_eq!(c.ad_id.as_str(), "ad001");
        assert_eq!(c.event_time_ms, 1_720_483_201_000);
        assert_eq!(c.user_id, "user-1");
        assert_eq!(c.ip.to_string(), "207.148.22.22");
        assert_eq!(c.country, "USA");
        // Without the tag, too.
        let c2 = p
            .parse(LINE.trim_start_matches("[AdClickEvent]"), 70)
            .expect("valid");
        assert_eq!(c2.ad_id, c.ad_id);
    }

    #[test]
    fn seed_event_ids_follow_the_source_and_offset_only() {
        let id = |source: Option<&str>, first: &str, offset| {
            let mut p = LineParser::new(Format::Seed, source);
            p.parse(first, 0).expect("first line");
            p.parse(LINE, offset).expect("line").event_id
        };
        // Same source, same offset: same id, whichever run reads it.
        assert_eq!(id(None, LINE, 70), id(None, LINE, 70));
        // Another offset or another source: another id.
        assert_ne!(id(None, LINE, 70), id(None, LINE, 140));
        let other = "ad002, 2024-07-09 00:00:02, u, 1.2.3.4, USA";
        assert_ne!(id(None, LINE, 70), id(None, other, 70));
        // An explicit source id wins over the first line.
        assert_eq!(id(Some("s"), LINE, 70), id(Some("s"), other, 70));
        assert_eq!(id(None, LINE, 70).as_bytes().len(), 24);
    }

    #[test]
    fn bad_seed_lines_say_what_is_wrong() {
        let mut p = LineParser::new(Format::Seed, Some("s"));
        let e = p
            .parse("ad001, 2024-07-09 00:00:01, u, 1.2.3.4", 0)
            .expect_err("4");
        assert!(e.contains("found 4"), "{e}");
        let e = p
            .parse("ad 1, 2024-07-09 00:00:01, u, 1.2.3.4, USA", 0)
            .expect_err("ad");
        assert!(e.contains("ad_id"), "{e}");
        let e = p
            .parse("ad1, 2024-07-09 99:00:01, u, 1.2.3.4, USA", 0)
            .expect_err("time");
        assert!(e.contains("time"), "{e}");
        let e = p
            .parse("ad1, 2024-07-09 00:00:01, u, 1.2.3, USA", 0)
            .expect_err("ip");
        assert!(e.contains("ip"), "{e}");
    }

    #[test]
    fn jsonl_lines_carry_their_own_ids() {
        let mut p = LineParser::new(Format::Jsonl, None);
        let line = r#"{"event_id":"e-7","ad_id":"ad001","timestamp":1720483201000,"ip":"::1"}"#;
        let c = p.parse(line, 999).expect("valid");
        assert_eq!(c.event_id.as_bytes(), b"e-7");
        let e = p
            .parse(r#"{"event_id":"e","ad_id":"a"}"#, 0)
            .expect_err("missing");
        assert!(e.contains("missing field"), "{e}");
        let e = p
            .parse(r#"{"event_id":"","ad_id":"a","timestamp":1,"ip":"::1"}"#, 0)
            .expect_err("empty id");
        assert!(e.contains("event_id"), "{e}");
    }
}
