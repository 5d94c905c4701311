//! [`Producer`]: batches single clicks into requests for high-rate ingestion, with bounded
//! memory and bounded requests in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use adclick_proto::model::{Click, Tally};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{ClickResult, Client};
use crate::error::Error;

/// How a [`Producer`] batches. Start from [`ProducerConfig::default`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// A batch is sent once it holds this many clicks. Default 1,000.
    pub max_batch_clicks: usize,
    /// ... or once its first click has waited this long. Default 5 ms.
    pub linger: Duration,
    /// Batches awaiting their answers at once; when all are out, batching pauses and
    /// [`Producer::send`] waits once the buffer is full. Default 8.
    pub max_in_flight_batches: usize,
    /// Clicks buffered before [`Producer::send`] waits (backpressure). Default 50,000.
    pub buffer_clicks: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_batch_clicks: 1_000,
            linger: Duration::from_millis(5),
            max_in_flight_batches: 8,
            buffer_clicks: 50_000,
        }
    }
}

impl ProducerConfig {
    /// Checks that the values can work.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        if !(1..=50_000).contains(&self.max_batch_clicks) {
            return bad("max_batch_clicks must be 1 to 50000");
        }
        if !(1..=1024).contains(&self.max_in_flight_batches) {
            return bad("max_in_flight_batches must be 1 to 1024");
        }
        if !(1..=10_000_000).contains(&self.buffer_clicks) {
            return bad("buffer_clicks must be 1 to 10000000");
        }
        if self.linger > Duration::from_secs(10) {
            return bad("linger must be at most 10 s");
        }
        Ok(())
    }
}

/// What a producer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Outcomes of the clicks whose batches were answered.
    pub tally: Tally,
    /// Clicks whose batch failed (after the client's retries): their outcome is unknown;
    /// send them again with the same event ids.
    pub failed: u64,
    /// Batches sent.
    pub batches: u64,
}

/// The pending result of one sent click: a future of its [`ClickResult`], or the error of
/// its batch. Dropping it does not cancel the click.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<ClickResult, Error>>);

impl Future for Delivery {
    type Output = Result<ClickResult, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

enum Msg {
    Click(Click, oneshot::Sender<Result<ClickResult, Error>>),
    Flush(oneshot::Sender<()>),
}

/// Collects clicks into batches of up to [`ProducerConfig::max_batch_clicks`], sends each
/// with [`Client::ingest`] (so with its routing and retries), and keeps at most
/// [`ProducerConfig::max_in_flight_batches`] batches out at once. Memory is bounded:
/// [`Producer::send`] waits while [`ProducerConfig::buffer_clicks`] clicks are buffered,
/// beside at most `max_in_flight_batches + 1` batches being filled or sent.
///
/// ```no_run
/// # async fn run(client: adclick_client::Client, clicks: Vec<adclick_client::model::Click>)
/// # -> Result<(), adclick_client::Error> {
/// use adclick_client::{Producer, ProducerConfig};
/// let producer = Producer::new(client, ProducerConfig::default())?;
/// for click in clicks {
///     producer.send(click).await?; // the Delivery can be awaited or dropped
/// }
/// let stats = producer.close().await;
/// println!("accepted {}, failed {}", stats.tally.accepted, stats.failed);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    stats: Arc<Mutex<ProducerStats>>,
    task: JoinHandle<()>,
}

impl Producer {
    /// A producer sending through `client`. Must be called within a Tokio runtime.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, Error> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.buffer_clicks);
        let stats = Arc::new(Mutex::new(ProducerStats::default()));
        let task = tokio::spawn(batcher(client, config, rx, Arc::clone(&stats)));
        Ok(Producer { tx, stats, task })
    }

    /// Queues `click`, waiting while the buffer is full. Returns its [`Delivery`].
    pub async fn send(&self, click: Click) -> Result<Delivery, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Click(click, tx))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(Delivery(rx))
    }

    /// Sends what is buffered now and waits until every click sent before this call has
    /// its answer (or its batch failed).
    pub async fn flush(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// What the producer has done so far.
    pub fn stats(&self) -> ProducerStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends everything buffered, waits for every answer, and stops.
    pub async fn close(self) -> ProducerStats {
        let Producer { tx, stats, task } = self;
        drop(tx);
        // The batcher only ends once every batch is answered; a panic in it would already
        // have been reported by the runtime, and the stats are still what was recorded.
        let _ = task.await;
        let stats = *stats.lock().unwrap_or_else(|p| p.into_inner());
        stats
    }
}

/// The batching loop: fills a batch until it is full or its linger time passes, then
/// hands it to a sender task once an in-flight slot is free.
async fn batcher(
    client: Client,
    config: ProducerConfig,
    mut rx: mpsc::Receiver<Msg>,
    stats: Arc<Mutex<ProducerStats>>,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight_batches));
    let mut batch: Vec<(Click, oneshot::Sender<Result<ClickResult, Error>>)> = Vec::new();
    let mut due = Instant::now();
    loop {
        let msg = if batch.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                msg = rx.recv() => msg,
                () = tokio::time::sleep_until(due) => {
                    dispatch(&client, &slots, &stats, std::mem::take(&mut batch)).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Click(click, reply)) => {
                if batch.is_empty() {
                    due = Instant::now() + config.linger;
                }
                batch.push((click, reply));
                if batch.len() >= config.max_batch_clicks {
                    dispatch(&client, &slots, &stats, std::mem::take(&mut batch)).await;
                }
            }
            Some(Msg::Flush(done)) => {
                dispatch(&client, &slots, &stats, std::mem::take(&mut batch)).await;
                drain(&slots, config.max_in_flight_batches).await;
                let _ = done.send(());
            }
            None => {
                dispatch(&client, &slots, &stats, std::mem::take(&mut batch)).await;
                drain(&slots, config.max_in_flight_batches).await;
                return;
            }
        }
    }
}

/// Waits until no batch is in flight.
async fn drain(slots: &Arc<Semaphore>, all: usize) {
    let all = u32::try_from(all).unwrap_or(u32::MAX);
    // The semaphore is never closed, so acquiring can only succeed.
    if let Ok(permits) = slots.acquire_many(all).await {
        drop(permits);
    }
}

/// Sends `batch` on its own task once a slot is free, answering every click's delivery.
async fn dispatch(
    client: &Client,
    slots: &Arc<Semaphore>,
    stats: &Arc<Mutex<ProducerStats>>,
    batch: Vec<(Click, oneshot::Sender<Result<ClickResult, Error>>)>,
) {
    if batch.is_empty() {
        return;
    }
    let Ok(permit) = Arc::clone(slots).acquire_owned().await else {
        return;
    };
    let client = client.clone();
    let stats = Arc::clone(stats);
    tokio::spawn(async move {
        let (clicks, replies): (Vec<Click>, Vec<_>) = batch.into_iter().unzip();
        let answer = client.ingest(&clicks).await;
        {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.batches += 1;
            match &answer {
                Ok(report) => s.tally.merge(&report.tally),
                Err(_) => s.failed += clicks.len() as u64,
            }
        }
        match answer {
            Ok(report) => {
                for (reply, result) in replies.into_iter().zip(report.results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        drop(permit);
    });
}
