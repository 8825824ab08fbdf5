//! Retry policies per job kind. Delays come from backon's exponential backoff with jitter;
//! the retry itself is durable (a delayed copy of the task), see `ops::finish`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// About five attempts over a few minutes: long enough to ride out an engine restart.
pub const PROVISION: RetryPolicy =
    RetryPolicy { max_attempts: 5, min_delay: Duration::from_secs(5), max_delay: Duration::from_secs(120) };

/// More patient than provision: a stop that gives up may leak an instance.
pub const STOP: RetryPolicy =
    RetryPolicy { max_attempts: 8, min_delay: Duration::from_secs(2), max_delay: Duration::from_secs(120) };

impl RetryPolicy {
    /// Delay before the attempt that follows attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let n = attempt.max(1) as usize;
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(n)
            .build()
            .nth(n - 1)
            .unwrap_or(self.max_delay)
    }

    /// Scales every delay; operators and tests shorten retries with `RETRY_DELAY_SCALE`.
    pub fn scaled(self, factor: f64) -> RetryPolicy {
        RetryPolicy { min_delay: self.min_delay.mul_f64(factor), max_delay: self.max_delay.mul_f64(factor), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        let p = PROVISION;
        let first = p.delay_after(1);
        assert!(first >= p.min_delay && first <= p.min_delay * 2, "{first:?}");
        let fourth = p.delay_after(4);
        assert!(fourth >= p.min_delay * 8, "{fourth:?}");
        for a in 1..20 {
            assert!(p.delay_after(a) <= p.max_delay * 2);
        }
    }
}
