//! Retry policies per job kind. Delays come from backon's exponential backoff with jitter;
//! the retry itself is durable (a delayed copy of the task), see `ops::finish`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::domain::OpKind;

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

/// The policy of a kind before any scaling. Its `max_attempts` is written on the op when it
/// is requested; only the delays are scaled (`RETRY_DELAY_SCALE`).
pub fn default_policy(kind: OpKind) -> RetryPolicy {
    match kind {
        OpKind::Provision | OpKind::Restart => PROVISION,
        OpKind::Stop => STOP,
    }
}

/// The policies a worker runs ops with: the defaults with their delays scaled once.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicies {
    delay_scale: f64,
}

impl RetryPolicies {
    pub fn scaled(delay_scale: f64) -> RetryPolicies {
        RetryPolicies { delay_scale }
    }

    pub fn for_kind(&self, kind: OpKind) -> RetryPolicy {
        default_policy(kind).scaled(self.delay_scale)
    }
}

/// Delays for a loop that keeps reconnecting or rebuilding something for as long as the
/// process lives: exponential from `min` to `max`, with jitter, never giving up.
pub fn forever(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times().build()
}

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
