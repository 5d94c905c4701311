//! Bounded polling and the wall clock.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;

/// Milliseconds since the Unix epoch, from this machine's clock (the nodes run on the same
/// machine, so this is also their clock).
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Polls `probe` every `interval` until it returns `Ok(value)` or `timeout` has passed.
///
/// `probe` returns `Err(reason)` while the condition does not hold yet; on timeout the
/// error names `what` and the last reason, so a failing test says what it was waiting for
/// and what it saw last.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match tokio::time::timeout(timeout, probe()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(reason)) => reason,
            Err(_) => format!("a probe took longer than {timeout:?}"),
        };
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}; last: {last}");
        }
        tokio::time::sleep(interval).await;
    }
}
