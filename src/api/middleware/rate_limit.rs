//! A token bucket per source address, in front of logins and lookups.
//!
//! Each address may make `burst` requests at once, refilled at `per_second`. The
//! buckets live in memory, per node: the per-account lockout
//! ([`crate::accounts::lockout`]) is what regions share. The table is bounded: when it is full,
//! buckets that have refilled completely are dropped (they carry nothing), and if none
//! has, the fullest one goes: the address it belongs to loses least by a fresh burst.
//!
//! The address is the connection's peer, or, with `client_ip_header`, the one the
//! trusted proxies in front of the node wrote there ([`client_addr`]): counted from the
//! right, since each proxy appends the address it received from and everything left of
//! what the trusted ones wrote is the client's to choose. An IPv6 address counts by its
//! /64 ([`bucket_of`]): one end user is usually given a whole /64.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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

    /// Takes a token for `addr` (its bucket: [`bucket_of`]) at `now`; `Err(wait)` when
    /// there is none yet.
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let addr = bucket_of(addr);
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

/// The bucket an address counts in: an IPv4 address as it is (also when written as
/// IPv4-mapped IPv6), an IPv6 address by its /64.
pub fn bucket_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The end user's address as the trusted proxies wrote it in `header`: the
/// `trusted_hops`-th entry from the right of the header's comma-separated list (every
/// instance of the header, in order). `None` when the header is absent, has fewer
/// entries than trusted hops (so no trusted proxy wrote the one that would count), or
/// that entry is not an address: the peer's address counts then.
pub fn client_addr(
    headers: &axum::http::HeaderMap,
    header: &axum::http::HeaderName,
    trusted_hops: usize,
) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(header) {
        entries.extend(value.to_str().ok()?.split(','));
    }
    let i = entries.len().checked_sub(trusted_hops.max(1))?;
    let entry = entries[i].trim();
    // "[2001:db8::1]:443" or "192.0.2.1:443" as some proxies write them.
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
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
    /// A header naming the end user's address, set by the calling platform or a proxy
    /// in front of the node (say "x-forwarded-for"). Without it, or when a request lacks
    /// it, the connection's peer address counts. Default none.
    pub client_ip_header: Option<String>,
    /// How many proxies in front of the node append to `client_ip_header`: the entry
    /// that many from the right counts (what the first trusted proxy received from).
    /// Entries to its left are the client's own and never count. Default 1.
    pub trusted_hops: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 100.0,
            burst: 200,
            max_tracked: 100_000,
            client_ip_header: None,
            trusted_hops: 1,
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
        if !(1..=16).contains(&self.trusted_hops) {
            return Err(invalid("rate_limit.trusted_hops", "must be from 1 to 16"));
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

    fn forwarded(values: &[&str]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_address_counts_from_the_right_past_the_trusted_proxies() {
        let name = axum::http::HeaderName::from_static("x-forwarded-for");
        let at = |values: &[&str], hops| client_addr(&forwarded(values), &name, hops);
        let user: IpAddr = "203.0.113.7".parse().unwrap();
        // What the client wrote itself, on the left, never counts.
        assert_eq!(at(&["1.2.3.4, 203.0.113.7"], 1), Some(user));
        assert_eq!(at(&["spoofed, 1.2.3.4,203.0.113.7"], 1), Some(user));
        // Two proxies: the first appended the user, the second the first proxy.
        assert_eq!(at(&["9.9.9.9, 203.0.113.7, 10.0.0.2"], 2), Some(user));
        // Headers repeated are one list, in order.
        assert_eq!(at(&["9.9.9.9", "203.0.113.7, 10.0.0.2"], 2), Some(user));
        // Fewer entries than trusted proxies, or garbage where the address should be:
        // the peer counts instead.
        assert_eq!(at(&["203.0.113.7"], 2), None);
        assert_eq!(at(&["203.0.113.7, not-an-address"], 1), None);
        assert_eq!(at(&[], 1), None);
        // Written with a port, as some proxies do.
        assert_eq!(at(&["203.0.113.7:4711"], 1), Some(user));
        assert_eq!(
            at(&["[2001:db8::1]:443"], 1),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn an_ipv6_slash_64_is_one_bucket() {
        let limiter = RateLimiter::new(1.0, 2, 100);
        let t = Instant::now();
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(limiter.take(v6("2001:db8:1:2::1"), t).is_ok());
        assert!(limiter.take(v6("2001:db8:1:2:ffff::9"), t).is_ok());
        assert!(
            limiter
                .take(v6("2001:db8:1:2:1234:5678:9abc:def0"), t)
                .is_err(),
            "another address of the same /64 shares its bucket"
        );
        assert!(
            limiter.take(v6("2001:db8:1:3::1"), t).is_ok(),
            "the next /64"
        );
        // IPv4-mapped is the IPv4 address.
        assert!(limiter.take(v6("192.0.2.1"), t).is_ok());
        assert!(limiter.take(v6("::ffff:192.0.2.1"), t).is_ok());
        assert!(limiter.take(v6("192.0.2.1"), t).is_err());
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
