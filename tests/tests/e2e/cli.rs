//! The `adclick` command-line tool against a real cluster: a seed-format file with bad
//! lines is ingested (the bad lines reported by number, the rest counted), ingested again
//! (nothing counted twice), then ingested once more after lines were appended (only the
//! new lines counted); counts and top through the CLI match the file; JSONL, filters and
//! cluster status work end to end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use adclick_tests::{adclick_path, Cluster, ClusterOptions};
use serde_json::Value;

/// Runs `adclick --cluster <node 1> --json ARGS`; returns its exit code and parsed stdout.
async fn adclick(cluster: &Cluster, args: &[&str]) -> (i32, Value, String) {
    let (code, stdout, stderr) = adclick_raw(cluster, args).await;
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("adclick {args:?} printed no JSON ({e}): stdout {stdout:?}, stderr {stderr:?}")
    });
    (code, json, stderr)
}

/// Runs `adclick --cluster <node 1> --json ARGS`; returns its exit code, stdout, stderr.
async fn adclick_raw(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let bin = adclick_path().expect("the adclick binary is built");
    let seed = cluster.grpc_addr(1).to_string();
    let run = tokio::process::Command::new(&bin)
        .arg("--cluster")
        .arg(&seed)
        .arg("--json")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("adclick {args:?} did not finish within 60 s"))
        .expect("adclick runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// A seed-format file of `n` valid lines from line `first` on, with bad lines at the given
/// line numbers; returns the expected count per ad of the valid lines.
fn seed_lines(
    first: usize,
    n: usize,
    bad: &BTreeMap<usize, &str>,
) -> (String, BTreeMap<String, u64>) {
    let mut text = String::new();
    let mut expected = BTreeMap::new();
    for line in first..first + n {
        if let Some(b) = bad.get(&line) {
            text.push_str(b);
        } else {
            // Three ads, skewed: ad001 twice as often as the others. Times stay within two
            // minutes, so no click is late behind another.
            let ad = ["ad001", "ad001", "ad002", "ad003"][line % 4];
            text.push_str(&format!(
                "[AdClickEvent] {ad}, 2024-07-09 00:{:02}:{:02}, user-{line}, 207.148.22.{}, USA",
                line / 60 % 2,
                line % 60,
                line % 250 + 1
            ));
            *expected.entry(ad.to_owned()).or_insert(0) += 1;
        }
        text.push('\n');
    }
    (text, expected)
}

fn tally(v: &Value, key: &str) -> u64 {
    v["tally"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no tally.{key} in {v}"))
}

fn error_lines(v: &Value) -> Vec<u64> {
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {v}"))
        .iter()
        .map(|e| e["line"].as_u64().expect("line number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_ingests_a_file_once_however_often_it_is_sent() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("clicks.txt");
    let bad = BTreeMap::from([
        (5, "ad001, 2024-07-09 00:00:05, user-5, 207.148.22.22"),
        (9, "   "),
        (
            12,
            "[AdClickEvent] ad 002, 2024-07-09 00:00:12, user-12, 207.148.22.22, USA",
        ),
        (20, "ad003, 2024-07-09 00:00:20, user-20, 300.1.1.1, USA"),
    ]);
    let (text, mut expected) = seed_lines(1, 200, &bad);
    std::fs::write(&file, &text).expect("write the seed file");
    let valid: u64 = expected.values().sum();
    assert_eq!(valid, 196, "200 lines, 3 bad and 1 blank");
    let path = file.to_str().expect("utf-8 path");

    let (code, first, stderr) = adclick(&cluster, &["ingest", path]).await;
    assert_eq!(
        code, 3,
        "bad lines make the exit status 3: {first} {stderr}"
    );
    assert_eq!(tally(&first, "accepted"), valid, "{first}");
    assert_eq!(
        error_lines(&first),
        [5, 12, 20],
        "bad lines by number: {first}"
    );
    let errors = first["errors"].to_string();
    assert!(errors.contains("found 4"), "{errors}");
    assert!(errors.contains("ad_id"), "{errors}");
    assert!(errors.contains("ip"), "{errors}");

    let (_, again, _) = adclick(&cluster, &["ingest", path]).await;
    assert_eq!(
        (tally(&again, "accepted"), tally(&again, "duplicate")),
        (0, valid),
        "the same file again counts nothing: {again}"
    );

    // The file grows (a log being appended to): only the new lines count.
    let (more, more_expected) = seed_lines(201, 10, &BTreeMap::new());
    std::fs::write(&file, format!("{text}{more}")).expect("append to the seed file");
    for (ad, n) in more_expected {
        *expected.entry(ad).or_insert(0) += n;
    }
    let (code, grown, _) = adclick(&cluster, &["ingest", path]).await;
    assert_eq!(code, 3, "the old bad lines are still bad");
    assert_eq!(
        (tally(&grown, "accepted"), tally(&grown, "duplicate")),
        (10, valid),
        "{grown}"
    );

    let window = [
        "--from",
        "2024-07-09 00:00:00",
        "--to",
        "2024-07-09 01:00:00",
    ];
    for (ad, want) in &expected {
        let mut args = vec!["count", ad.as_str()];
        args.extend(window);
        let (code, v, stderr) = adclick(&cluster, &args).await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(v["count"].as_u64(), Some(*want), "count of {ad}: {v}");
    }
    let mut args = vec!["top", "-n", "2"];
    args.extend(window);
    let (_, top, _) = adclick(&cluster, &args).await;
    let rows: Vec<(String, u64)> = top["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["ad_id"].as_str().expect("ad_id").to_owned(),
                r["count"].as_u64().expect("count"),
            )
        })
        .collect();
    let mut want: Vec<(String, u64)> = expected.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    want.truncate(2);
    assert_eq!(rows, want, "top 2");

    jsonl_filters_and_status(&cluster, dir.path()).await;
}

/// JSONL ingestion with one bad line; filter create, list and drop; cluster status.
async fn jsonl_filters_and_status(cluster: &Cluster, dir: &Path) {
    let file = dir.join("clicks.jsonl");
    let lines = [
        r#"{"event_id":"j-1","ad_id":"ad009","timestamp":"2024-07-09T00:01:00Z","ip":"10.1.2.3","country":"USA"}"#,
        r#"{"event_id":"j-2","ad_id":"ad009","timestamp":"2024-07-09T00:01:01Z"}"#,
        r#"{"event_id":"j-3","ad_id":"ad009","timestamp":1720483262000,"ip":"::1"}"#,
    ];
    // No newline after the last line: it may be half-written, so it is held back.
    std::fs::write(&file, lines.join("\n")).expect("write the JSONL file");
    let (code, v, _) = adclick(
        cluster,
        &["ingest", "--format", "jsonl", file.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(code, 3, "{v}");
    assert_eq!(tally(&v, "accepted"), 1, "{v}");
    assert_eq!(error_lines(&v), [2, 3], "{v}");
    assert!(
        v["errors"][1]["error"].to_string().contains("incomplete"),
        "{v}"
    );
    std::fs::write(&file, lines.join("\n") + "\n").expect("finish the last line");
    let (code, v, _) = adclick(
        cluster,
        &["ingest", "--format", "jsonl", file.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(code, 3, "{v}");
    assert_eq!(
        (tally(&v, "accepted"), tally(&v, "duplicate")),
        (1, 1),
        "the finished line counts once: {v}"
    );

    let (code, created, stderr) =
        adclick(cluster, &["filter", "create", "usa", r#"country = "USA""#]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(created["filters"][0]["name"], "usa", "{created}");
    let (_, listed, _) = adclick(cluster, &["filter", "list"]).await;
    assert_eq!(
        listed["filters"][0]["expr"], r#"country = "USA""#,
        "{listed}"
    );
    let (code, _, stderr) = adclick_raw(cluster, &["filter", "create", "bad", "country ="]).await;
    assert_eq!(code, 1, "a syntax error fails the command: {stderr}");
    assert!(stderr.contains("invalid request"), "{stderr}");
    let (_, dropped, _) = adclick(cluster, &["filter", "drop", "usa"]).await;
    assert_eq!(dropped["existed"], true, "{dropped}");

    let (code, status, stderr) = adclick(cluster, &["cluster", "status"]).await;
    assert_eq!(code, 0, "{stderr}");
    let groups = status["groups"].as_array().expect("groups");
    assert_eq!(
        groups.len(),
        5,
        "the metadata group and 4 data groups: {status}"
    );
    assert!(
        groups.iter().all(|g| g["leader_id"].is_u64()),
        "every group has a leader: {status}"
    );
}
