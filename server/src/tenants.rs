//! Per-tenant limits and counters: how fast a tenant may write (records
//! and bytes a second, a token bucket a second deep), how long its
//! queries may run and how large a page it may ask for; what each tenant
//! wrote and how often it was refused, for `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lode_protocol::ErrorCode;
use serde::Deserialize;

use crate::service::Failure;

/// One tenant's limits (`[tenant_limits]` for every tenant, `[tenant.NAME]`
/// for one); 0 or absent: no limit of its own.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Records a second (a second's worth may come at once).
    pub ingest_records_per_sec: u64,
    /// Bytes of records (their text) a second.
    pub ingest_bytes_per_sec: u64,
    /// A query of this tenant runs at most this long (else the server's
    /// `limits.query_timeout_ms`).
    pub query_timeout_ms: Option<u64>,
    /// Most records one page of this tenant's holds (else the server's
    /// `limits.max_result_records`).
    pub max_result_records: Option<usize>,
}

impl TenantLimits {
    /// `self`, with `fallback`'s limits where `self` sets none.
    fn over(&self, fallback: &TenantLimits) -> TenantLimits {
        let or = |a: u64, b: u64| if a > 0 { a } else { b };
        TenantLimits {
            ingest_records_per_sec: or(
                self.ingest_records_per_sec,
                fallback.ingest_records_per_sec,
            ),
            ingest_bytes_per_sec: or(self.ingest_bytes_per_sec, fallback.ingest_bytes_per_sec),
            query_timeout_ms: self.query_timeout_ms.or(fallback.query_timeout_ms),
            max_result_records: self.max_result_records.or(fallback.max_result_records),
        }
    }
}

/// A token bucket: `rate` a second, at most a second's worth saved.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `n` if the bucket holds them; else how long until it would.
    fn take(&mut self, n: u64, rate: u64, now: Instant) -> Result<(), Duration> {
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * rate).min(rate);
        self.at = now;
        let n = n as f64;
        // A request larger than a second's worth passes when the bucket is
        // full (it then owes the time it took), so it is not refused for
        // ever.
        if self.level >= n || self.level >= rate {
            self.level -= n;
            return Ok(());
        }
        Err(Duration::from_secs_f64((n.min(rate) - self.level) / rate))
    }
}

/// What one tenant did: for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantFigures {
    pub records: u64,
    pub bytes: u64,
    pub refused: u64,
}

#[derive(Debug)]
struct TenantState {
    records: Bucket,
    bytes: Bucket,
    figures: TenantFigures,
}

/// Every tenant's limits and state.
#[derive(Debug)]
pub struct Tenants {
    defaults: TenantLimits,
    overrides: BTreeMap<String, TenantLimits>,
    state: Mutex<HashMap<String, TenantState>>,
}

/// Tenants counted in `/metrics` at most (others are summed as `other`).
const MAX_COUNTED: usize = 10_000;

impl Tenants {
    pub fn new(defaults: TenantLimits, overrides: BTreeMap<String, TenantLimits>) -> Tenants {
        Tenants {
            defaults,
            overrides,
            state: Mutex::default(),
        }
    }

    /// The limits of `tenant`.
    pub fn limits(&self, tenant: &str) -> TenantLimits {
        match self.overrides.get(tenant) {
            Some(own) => own.over(&self.defaults),
            None => self.defaults.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantState>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a write of `records` records and `bytes` bytes for `tenant`
    /// at `now`, or refuses it (`busy`: HTTP 429 with `Retry-After`)
    /// naming the limit; either way it is counted.
    pub fn admit(
        &self,
        tenant: &str,
        records: u64,
        bytes: u64,
        now: Instant,
    ) -> Result<(), Failure> {
        let limits = self.limits(tenant);
        let mut state = self.lock();
        let counted = state.len() < MAX_COUNTED || state.contains_key(tenant);
        let key = if counted { tenant } else { "other" };
        let entry = state.entry(key.to_owned()).or_insert_with(|| {
            let full = |rate: u64| Bucket {
                level: rate as f64,
                at: now,
            };
            TenantState {
                records: full(limits.ingest_records_per_sec),
                bytes: full(limits.ingest_bytes_per_sec),
                figures: TenantFigures::default(),
            }
        });
        let mut wait = None;
        if limits.ingest_records_per_sec > 0
            && let Err(w) = entry
                .records
                .take(records, limits.ingest_records_per_sec, now)
        {
            wait = Some(("ingest_records_per_sec", limits.ingest_records_per_sec, w));
        }
        if wait.is_none()
            && limits.ingest_bytes_per_sec > 0
            && let Err(w) = entry.bytes.take(bytes, limits.ingest_bytes_per_sec, now)
        {
            wait = Some(("ingest_bytes_per_sec", limits.ingest_bytes_per_sec, w));
        }
        match wait {
            None => {
                entry.figures.records += records;
                entry.figures.bytes += bytes;
                Ok(())
            }
            Some((name, value, wait)) => {
                entry.figures.refused += 1;
                Err(Failure::new(
                    ErrorCode::Busy,
                    format!("tenant '{tenant}' is past its {name} = {value}; retry later"),
                )
                .retry_after(wait))
            }
        }
    }

    /// Each tenant's figures, by name.
    pub fn figures(&self) -> Vec<(String, TenantFigures)> {
        let mut all: Vec<(String, TenantFigures)> = self
            .lock()
            .iter()
            .map(|(name, state)| (name.clone(), state.figures))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_past_its_rate_is_refused_until_its_bucket_refills() {
        let limits = TenantLimits {
            ingest_records_per_sec: 100,
            ..TenantLimits::default()
        };
        let tenants = Tenants::new(
            TenantLimits::default(),
            BTreeMap::from([("a".into(), limits)]),
        );
        let t0 = Instant::now();
        assert!(
            tenants.admit("a", 100, 0, t0).is_ok(),
            "a second's worth at once"
        );
        let refused = tenants.admit("a", 10, 0, t0).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Busy);
        assert!(
            refused.message.contains("ingest_records_per_sec = 100"),
            "{}",
            refused.message
        );
        assert!(refused.retry_after_s.is_some_and(|s| s >= 1));
        assert!(
            tenants
                .admit("a", 10, 0, t0 + Duration::from_millis(150))
                .is_ok()
        );
        // Others have no limit, and are counted apart.
        assert!(tenants.admit("b", 1_000_000, 0, t0).is_ok());
        let figures = tenants.figures();
        assert_eq!(
            figures[0].1,
            TenantFigures {
                records: 110,
                bytes: 0,
                refused: 1
            }
        );
        assert_eq!(figures[1].1.records, 1_000_000);
        // A request larger than a second's worth passes on a full bucket.
        assert!(
            tenants
                .admit("a", 500, 0, t0 + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn a_tenant_override_keeps_the_defaults_it_does_not_set() {
        let defaults = TenantLimits {
            ingest_bytes_per_sec: 1000,
            max_result_records: Some(50),
            ..TenantLimits::default()
        };
        let own = TenantLimits {
            ingest_records_per_sec: 7,
            ..TenantLimits::default()
        };
        let tenants = Tenants::new(defaults, BTreeMap::from([("a".into(), own)]));
        let a = tenants.limits("a");
        assert_eq!(
            (
                a.ingest_records_per_sec,
                a.ingest_bytes_per_sec,
                a.max_result_records
            ),
            (7, 1000, Some(50))
        );
        assert_eq!(tenants.limits("b").ingest_records_per_sec, 0);
    }
}
