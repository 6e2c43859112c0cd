//! A bounded memory of certificate signatures that verified.
//!
//! Every Nitro document carries its whole chain, and the CA part of it (root, regional, zonal
//! and instance certificates) repeats across documents and across refreshes; the leaf belongs
//! to one enclave and lives for hours, so it repeats too. Checking an issuer's signature over a
//! certificate is the expensive step of chain validation, and its answer depends on two inputs
//! only: the issuer's public key and the certificate's bytes. This cache remembers that answer.
//!
//! Soundness rests on the key: the issuer's whole SubjectPublicKeyInfo DER and the subject
//! certificate's whole DER, compared byte for byte (no digest). A hit therefore means "these
//! exact bytes were verified under this exact key". Only successes are stored; everything else
//! about a chain (the pinned root, names, validity at the verification time, CA constraints,
//! key usages, algorithms) is checked again on every call, and the document's own COSE
//! signature is never cached.
//!
//! The cache holds at most its capacity of entries and evicts the least recently used one, so
//! hostile input cannot grow it; at worst it evicts useful entries and verification goes back
//! to its uncached cost.

use std::collections::HashMap;
use std::sync::Mutex;

/// Default number of remembered signatures. An entry is at most about 1.2 KiB (AWS limits a
/// certificate to 1 KiB), so the default cache stays under 1 MiB. A Nitro document contributes
/// four links, of which the root's and the regional certificate's are shared by every enclave
/// of a region, so this covers a few hundred enclaves.
pub const DEFAULT_CHAIN_CACHE_CAPACITY: usize = 512;

/// Verified `(issuer key, certificate)` links, shared by clones of a [`super::Verifier`].
///
/// Thread-safe; clone the verifier (or share it behind an `Arc`) to share one cache between
/// all the resources a process verifies.
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    links: Mutex<Links>,
}

#[derive(Debug, Default)]
struct Links {
    /// Key → the tick of its last use.
    entries: HashMap<Vec<u8>, u64>,
    tick: u64,
}

impl ChainCache {
    /// An empty cache holding at most `capacity` links (`0` disables caching).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            links: Mutex::new(Links::default()),
        }
    }

    /// The most links this cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many links are remembered now.
    pub fn len(&self) -> usize {
        self.links.lock().map_or(0, |links| links.entries.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget everything.
    pub fn clear(&self) {
        if let Ok(mut links) = self.links.lock() {
            links.entries.clear();
        }
    }

    /// Whether `subject_der` was verified under `issuer_spki_der`; a hit refreshes the entry.
    ///
    /// A poisoned lock is a miss: the caller then verifies the signature itself.
    pub(super) fn contains(&self, issuer_spki_der: &[u8], subject_der: &[u8]) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let key = link_key(issuer_spki_der, subject_der);
        let Ok(mut links) = self.links.lock() else {
            return false;
        };
        let tick = links.next_tick();
        match links.entries.get_mut(key.as_slice()) {
            Some(last_used) => {
                *last_used = tick;
                true
            }
            None => false,
        }
    }

    /// Remember that `subject_der`'s signature verified under `issuer_spki_der`. Call only
    /// after the signature check succeeded.
    pub(super) fn insert(&self, issuer_spki_der: &[u8], subject_der: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let key = link_key(issuer_spki_der, subject_der);
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        let tick = links.next_tick();
        if !links.entries.contains_key(key.as_slice()) && links.entries.len() >= self.capacity {
            // Linear in the capacity, but only on a miss that just paid for an ECDSA check
            // (hundreds of microseconds), so it never dominates.
            let oldest = links
                .entries
                .iter()
                .min_by_key(|(_, last_used)| **last_used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                links.entries.remove(&oldest);
            }
        }
        links.entries.insert(key, tick);
    }
}

impl Default for ChainCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CHAIN_CACHE_CAPACITY)
    }
}

impl Links {
    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }
}

/// `len(issuer SPKI) as u32 BE || issuer SPKI || subject DER`: the length prefix makes the
/// split point unambiguous, so two different pairs never share a key.
fn link_key(issuer_spki_der: &[u8], subject_der: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + issuer_spki_der.len() + subject_der.len());
    let len = u32::try_from(issuer_spki_der.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(issuer_spki_der);
    key.extend_from_slice(subject_der);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_pairs_only() {
        let cache = ChainCache::with_capacity(4);
        cache.insert(b"issuer", b"subject");
        assert!(cache.contains(b"issuer", b"subject"));
        assert!(!cache.contains(b"issuer", b"subjecT"));
        assert!(!cache.contains(b"issueR", b"subject"));
        // Same concatenation, different split.
        assert!(!cache.contains(b"issue", b"rsubject"));
        assert!(!cache.contains(b"issuers", b"ubject"));
    }

    #[test]
    fn bounded_and_evicts_the_least_recently_used() {
        let cache = ChainCache::with_capacity(3);
        for subject in [&b"a"[..], b"b", b"c"] {
            cache.insert(b"k", subject);
        }
        // Touch `a`, so `b` is now the oldest.
        assert!(cache.contains(b"k", b"a"));
        cache.insert(b"k", b"d");
        assert_eq!(cache.len(), 3);
        assert!(cache.contains(b"k", b"a"));
        assert!(!cache.contains(b"k", b"b"));
        assert!(cache.contains(b"k", b"c"));
        assert!(cache.contains(b"k", b"d"));

        for i in 0..1000u32 {
            cache.insert(b"k", &i.to_be_bytes());
        }
        assert_eq!(cache.len(), 3);
        // Re-inserting a present key does not evict anything.
        cache.insert(b"k", &999u32.to_be_bytes());
        assert_eq!(cache.len(), 3);
        assert!(cache.contains(b"k", &998u32.to_be_bytes()));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let cache = ChainCache::with_capacity(0);
        cache.insert(b"issuer", b"subject");
        assert!(!cache.contains(b"issuer", b"subject"));
        assert!(cache.is_empty());
    }

    #[test]
    fn clear_forgets() {
        let cache = ChainCache::default();
        cache.insert(b"issuer", b"subject");
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(!cache.contains(b"issuer", b"subject"));
    }
}
