//! Credentials the helpdesk has just refused (401), answered 401 by this
//! replica for a short time (`[limiter] refused_credential_ttl_ms`) without
//! reaching the helpdesk or spending budget.
//!
//! What is kept: a keyed 64-bit hash of (tenant, `Authorization` value),
//! never the credential. The key is drawn at random when the process starts
//! (`RandomState`: SipHash-1-3), so the hashes mean nothing outside this
//! process and cannot be precomputed. A collision would refuse a good
//! credential for one TTL; with at most [`MAX_ENTRIES`] entries that is about
//! one chance in 10^15 per call.
//!
//! Bounded memory: at most [`MAX_ENTRIES`] entries (about 32 bytes each);
//! when full, expired entries are dropped, and if none has expired the one
//! expiring soonest (the oldest, the TTL being one for all) gives way.
//!
//! Per replica: a refused credential is known to the replica that saw the
//! 401, not shared through the store (another replica lets the credential
//! reach the helpdesk once more and learns it then).
//!
//! The hot path: a call while nothing is remembered costs one atomic load.
//! Otherwise one hash and one lookup under a `std::sync::Mutex` held for the
//! lookup only (never across an await); nothing is allocated.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

/// Most credentials remembered per replica.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub(super) struct RefusedCredentials {
    key: RandomState,
    /// Entries in `map` (read without the lock: 0 means nothing to look up).
    len: AtomicUsize,
    map: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// Hash of (tenant, credential) → until when it is refused.
    until: HashMap<u64, Instant>,
    /// The latest `until` in the map: once past, every entry has expired.
    latest: Option<Instant>,
}

impl Default for RefusedCredentials {
    fn default() -> Self {
        RefusedCredentials { key: RandomState::new(), len: AtomicUsize::new(0), map: Mutex::default() }
    }
}

impl RefusedCredentials {
    fn hash(&self, tenant: &str, credential: &[u8]) -> u64 {
        let mut h = self.key.build_hasher();
        h.write(tenant.as_bytes());
        // A separator no tenant name holds: ("ab", "c") and ("a", "bc") differ.
        h.write_u8(0xff);
        h.write(credential);
        h.finish()
    }

    /// Whether anything is remembered (possibly expired).
    pub(super) fn any(&self) -> bool {
        self.len.load(Ordering::Acquire) != 0
    }

    /// Whether `credential` was refused for `tenant` and still is at `now`.
    pub(super) fn contains(&self, tenant: &str, credential: &[u8], now: Instant) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let h = self.hash(tenant, credential);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.latest.is_some_and(|l| now >= l) {
            // Everything has expired: forget it all, so calls skip the lookup again.
            map.until.clear();
            map.latest = None;
            self.len.store(0, Ordering::Release);
            return false;
        }
        match map.until.get(&h) {
            Some(&until) if now < until => true,
            Some(_) => {
                map.until.remove(&h);
                self.len.store(map.until.len(), Ordering::Release);
                false
            }
            None => false,
        }
    }

    /// Remembers that `credential` was refused for `tenant`, until `until`.
    pub(super) fn insert(&self, tenant: &str, credential: &[u8], now: Instant, until: Instant) {
        let h = self.hash(tenant, credential);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.until.len() >= MAX_ENTRIES && !map.until.contains_key(&h) {
            map.until.retain(|_, u| now < *u);
            if map.until.len() >= MAX_ENTRIES {
                let oldest = map.until.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    map.until.remove(&k);
                }
            }
        }
        map.until.insert(h, until);
        map.latest = Some(map.latest.map_or(until, |l| l.max(until)));
        self.len.store(map.until.len(), Ordering::Release);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_refused_credential_is_refused_for_its_tenant_until_it_expires() {
        let r = RefusedCredentials::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(!r.contains("acme", b"Basic YmFkOlg=", now));
        r.insert("acme", b"Basic YmFkOlg=", now, now + ttl);
        assert!(r.contains("acme", b"Basic YmFkOlg=", now + ttl - Duration::from_millis(1)));
        // Another credential, or the same one for another tenant, is not.
        assert!(!r.contains("acme", b"Basic Z29vZDpY", now));
        assert!(!r.contains("tiny", b"Basic YmFkOlg=", now));
        // Once expired, it is forgotten and calls skip the lookup again.
        assert!(!r.contains("acme", b"Basic YmFkOlg=", now + ttl));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_entry_gives_way() {
        let r = RefusedCredentials::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES + 5 {
            let at = now + Duration::from_millis(i as u64);
            r.insert("acme", format!("Bearer {i}").as_bytes(), at, at + Duration::from_secs(10));
        }
        assert_eq!(r.len(), MAX_ENTRIES);
        let late = now + Duration::from_millis(MAX_ENTRIES as u64 + 10);
        assert!(!r.contains("acme", b"Bearer 0", late), "the oldest was evicted");
        assert!(r.contains("acme", format!("Bearer {}", MAX_ENTRIES + 4).as_bytes(), late));
    }

    #[test]
    fn only_a_hash_is_kept() {
        let r = RefusedCredentials::default();
        let now = Instant::now();
        r.insert("acme", b"Basic c2VjcmV0a2V5Olg=", now, now + Duration::from_secs(1));
        let dump = format!("{r:?}");
        assert!(!dump.contains("c2VjcmV0a2V5"), "{dump}");
    }
}
