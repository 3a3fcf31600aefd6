//! A token bucket per source address, in front of logins and lookups.
//!
//! Each address may make `burst` requests at once, refilled at `per_second`. The
//! buckets live in memory, per node: the per-account lockout
//! ([`crate::accounts::lockout`]) is what regions share. The table is bounded: when it is full,
//! buckets that have refilled completely are dropped (they carry nothing), and if none
//! has, the fullest one goes: the address it belongs to loses least by a fresh burst.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::common::config::{invalid, Invalid};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    max_tracked: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32, max_tracked: usize) -> RateLimiter {
        RateLimiter {
            per_second,
            burst: f64::from(burst),
            max_tracked: max_tracked.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `addr` at `now`; `Err(wait)` when there is none yet.
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(&addr) && buckets.len() >= self.max_tracked {
            self.evict(&mut buckets, now);
        }
        let b = buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }

    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let per_second = self.per_second;
        let tokens =
            |b: &Bucket| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second;
        buckets.retain(|_, b| tokens(b) < self.burst);
        if buckets.len() >= self.max_tracked {
            let fullest = buckets
                .iter()
                .max_by(|(_, x), (_, y)| tokens(x).total_cmp(&tokens(y)))
                .map(|(a, _)| *a);
            if let Some(a) = fullest {
                buckets.remove(&a);
            }
        }
    }

    /// Addresses with a bucket now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().len()
    }
}

/// The per-address token bucket in front of `POST /v1/login` and lookups
/// (`GET /v1/users?email=|phone=`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per second each address gets back. 0 turns the limit off. Default 100:
    /// without `client_ip_header` an address is a whole calling platform.
    pub per_second: f64,
    /// Requests an address may make at once. Default 200.
    pub burst: u32,
    /// Addresses tracked at most (memory bound). Default 100000.
    pub max_tracked: usize,
    /// A header naming the end user's address, set by the calling platform (say
    /// "x-forwarded-for": its first address counts). Without it, or when a request
    /// lacks it, the connection's peer address counts. Default none.
    pub client_ip_header: Option<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 100.0,
            burst: 200,
            max_tracked: 100_000,
            client_ip_header: None,
        }
    }
}

impl RateLimitConfig {
    /// Checks the `[rate_limit]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.per_second.is_finite() && (0.0..=1_000_000.0).contains(&self.per_second)) {
            return Err(invalid(
                "rate_limit.per_second",
                "must be from 0 (off) to 1000000",
            ));
        }
        if self.burst == 0 || self.max_tracked == 0 {
            return Err(invalid(
                "rate_limit",
                "burst and max_tracked must be at least 1",
            ));
        }
        if let Some(h) = &self.client_ip_header {
            if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(invalid(
                    "rate_limit.client_ip_header",
                    "must be a header name",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate_per_address() {
        let limiter = RateLimiter::new(2.0, 3, 100);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(a, t).is_ok());
        }
        let wait = limiter.take(a, t).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another address has its own bucket.
        assert!(limiter.take(b, t).is_ok());
        // Half a second later one token is back, and only one.
        let later = t + Duration::from_millis(500);
        assert!(limiter.take(a, later).is_ok());
        assert!(limiter.take(a, later).is_err());
    }

    #[test]
    fn the_table_stays_bounded_and_a_throttled_address_keeps_its_empty_bucket() {
        let limiter = RateLimiter::new(1.0, 2, 3);
        let t = Instant::now();
        let addr = |n: u8| IpAddr::from([10, 0, 0, n]);
        let at = |ms: u64| t + Duration::from_millis(ms);
        // The attacker empties its bucket; two others take a token each.
        assert!(limiter.take(addr(1), at(0)).is_ok());
        assert!(limiter.take(addr(1), at(0)).is_ok());
        assert!(limiter.take(addr(2), at(100)).is_ok());
        assert!(limiter.take(addr(3), at(100)).is_ok());
        // New addresses push buckets out, never the attacker's, which is the emptiest.
        for n in 4..40 {
            assert!(limiter.take(addr(n), at(200)).is_ok());
            assert!(limiter.tracked() <= 3);
        }
        assert!(limiter.take(addr(1), at(300)).is_err(), "still throttled");
        // Once refilled, a bucket carries nothing and is the first to go.
        assert!(limiter.take(addr(41), at(5_000)).is_ok());
        assert!(limiter.tracked() <= 3);
    }
}
