//! [`ClientConfig`]: deadlines, timeouts, backoff and batch limits.

use std::time::Duration;

use crate::error::Error;

/// The longest `deadline` and `attempt_timeout` accepted: a day.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// The longest `max_backoff` and `connect_timeout` accepted: a minute.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How a [`crate::Client`] times and retries its calls. Start from
/// [`ClientConfig::default`] and change fields:
///
/// ```
/// use std::time::Duration;
/// let mut config = adclick_client::ClientConfig::default();
/// config.deadline = Duration::from_secs(5);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long one call (an ingest, a query, an admin call) may take in all, retries and
    /// redirects included; then it fails with [`Error::DeadlineExceeded`]. Default 30 s,
    /// long enough to ride out a leader election.
    pub deadline: Duration,
    /// How long one attempt may take before it is abandoned and retried (sent to the
    /// server as the gRPC deadline too). Default 10 s.
    pub attempt_timeout: Duration,
    /// How long connecting to a node may take. Default 2 s.
    pub connect_timeout: Duration,
    /// First retry delay; doubled on each consecutive failure up to `max_backoff`, with
    /// full jitter. Default 25 ms.
    pub initial_backoff: Duration,
    /// Largest retry delay. Default 1 s.
    pub max_backoff: Duration,
    /// The most clicks sent in one request; larger parts are split. Must not exceed the
    /// nodes' `--max-batch-clicks` (default 10,000). Default 5,000.
    pub max_batch_clicks: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            max_batch_clicks: 5_000,
        }
    }
}

impl ClientConfig {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_owned()));
        let within = |d: Duration, max: Duration| !d.is_zero() && d <= max;
        if !within(self.deadline, MAX_DEADLINE) || !within(self.attempt_timeout, MAX_DEADLINE) {
            return bad("deadline and attempt_timeout must be positive and at most a day");
        }
        if !within(self.connect_timeout, MAX_BACKOFF) {
            return bad("connect_timeout must be positive and at most a minute");
        }
        if self.initial_backoff.is_zero()
            || self.max_backoff < self.initial_backoff
            || self.max_backoff > MAX_BACKOFF
        {
            return bad(
                "initial_backoff must be positive, at most max_backoff, which is at most a minute",
            );
        }
        if self.max_batch_clicks == 0 || self.max_batch_clicks > 50_000 {
            return bad("max_batch_clicks must be 1 to 50000");
        }
        Ok(())
    }
}

/// Consecutive-failure backoff with full jitter: attempt k waits a random time in
/// `[0, min(max, initial * 2^k)]`.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(config: &ClientConfig) -> Self {
        Backoff {
            next: config.initial_backoff,
            max: config.max_backoff,
        }
    }

    /// The delay before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_and_bad_ones_are_named() {
        assert!(ClientConfig::default().validate().is_ok());
        let c = ClientConfig {
            max_batch_clicks: 0,
            ..ClientConfig::default()
        };
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("max_batch_clicks")));
        let c = ClientConfig {
            max_backoff: Duration::from_millis(1),
            ..ClientConfig::default()
        };
        assert!(c.validate().is_err());
        // "Forever" is refused rather than overflowing the deadline arithmetic.
        let c = ClientConfig {
            deadline: Duration::MAX,
            ..ClientConfig::default()
        };
        assert!(c.validate().is_err());
        let c = ClientConfig {
            max_backoff: Duration::MAX,
            ..ClientConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_under_it() {
        let c = ClientConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..ClientConfig::default()
        };
        let mut b = Backoff::new(&c);
        let ceilings = [10, 20, 40, 40, 40];
        for ceiling in ceilings {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(ceiling), "{d:?} > {ceiling} ms");
        }
        assert_eq!(b.next, Duration::from_millis(40));
    }
}
