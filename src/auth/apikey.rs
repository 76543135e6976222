//! API keys: consumers defined in config, keys stored only as SHA-256
//! hashes. A presented key is hashed, found by the first 8 bytes of its
//! hash, and the whole hash compared in constant time; the key itself is
//! never stored, logged or compared.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A consumer: who an API key belongs to.
#[derive(Debug)]
pub struct Consumer {
    pub id: Box<str>,
    pub groups: Box<[Box<str>]>,
    pub scopes: Box<[Box<str>]>,
}

/// One stored key.
#[derive(Debug)]
pub struct StoredKey {
    pub hash: [u8; 32],
    pub consumer: usize,
    /// Seconds since the epoch; `None` = no bound.
    pub not_before: Option<u64>,
    pub expires: Option<u64>,
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReject {
    Unknown,
    NotYetValid,
    Expired,
}

impl KeyReject {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyReject::Unknown => "unknown_api_key",
            KeyReject::NotYetValid => "api_key_not_yet_valid",
            KeyReject::Expired => "api_key_expired",
        }
    }
}

/// All consumers and their keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    pub consumers: Vec<Consumer>,
    by_prefix: HashMap<u64, Vec<StoredKey>>,
}

/// `sha256:<hex>` of a key, the form the config stores.
pub fn hash_key(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The SHA-256 of a key or secret, as stored.
pub fn hash_key_bytes(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

impl ApiKeys {
    pub fn add_consumer(&mut self, consumer: Consumer) -> usize {
        self.consumers.push(consumer);
        self.consumers.len() - 1
    }

    pub fn add_key(&mut self, key: StoredKey) {
        self.by_prefix
            .entry(prefix(&key.hash))
            .or_default()
            .push(key);
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// The consumer owning `presented` at `now` (seconds since the epoch).
    pub fn lookup(&self, presented: &[u8], now: u64) -> Result<&Consumer, KeyReject> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let candidates = self
            .by_prefix
            .get(&prefix(&hash))
            .ok_or(KeyReject::Unknown)?;
        let stored = candidates
            .iter()
            .find(|k| bool::from(k.hash.ct_eq(&hash)))
            .ok_or(KeyReject::Unknown)?;
        if stored.not_before.is_some_and(|t| now < t) {
            return Err(KeyReject::NotYetValid);
        }
        if stored.expires.is_some_and(|t| now >= t) {
            return Err(KeyReject::Expired);
        }
        Ok(&self.consumers[stored.consumer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_within_their_validity() {
        let mut keys = ApiKeys::default();
        let c = keys.add_consumer(Consumer {
            id: "mobile".into(),
            groups: Box::new([]),
            scopes: Box::new([]),
        });
        let hash = |k: &str| parse_hash(&hash_key(k.as_bytes())).unwrap();
        keys.add_key(StoredKey {
            hash: hash("current"),
            consumer: c,
            not_before: None,
            expires: Some(2_000),
        });
        keys.add_key(StoredKey {
            hash: hash("next"),
            consumer: c,
            not_before: Some(1_500),
            expires: None,
        });
        assert_eq!(
            keys.lookup(b"current", 1_000).unwrap().id.as_ref(),
            "mobile"
        );
        assert_eq!(
            keys.lookup(b"current", 2_000).unwrap_err(),
            KeyReject::Expired
        );
        assert_eq!(
            keys.lookup(b"next", 1_000).unwrap_err(),
            KeyReject::NotYetValid
        );
        assert!(keys.lookup(b"next", 1_500).is_ok());
        assert_eq!(
            keys.lookup(b"curren", 1_000).unwrap_err(),
            KeyReject::Unknown
        );
    }

    #[test]
    fn the_stored_form() {
        assert_eq!(
            hash_key(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_hash("sha256:zz").is_none());
        assert!(parse_hash("md5:900150983cd24fb0d6963f7d28e17f72").is_none());
    }
}
