//! Token buckets per key. Per workspace for the agent routes (register and heartbeat): an
//! agent stuck in a tight loop costs the database one write per refill, not one per
//! request, and cannot crowd out the others. Per client address for minting org tokens.
//! The buckets live in the process: each api process limits on its own, which is enough to
//! bound the load one client can cause.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// Above this many buckets, full ones are dropped: a full bucket behaves exactly like a
/// missing one, so memory stays bounded by the keys that are actually busy.
const PRUNE_ABOVE: usize = 10_000;

pub struct RateLimiter<K = Uuid> {
    burst: f64,
    per_second: f64,
    /// The 429 says "too many {what} {key}: {limit}".
    what: &'static str,
    limit: String,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter<Uuid> {
    /// Register and heartbeat calls per workspace: `burst` calls at once, refilled at
    /// `per_second`.
    pub fn new(burst: f64, per_second: f64) -> RateLimiter {
        let limit = format!("at most {burst} at once and {per_second} per second");
        RateLimiter::with("register and heartbeat calls for workspace", limit, burst, per_second)
    }
}

impl<K: Hash + Eq + Copy + Display> RateLimiter<K> {
    /// `per_hour` calls per key and hour, all of them available at once.
    pub fn per_hour(what: &'static str, per_hour: f64) -> RateLimiter<K> {
        RateLimiter::with(what, format!("at most {per_hour} per hour"), per_hour, per_hour / 3600.0)
    }

    fn with(what: &'static str, limit: String, burst: f64, per_second: f64) -> RateLimiter<K> {
        RateLimiter { burst, per_second, what, limit, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one call from `key`'s bucket, or refuses with a 429 saying when the next one
    /// will be accepted.
    pub fn check(&self, key: K) -> ApiResult<()> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: K, now: Instant) -> ApiResult<()> {
        // A panic elsewhere while holding the lock leaves the map consistent: every update
        // below is a plain assignment.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= PRUNE_ABOVE && !buckets.contains_key(&key) {
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.tokens = self.refilled(*bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(ApiError::TooManyRequests {
            message: format!("too many {} {key}: {}", self.what, self.limit),
            retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second),
        })
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_second).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_calls_follow_the_refill_rate() {
        let limiter = RateLimiter::new(3.0, 2.0);
        let (ws, t0) = (Uuid::new_v4(), Instant::now());
        for _ in 0..3 {
            assert!(limiter.check_at(ws, t0).is_ok());
        }
        match limiter.check_at(ws, t0) {
            Err(ApiError::TooManyRequests { retry_after, message }) => {
                assert_eq!(retry_after, Duration::from_millis(500));
                assert!(message.contains(&ws.to_string()), "{message}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limiter.check_at(Uuid::new_v4(), t0).is_ok(), "another workspace has its own bucket");
        assert!(limiter.check_at(ws, t0 + Duration::from_millis(500)).is_ok(), "one call refilled");
        assert!(limiter.check_at(ws, t0 + Duration::from_millis(500)).is_err());
        // A long pause refills the bucket to its burst, no further.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check_at(ws, later).is_ok());
        }
        assert!(limiter.check_at(ws, later).is_err());
    }

    #[test]
    fn an_hourly_limit_allows_its_count_at_once_then_one_call_per_share_of_the_hour() {
        let limiter: RateLimiter<std::net::IpAddr> = RateLimiter::per_hour("org token mints from", 4.0);
        let (ip, t0) = (std::net::IpAddr::from([127, 0, 0, 1]), Instant::now());
        for _ in 0..4 {
            assert!(limiter.check_at(ip, t0).is_ok());
        }
        match limiter.check_at(ip, t0) {
            Err(ApiError::TooManyRequests { retry_after, message }) => {
                assert_eq!(retry_after, Duration::from_secs(900));
                assert_eq!(message, "too many org token mints from 127.0.0.1: at most 4 per hour");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limiter.check_at(ip, t0 + Duration::from_secs(900)).is_ok(), "a quarter hour refills one");
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let limiter = RateLimiter::new(2.0, 1.0);
        let t0 = Instant::now();
        for _ in 0..PRUNE_ABOVE {
            assert!(limiter.check_at(Uuid::new_v4(), t0).is_ok());
        }
        let busy = Uuid::new_v4();
        assert!(limiter.check_at(busy, t0).is_ok());
        assert!(limiter.check_at(busy, t0).is_ok());
        let len = |l: &RateLimiter| l.buckets.lock().map(|b| b.len()).unwrap_or_default();
        assert_eq!(len(&limiter), PRUNE_ABOVE + 1, "nothing was full yet");
        // 1.5 s later every bucket has refilled to its burst except the busy one, which
        // was emptied.
        assert!(limiter.check_at(Uuid::new_v4(), t0 + Duration::from_millis(1500)).is_ok());
        assert_eq!(len(&limiter), 2, "the busy bucket and the new one");
    }
}
