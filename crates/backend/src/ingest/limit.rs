//! Per-tenant rate limits: token buckets over wire bytes and batches.
//!
//! Each bucket holds one second's worth. A batch is admitted while the byte bucket
//! is not in debt and a whole batch token is there; it then takes its bytes, which
//! may push the byte bucket into debt, so a batch larger than one second's budget
//! still passes, followed by a pause. A refused batch gets the time until it would
//! pass, as the agent's retry hint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::tenants::RateLimit;

#[derive(Debug)]
struct Bucket {
    bytes: f64,
    batches: f64,
    at: Instant,
}

/// The buckets of every tenant that has a limit.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Admits a batch of `bytes` for `tenant`, or says how long to wait.
    pub fn admit(&self, tenant: &str, limit: RateLimit, bytes: u64) -> Result<(), Duration> {
        self.admit_at(tenant, limit, bytes, Instant::now())
    }

    fn admit_at(
        &self,
        tenant: &str,
        limit: RateLimit,
        bytes: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        if limit == RateLimit::default() {
            return Ok(());
        }
        let byte_rate = limit.bytes_per_sec as f64;
        let batch_rate = f64::from(limit.batches_per_sec);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket {
            bytes: byte_rate,
            batches: batch_rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.at = now;
        bucket.bytes = (bucket.bytes + elapsed * byte_rate).min(byte_rate);
        bucket.batches = (bucket.batches + elapsed * batch_rate).min(batch_rate.max(1.0));

        let mut wait: f64 = 0.0;
        if byte_rate > 0.0 && bucket.bytes < 0.0 {
            wait = wait.max(-bucket.bytes / byte_rate);
        }
        if batch_rate > 0.0 && bucket.batches < 1.0 {
            wait = wait.max((1.0 - bucket.batches) / batch_rate);
        }
        if wait > 0.0 {
            return Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)));
        }
        if byte_rate > 0.0 {
            bucket.bytes -= bytes as f64;
        }
        if batch_rate > 0.0 {
            bucket.batches -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_bytes_and_batches() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let limit = RateLimit {
            bytes_per_sec: 1000,
            batches_per_sec: 0,
        };
        // One second's worth, then a batch that overdraws it, then a wait.
        assert!(limiter.admit_at("a", limit, 600, t0).is_ok());
        assert!(limiter.admit_at("a", limit, 900, t0).is_ok());
        let wait = limiter.admit_at("a", limit, 1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiter.admit_at("a", limit, 1, t0 + wait).is_ok());
        // Other tenants have their own bucket; no limit means no bucket.
        assert!(limiter.admit_at("b", limit, 1000, t0).is_ok());
        assert!(
            limiter
                .admit_at("c", RateLimit::default(), 1 << 40, t0)
                .is_ok()
        );

        let limit = RateLimit {
            bytes_per_sec: 0,
            batches_per_sec: 2,
        };
        assert!(limiter.admit_at("d", limit, 5, t0).is_ok());
        assert!(limiter.admit_at("d", limit, 5, t0).is_ok());
        assert_eq!(
            limiter.admit_at("d", limit, 5, t0).unwrap_err(),
            Duration::from_millis(500)
        );
    }
}
