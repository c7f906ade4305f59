//! Bridge keys: the tokens users put in their SDK instead of a provider key.
//!
//! A token (`brg_` + 32 random bytes, base64url) is shown once at creation; the store keeps
//! only its SHA-256 (enough for a high-entropy secret, and it lets us look tokens up by hash
//! instead of comparing secrets), a short public id for `list`/`revoke`, and a display prefix.
//!
//! [`Authenticator`] sits on the request path: it caches lookups for a few seconds so a busy
//! gateway does not query the store per request, revocations still take effect within the TTL,
//! and a store outage does not lock out users whose tokens it has already seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::store::{KeyRow, Store};

/// Prefix of every bridge token, so leaked tokens are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "brg_";

/// How long a lookup result is trusted before asking the store again.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Beyond this many cached tokens, expired entries are evicted (guessing tokens must not grow
/// memory without bound).
const CACHE_MAX: usize = 10_000;
/// `last_used_at` is written at most this often per key, to keep writes off the hot path.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Who is calling: the result of authenticating a bridge token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub key_id: String,
}

/// A key just created: the only time the token is available.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub user: String,
    pub token: String,
}

/// Creates a key for `user` and returns the token (store only keeps its hash).
pub async fn create_key(store: &Store, user: &str) -> Result<NewKey, Error> {
    let user = user.trim();
    if user.is_empty() {
        return Err(Error::Query("user name must not be empty".into()));
    }
    let token = format!("{TOKEN_PREFIX}{}", base64url(&random_bytes::<32>()?));
    let id = format!("key_{}", hex(&random_bytes::<6>()?));
    let prefix: String = token.chars().take(TOKEN_PREFIX.len() + 6).collect();
    store
        .insert_key(&id, user, &prefix, &hash_token(&token), Utc::now())
        .await?;
    Ok(NewKey {
        id,
        user: user.into(),
        token,
    })
}

/// All keys (no secrets).
pub async fn list_keys(store: &Store) -> Result<Vec<KeyRow>, Error> {
    store.list_keys().await
}

/// Revokes a key by id; authenticators stop accepting it within their cache TTL.
pub async fn revoke_key(store: &Store, id: &str) -> Result<(), Error> {
    store.revoke_key(id).await
}

/// SHA-256 of the token, hex.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| Error::Store(format!("random source: {e}")))?;
    Ok(b)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

pub(crate) fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

struct CacheEntry {
    identity: Option<Identity>,
    fetched: Instant,
    touched: Option<Instant>,
}

/// Token → identity, with a short-lived in-memory cache. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    cache: Arc<Mutex<HashMap<String, CacheEntry>>>,
    ttl: Duration,
    /// Set when a lookup failed: until then, known tokens are answered from the cache without
    /// asking the store, so an outage does not add a connect timeout to every request.
    store_down_until: Arc<Mutex<Option<Instant>>>,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Self::with_ttl(store, CACHE_TTL)
    }

    /// Like [`Authenticator::new`] with another cache lifetime (tests use a short one).
    pub fn with_ttl(store: Store, ttl: Duration) -> Self {
        Authenticator {
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
            ttl,
            store_down_until: Arc::new(Mutex::new(None)),
        }
    }

    /// `Ok(None)` for an unknown or revoked token; `Err` only when the store cannot answer
    /// and the token has never been seen.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>, Error> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = hash_token(token);
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&hash) {
                Some(e) if now.duration_since(e.fetched) < self.ttl => {
                    let identity = e.identity.clone();
                    let due = e
                        .touched
                        .is_none_or(|t| now.duration_since(t) >= TOUCH_INTERVAL);
                    drop(cache);
                    if let (Some(id), true) = (&identity, due) {
                        self.touch(&hash, &id.key_id);
                    }
                    return Ok(identity);
                }
                Some(e) => Some(e.identity.clone()),
                None => None,
            }
        };
        if let Some(identity) = &stale {
            let down = *self
                .store_down_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if down.is_some_and(|until| now < until) {
                return Ok(identity.clone());
            }
        }
        match self.store.key_by_hash(&hash).await {
            Ok(found) => {
                let identity = match found {
                    Some((key_id, user, false)) => Some(Identity { user, key_id }),
                    _ => None,
                };
                {
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= CACHE_MAX {
                        let ttl = self.ttl;
                        cache.retain(|_, e| now.duration_since(e.fetched) < ttl);
                        if cache.len() >= CACHE_MAX {
                            cache.clear();
                        }
                    }
                    let touched = cache.get(&hash).and_then(|e| e.touched);
                    cache.insert(
                        hash.clone(),
                        CacheEntry {
                            identity: identity.clone(),
                            fetched: now,
                            touched,
                        },
                    );
                }
                if let Some(id) = &identity {
                    self.touch(&hash, &id.key_id);
                }
                Ok(identity)
            }
            Err(e) => {
                *self
                    .store_down_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.ttl);
                match stale {
                    // The store is down but we knew this token: keep serving the last answer.
                    Some(identity) => {
                        tracing::warn!(error = %e, "key store unavailable; using cached key lookup");
                        Ok(identity)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Records `last_used_at` in the background, at most once per [`TOUCH_INTERVAL`].
    fn touch(&self, hash: &str, key_id: &str) {
        let now = Instant::now();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = cache.get_mut(hash) else {
                return;
            };
            if entry
                .touched
                .is_some_and(|t| now.duration_since(t) < TOUCH_INTERVAL)
            {
                return;
            }
            entry.touched = Some(now);
        }
        let store = self.store.clone();
        let key_id = key_id.to_string();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.touch_key(&key_id, Utc::now()).await {
                    tracing::debug!(error = %e, key_id, "could not record key use");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_encodes_32_bytes_into_43_unpadded_characters() {
        let s = base64url(&[0xffu8; 32]);
        assert_eq!(s.len(), 43);
        assert!(s.chars().all(|c| c == '_' || c == '8' || c == 'w'), "{s}");
        assert_eq!(base64url(b"Man"), "TWFu");
        assert_eq!(base64url(b"Ma"), "TWE");
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
