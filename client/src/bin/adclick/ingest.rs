//! `adclick ingest`: reads clicks from a file or stdin, sends them through a
//! [`Producer`], and reports every line that was not counted, by line number.
//!
//! Formats:
//! - `seed`: `[AdClickEvent] ad001, 2024-07-09 00:00:01, user-1, 207.148.22.22, USA` (the
//!   `[AdClickEvent]` tag is optional; the time is UTC, or RFC 3339, or epoch ms). A line
//!   carries no event id, so one is derived from the source, the line's byte offset and
//!   its text: ingesting the same file again, or a longer version of it (a log that grew),
//!   sends the same ids for the same lines and counts nothing twice. The source is
//!   identified by its first non-blank line (so a copy of the file, renamed or moved, is
//!   the same source) unless `--source-id` names it. On stdin the offsets start where the
//!   stream starts, so feed whole files (`cat f |`), not a tail of one.
//! - `jsonl`: one JSON click object per line, with its own `event_id` (the `POST /clicks`
//!   object: `event_id`, `ad_id`, `timestamp`, `ip`, optional `user_id`, `country`).
//!
//! Blank lines are skipped. A line that does not parse, or a click the cluster rejects, is
//! reported with its line number and the rest goes on. A line longer than 64 KiB is skipped
//! unread; a file's last line without a newline is held back (it may be half-written).
//! With `--follow`, a file that is truncated or replaced (rotated) stops the command.

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
                parse_seed_line(line, seed_event_id(&source, offset, line))?
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

/// A seed line's event id, 32 bytes: its source hash, its byte offset (big-endian), and
/// the xxh3-64 of the line's text (big-endian). The same line of the same source always
/// gets the same id; the line hash keeps two sources that happen to share a first line
/// (a common header) from claiming each other's clicks at equal offsets.
fn seed_event_id(source: &[u8; 16], offset: u64, line: &str) -> Bytes {
    let mut id = Vec::with_capacity(32);
    id.extend_from_slice(source);
    id.extend_from_slice(&offset.to_be_bytes());
    id.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(line.as_bytes()).to_be_bytes());
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

/// Opens `file` (`-` is stdin) for reading: the reader, the source it identifies, and the
/// file's length when it has one.
async fn open_input(
    file: &str,
) -> anyhow::Result<(Box<dyn AsyncBufRead + Unpin + Send>, Source, Option<u64>)> {
    if file == "-" {
        return Ok((
            Box::new(BufReader::new(tokio::io::stdin())),
            Source::Stdin,
            None,
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(file);
    let opened = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = opened
        .metadata()
        .await
        .with_context(|| format!("reading {}'s metadata", path.display()))?;
    let source = Source::File {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    Ok((
        Box::new(BufReader::with_capacity(1 << 20, opened)),
        source,
        Some(meta.len()),
    ))
}

pub async fn run(client: Client, args: IngestArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if args.follow && args.file == "-" {
        anyhow::bail!("--follow needs a file, not stdin");
    }
    let (reader, source, len) = open_input(&args.file).await?;
    let size = len.filter(|_| !args.follow);
    // With --follow, Ctrl-C ends the reading and the clicks read so far are still sent
    // and reported; without it, Ctrl-C interrupts as usual (re-running is safe).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if args.follow {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
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
    let lines = LineReader::new(reader, source, args.follow, stop);
    let read = read_lines(lines, parser, &producer, &tx, &progress).await;
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

/// The longest line read; a valid click is far shorter (under 1 KiB), so a longer line is
/// not a click (a binary file, a whole JSON array on one line) and is skipped unread.
const MAX_LINE_BYTES: usize = 64 << 10;

/// One line of the input: its number (from 1), its byte offset, and its text or why it
/// cannot be used.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    no: u64,
    offset: u64,
    text: Result<String, String>,
}

/// What the reader is reading: stdin, or a file (whose identity `--follow` watches).
#[derive(Debug, Clone)]
enum Source {
    Stdin,
    File {
        path: std::path::PathBuf,
        /// Device and inode of the opened file.
        id: (u64, u64),
    },
}

/// Splits the input into lines with their offsets, bounding each line's length.
struct LineReader {
    reader: Box<dyn AsyncBufRead + Unpin + Send>,
    source: Source,
    follow: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
    buf: Vec<u8>,
    /// Bytes of the current line beyond `MAX_LINE_BYTES`, skipped rather than kept.
    skipped: u64,
    offset: u64,
    no: u64,
}

impl LineReader {
    fn new(
        reader: Box<dyn AsyncBufRead + Unpin + Send>,
        source: Source,
        follow: bool,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        LineReader {
            reader,
            source,
            follow,
            stop,
            buf: Vec::new(),
            skipped: 0,
            offset: 0,
            no: 0,
        }
    }

    /// The next line, `None` at the end of the input (or once stopped). A final line
    /// without a newline is complete on stdin (the writer closed it); in a file it may
    /// still be being written, so it is reported and not sent: sending it half-written
    /// would pin a wrong click to its event id for good.
    async fn next(&mut self) -> anyhow::Result<Option<Line>> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let chunk = self.reader.fill_buf().await.context("reading the input")?;
            if chunk.is_empty() {
                if self.buf.is_empty() && self.skipped == 0 {
                    if !self.follow {
                        return Ok(None);
                    }
                } else if !self.follow {
                    let complete = matches!(self.source, Source::Stdin);
                    return Ok(Some(self.take(complete)));
                }
                self.check_still_same_file()?;
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
            let (part, newline) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..=i], true),
                None => (chunk, false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.buf.len());
            if part.len() <= room && self.skipped == 0 {
                self.buf.extend_from_slice(part);
            } else {
                self.skipped += part.len() as u64;
            }
            let used = part.len();
            self.reader.consume(used);
            if newline {
                return Ok(Some(self.take(true)));
            }
        }
    }

    /// Ends the current line: `complete` if it ended with a newline or the input closed.
    fn take(&mut self, complete: bool) -> Line {
        self.no += 1;
        let len = self.buf.len() as u64 + self.skipped;
        let line = Line {
            no: self.no,
            offset: self.offset,
            text: if self.skipped > 0 {
                Err(format!(
                    "longer than {} KiB: not a click",
                    MAX_LINE_BYTES >> 10
                ))
            } else if !complete {
                Err(
                    "incomplete: no newline at the end of the file (still being written?); \
                     not sent: end the line and ingest the file again"
                        .into(),
                )
            } else {
                match std::str::from_utf8(&self.buf) {
                    Ok(t) => Ok(t.trim_end_matches(['\n', '\r']).to_owned()),
                    Err(e) => Err(format!("not UTF-8 text: {e}")),
                }
            },
        };
        self.offset += len;
        self.buf.clear();
        self.skipped = 0;
        line
    }

    /// With `--follow`, at the end of the data: the path must still name the file being
    /// read and the file must not have shrunk, or offsets (and so event ids) would no
    /// longer mean the same lines.
    fn check_still_same_file(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Source::File { path, id } = &self.source else {
            return Ok(());
        };
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{} is gone (rotated?): stopping", path.display()))?;
        if (meta.dev(), meta.ino()) != *id {
            anyhow::bail!(
                "{} now names another file (rotated?): stopping; ingest the rotated file \
                 and start again on the new one",
                path.display()
            );
        }
        let read = self.offset + self.buf.len() as u64 + self.skipped;
        if meta.len() < read {
            anyhow::bail!(
                "{} shrank below the {read} bytes already read (truncated?): stopping",
                path.display()
            );
        }
        Ok(())
    }
}

/// Reads every line, sending the clicks and recording the bad lines, until the end of the
/// input (or Ctrl-C with `follow`).
async fn read_lines(
    mut lines: LineReader,
    mut parser: LineParser,
    producer: &Producer,
    deliveries: &mpsc::Sender<(u64, Delivery)>,
    progress: &Progress,
) -> anyhow::Result<()> {
    while let Some(line) = lines.next().await? {
        progress.lines.store(line.no, Ordering::Relaxed);
        progress.bytes.store(lines.offset, Ordering::Relaxed);
        let text = match line.text {
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => t,
            Err(reason) => {
                progress.bad(line.no, reason);
                continue;
            }
        };
        match parser.parse(&text, line.offset) {
            Ok(click) => {
                let delivery = producer.send(click).await?;
                // The collector only stops once this sender is dropped.
                if deliveries.send((line.no, delivery)).await.is_err() {
                    anyhow::bail!("the result collector stopped early");
                }
            }
            Err(reason) => progress.bad(line.no, reason),
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
                let what = if e.is_retryable() {
                    "not confirmed (ingesting the file again is safe)"
                } else {
                    "not sent"
                };
                progress.bad(line, format!("{what}: {e}"));
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
    fn seed_event_ids_follow_the_source_offset_and_text() {
        let id = |source: Option<&str>, first: &str, line: &str, offset| {
            let mut p = LineParser::new(Format::Seed, source);
            p.parse(first, 0).expect("first line");
            p.parse(line, offset).expect("line").event_id
        };
        // Same source, line and offset: same id, whichever run reads it.
        assert_eq!(id(None, LINE, LINE, 70), id(None, LINE, LINE, 70));
        // Another offset or another source: another id.
        assert_ne!(id(None, LINE, LINE, 70), id(None, LINE, LINE, 140));
        let other = "ad002, 2024-07-09 00:00:02, u, 1.2.3.4, USA";
        assert_ne!(id(None, LINE, LINE, 70), id(None, other, LINE, 70));
        // An explicit source id wins over the first line.
        assert_eq!(
            id(Some("s"), LINE, LINE, 70),
            id(Some("s"), other, LINE, 70)
        );
        // Two files sharing a first line (a header) but not the line at an offset do not
        // claim each other's clicks.
        assert_ne!(id(None, LINE, LINE, 70), id(None, LINE, other, 70));
        assert_eq!(id(None, LINE, LINE, 70).as_bytes().len(), 32);
    }

    async fn lines(input: &[u8], source: Source) -> Vec<Line> {
        let reader: Box<dyn AsyncBufRead + Unpin + Send> = Box::new(BufReader::with_capacity(
            16,
            std::io::Cursor::new(input.to_vec()),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut r = LineReader::new(reader, source, false, stop);
        let mut out = Vec::new();
        while let Some(l) = r.next().await.expect("reads") {
            out.push(l);
        }
        out
    }

    fn file() -> Source {
        Source::File {
            path: "f".into(),
            id: (0, 0),
        }
    }

    #[tokio::test]
    async fn lines_carry_their_numbers_and_byte_offsets() {
        let got = lines(b"a\r\nbb\n\n\xff\xfe\nccc\n", file()).await;
        let offsets: Vec<(u64, u64)> = got.iter().map(|l| (l.no, l.offset)).collect();
        assert_eq!(offsets, [(1, 0), (2, 3), (3, 6), (4, 7), (5, 10)]);
        assert_eq!(got[0].text, Ok("a".to_owned()));
        assert_eq!(got[2].text, Ok(String::new()));
        assert!(got[3].text.as_ref().is_err_and(|e| e.contains("UTF-8")));
        assert_eq!(got[4].text, Ok("ccc".to_owned()));
    }

    #[tokio::test]
    async fn a_files_unfinished_last_line_is_held_back_but_stdins_is_not() {
        let got = lines(b"a\nhalf-writ", file()).await;
        assert_eq!(got.len(), 2);
        assert!(got[1]
            .text
            .as_ref()
            .is_err_and(|e| e.contains("incomplete")));
        let got = lines(b"a\nlast", Source::Stdin).await;
        assert_eq!(got[1].text, Ok("last".to_owned()));
    }

    #[tokio::test]
    async fn an_overlong_line_is_skipped_and_the_next_keeps_its_offset() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nok\n");
        let got = lines(&input, file()).await;
        assert_eq!(got.len(), 2);
        assert!(got[0]
            .text
            .as_ref()
            .is_err_and(|e| e.contains("longer than")));
        assert_eq!(got[1].offset, MAX_LINE_BYTES as u64 + 11);
        assert_eq!(got[1].text, Ok("ok".to_owned()));
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

    /// A reader following the file at `path`, opened as `adclick ingest --follow` does.
    async fn follow(path: &Path) -> LineReader {
        let (reader, source, _) = open_input(path.to_str().expect("utf-8 path"))
            .await
            .expect("open");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        LineReader::new(reader, source, true, stop)
    }

    #[tokio::test]
    async fn following_a_file_that_is_truncated_stops_with_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("clicks.txt");
        std::fs::write(&path, "one\ntwo\n").expect("write");
        let mut r = follow(&path).await;
        assert_eq!(
            r.next().await.expect("line").expect("one").text,
            Ok("one".into())
        );
        assert_eq!(
            r.next().await.expect("line").expect("two").text,
            Ok("two".into())
        );
        // copytruncate-style rotation: the file shrinks below what was read.
        std::fs::write(&path, "x\n").expect("truncate");
        let err = tokio::time::timeout(Duration::from_secs(5), r.next())
            .await
            .expect("noticed within a poll or two")
            .expect_err("a truncated file stops the command");
        assert!(err.to_string().contains("shrank"), "{err}");
    }

    #[tokio::test]
    async fn following_a_file_that_is_replaced_stops_with_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("clicks.txt");
        std::fs::write(&path, "one\n").expect("write");
        let mut r = follow(&path).await;
        assert_eq!(
            r.next().await.expect("line").expect("one").text,
            Ok("one".into())
        );
        // mv-style rotation: the path now names a new file.
        std::fs::rename(&path, dir.path().join("clicks.txt.1")).expect("rotate");
        std::fs::write(&path, "new\n").expect("new file");
        let err = tokio::time::timeout(Duration::from_secs(5), r.next())
            .await
            .expect("noticed within a poll or two")
            .expect_err("a replaced file stops the command");
        assert!(err.to_string().contains("another file"), "{err}");
    }
}
