//! `adclick dev`, the README's run command: it starts three nodes, prints where they
//! listen, feeds demo traffic that queries then see, and on Ctrl-C (SIGINT to the command
//! alone, as a terminal sends it) stops every node cleanly and exits 0.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use adclick_client::{Client, TimeSpec, TopQuery};
use adclick_tests::{adclick_path, adclickd_path, eventually};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adclick_dev_starts_serves_and_stops_on_ctrl_c() {
    // One cluster at a time per test process: the dev cluster takes the harness's slot.
    let _slot = adclick_tests::Cluster::exclusive_slot()
        .await
        .expect("the cluster slot");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = spawn_dev(
        &["--json", "dev", "--rate", "500", "--duration", "120"],
        &dir.path().join("dev"),
        Stdio::piped(),
    );
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();

    // The first JSON line names the nodes, once the cluster has leaders.
    let first = tokio::time::timeout(Duration::from_secs(90), stdout.next_line())
        .await
        .expect("adclick dev prints its endpoints within 90 s")
        .expect("reading stdout")
        .expect("a first line");
    let endpoints: Value = serde_json::from_str(&first).expect("JSON endpoints");
    let seeds: Vec<String> = endpoints["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["grpc"].as_str().expect("grpc address").to_owned())
        .collect();
    assert_eq!(seeds.len(), 3, "{endpoints}");
    // Keep reading stdout (a top-10 line a second), so the pipe never fills.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

    // Demo traffic shows up in queries through a client of our own.
    let client = Client::connect(&seeds)
        .await
        .expect("connect to the dev cluster");
    let top = eventually(
        "demo clicks in the top 10",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let top = client
                .top(TopQuery::new(10, TimeSpec::last(5).expect("valid")))
                .await
                .map_err(|e| e.to_string())?;
            (top.rows.len() == 10)
                .then_some(top)
                .ok_or("fewer than 10 ads yet".to_owned())
        },
    )
    .await
    .expect("the demo traffic is counted");
    assert!(top.rows[0].count >= top.rows[9].count, "{top:?}");
    let filters = client.list_filters().await.expect("list filters");
    let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["private_net", "usa"],
        "the demo filters are registered"
    );

    let status = ctrl_c(&mut child).await;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    drain.abort();
    assert!(
        status.success(),
        "adclick dev exits 0: {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("all nodes stopped"),
        "every node stopped cleanly; stderr:\n{stderr}"
    );
    assert!(
        Client::connect_with(&seeds, quick()).await.is_err(),
        "no node answers after the stop"
    );
}

/// A client config that gives up after a second.
fn quick() -> adclick_client::ClientConfig {
    let mut c = adclick_client::ClientConfig::default();
    c.deadline = Duration::from_secs(1);
    c
}

/// Ctrl-C while the cluster is still starting (before any leader is elected) stops the
/// nodes too: none may be left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_startup_leaves_no_node_running() {
    let _slot = adclick_tests::Cluster::exclusive_slot()
        .await
        .expect("the cluster slot");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("dev-early");
    let mut child = spawn_dev(&["dev", "--rate", "0"], &data, Stdio::null());
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.starts_with("started 3 adclickd nodes") {
                return true;
            }
        }
        false
    })
    .await
    .expect("adclick dev starts its nodes within 30 s");
    assert!(started, "adclick dev said it started its nodes");
    let status = ctrl_c(&mut child).await;
    assert!(
        status.success(),
        "adclick dev exits 0 when interrupted early: {status}"
    );
    let left = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(data.to_str().expect("utf-8 path"))
        .output()
        .expect("pgrep runs");
    assert!(
        left.stdout.is_empty(),
        "adclickd processes left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Starts `adclick ARGS --data-dir DATA --adclickd <built adclickd>`, stderr piped.
fn spawn_dev(args: &[&str], data: &Path, stdout: Stdio) -> Child {
    tokio::process::Command::new(adclick_path().expect("adclick is built"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .arg("--adclickd")
        .arg(adclickd_path().expect("adclickd is built"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("adclick dev starts")
}

/// Ctrl-C: SIGINT to adclick alone (its nodes run in their own process group); waits at
/// most 60 s for it to exit.
async fn ctrl_c(child: &mut Child) -> ExitStatus {
    let pid = child.id().expect("adclick dev is running");
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("adclick dev stops within 60 s of Ctrl-C")
        .expect("wait for adclick dev")
}
