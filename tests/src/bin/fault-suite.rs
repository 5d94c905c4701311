//! `fault-suite`: the fault suite's long mode. Runs many seeded random schedules, one
//! fresh three-node cluster each, and prints per nemesis the operations ok / failed /
//! indeterminate while it held, the availability, the time to the first acknowledged write
//! after the heal, and the anomalies found (which must be zero).
//!
//! ```text
//! cargo build --profile fault -p adclick-server --features fault-injection --bin adclickd
//! cargo run -p adclick-tests --bin fault-suite -- --seeds 20 --duration 60
//! ```
//!
//! Options: `--seeds N` (runs, default 5), `--duration S` (seconds of faults per run,
//! default 60, at most 180), `--seed S` (first seed; run i uses S + i; default random),
//! `--nemeses a,b,...` (default all), `--out DIR` (histories of failing runs; default the
//! temporary directory), `--snapshot-logs N` (snapshot often, to exercise snapshot
//! install under faults), `--no-power-loss` (kills are plain SIGKILLs: no crash journal,
//! no dropped unsynced writes). Exit status 1 if any run found an anomaly, 2 on bad usage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use adclick_tests::fault::nemesis::{Nemesis, Schedule};
use adclick_tests::fault::run::{run, RunConfig, RunReport, MAX_DURATION};

struct Args {
    seeds: u64,
    duration: Duration,
    first_seed: u64,
    nemeses: Vec<Nemesis>,
    out: PathBuf,
    snapshot_logs: Option<u64>,
    power_loss: bool,
}

const USAGE: &str = "usage: fault-suite [--seeds N] [--duration SECONDS] [--seed S] \
                     [--nemeses a,b,...] [--out DIR] [--snapshot-logs N] [--no-power-loss]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 5,
        duration: Duration::from_secs(60),
        first_seed: rand::random::<u32>().into(),
        nemeses: Nemesis::ALL.to_vec(),
        out: std::env::temp_dir().join("adclick-fault-suite"),
        snapshot_logs: None,
        power_loss: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = num(value()?)?,
            "--duration" => a.duration = Duration::from_secs(num(value()?)?),
            "--seed" => a.first_seed = num(value()?)?,
            "--nemeses" => {
                a.nemeses = value()?
                    .split(',')
                    .map(|n| Nemesis::parse(n.trim()).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--out" => a.out = PathBuf::from(value()?),
            "--snapshot-logs" => a.snapshot_logs = Some(num(value()?)?),
            "--no-power-loss" => a.power_loss = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if a.seeds == 0 || a.nemeses.is_empty() {
        return Err("--seeds and --nemeses must not be empty".into());
    }
    if a.duration.is_zero() || a.duration > MAX_DURATION {
        return Err(format!(
            "--duration must be 1..={} seconds (clicks must not turn late before their \
             last retry)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(a)
}

#[derive(Default)]
struct Row {
    faults: usize,
    ok: usize,
    failed: usize,
    indeterminate: usize,
    availability: Vec<f64>,
    first_write: Vec<Duration>,
    no_write: usize,
    cut_off: usize,
    anomalous_runs: usize,
}

fn table(reports: &[RunReport]) -> String {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for r in reports {
        let mut seen_here = std::collections::BTreeSet::new();
        for f in &r.faults {
            let row = rows.entry(f.nemesis.clone()).or_default();
            row.faults += 1;
            row.ok += f.ok;
            row.failed += f.failed;
            row.indeterminate += f.indeterminate;
            row.availability.push(f.availability());
            row.cut_off += f.cut_off_ops;
            match f.first_write_after {
                Some(d) => row.first_write.push(d),
                None => row.no_write += 1,
            }
            if !r.verdict.ok() && seen_here.insert(f.nemesis.clone()) {
                row.anomalous_runs += 1;
            }
        }
    }
    let mut s = format!(
        "{:<16} {:>6} {:>7} {:>7} {:>7} {:>7} {:>8} {:>12} {:>12} {:>10}\n",
        "nemesis",
        "faults",
        "ok",
        "failed",
        "indet.",
        "avail.",
        "cut-off",
        "1st write p50",
        "1st write max",
        "anomalies"
    );
    for (name, mut row) in rows {
        row.first_write.sort();
        let p50 = row
            .first_write
            .get(row.first_write.len() / 2)
            .map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        let max = row
            .first_write
            .last()
            .map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        let avail = row.availability.iter().sum::<f64>() / row.availability.len().max(1) as f64;
        s.push_str(&format!(
            "{:<16} {:>6} {:>7} {:>7} {:>7} {:>6.0}% {:>8} {:>12} {:>12} {:>10}\n",
            name,
            row.faults,
            row.ok,
            row.failed,
            row.indeterminate,
            avail * 100.0,
            row.cut_off,
            p50,
            max,
            if row.no_write > 0 {
                format!("{} (+{} no write)", row.anomalous_runs, row.no_write)
            } else {
                row.anomalous_runs.to_string()
            }
        ));
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fault-suite: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for i in 0..args.seeds {
        let seed = args.first_seed + i;
        let schedule = Schedule::random(seed, args.duration, &args.nemeses);
        println!(
            "=== run {}/{}: seed {seed}, schedule [{}]",
            i + 1,
            args.seeds,
            schedule.describe()
        );
        let mut cfg = RunConfig::new(seed, schedule);
        cfg.out_dir = args.out.clone();
        cfg.snapshot_logs = args.snapshot_logs;
        cfg.power_loss = args.power_loss;
        match run(cfg).await {
            Ok(r) => {
                println!("{}", r.describe());
                if !r.verdict.ok() {
                    failed.push(seed);
                }
                reports.push(r);
            }
            Err(e) => {
                println!("seed {seed}: the harness could not complete the run: {e:#}");
                failed.push(seed);
            }
        }
    }
    let ops: usize = reports.iter().map(|r| r.ops).sum();
    println!(
        "\n{} runs, {} operations, {} with anomalies or harness failures{}\n",
        args.seeds,
        ops,
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failed:?})")
        }
    );
    println!("{}", table(&reports));
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
