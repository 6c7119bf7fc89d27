//! Secrets are never stored, only `SHA-256(salt || key)` with a random salt
//! per credential. Keys carry 190 bits of CSPRNG entropy, so a fast hash is
//! enough (no password-style stretching), and the hot path stays cheap. The
//! comparison is constant-time so timing reveals nothing about the hash.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::keyformat::{GeneratedKey, KeyFormat};
use crate::model::Credential;

/// A fresh 16-byte salt from the thread-local CSPRNG.
pub fn new_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// `SHA-256(salt || key)`.
pub fn hash_key(salt: &[u8; 16], key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(key.as_bytes());
    h.finalize().into()
}

/// Whether `key` hashes to `expected` under `salt`, compared in constant time.
pub fn verify(salt: &[u8; 16], expected: &[u8; 32], key: &str) -> bool {
    hash_key(salt, key).ct_eq(expected).into()
}

/// Generates a fresh key in `environment` and the [`Credential`] that stores
/// it: its lookup id, a new salt, the hash, the hint, `created_at = now`, no
/// expiry and no use yet.
pub fn issue_credential(
    format: &KeyFormat,
    environment: &str,
    now: DateTime<Utc>,
) -> (GeneratedKey, Credential) {
    let key = format.generate(environment);
    let salt = new_salt();
    let credential = Credential {
        lookup_id: key.lookup_id.clone(),
        salt,
        hash: hash_key(&salt, &key.secret),
        hint: key.hint.clone(),
        created_at: now,
        expires_at: None,
        last_used_at: None,
    };
    (key, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_salt_then_key() {
        let salt = [0u8; 16];
        let mut h = Sha256::new();
        h.update([0u8; 16]);
        h.update(b"abc");
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(hash_key(&salt, "abc"), want);
    }

    #[test]
    fn salt_changes_the_hash() {
        let a = new_salt();
        let b = new_salt();
        assert_ne!(a, b);
        assert_ne!(hash_key(&a, "k"), hash_key(&b, "k"));
    }

    #[test]
    fn verify_accepts_only_the_right_key() {
        let salt = new_salt();
        let h = hash_key(&salt, "kg_live_secret");
        assert!(verify(&salt, &h, "kg_live_secret"));
        assert!(!verify(&salt, &h, "kg_live_secreT"));
        assert!(!verify(&salt, &h, ""));
        assert!(!verify(&new_salt(), &h, "kg_live_secret"));
    }

    #[test]
    fn issued_credential_matches_key() {
        let now = Utc::now();
        let (key, cred) = issue_credential(&KeyFormat::default(), "live", now);
        assert_eq!(cred.lookup_id, key.lookup_id);
        assert_eq!(cred.hint, key.hint);
        assert_eq!(cred.created_at, now);
        assert_eq!(cred.expires_at, None);
        assert_eq!(cred.last_used_at, None);
        assert!(verify(&cred.salt, &cred.hash, &key.secret));
        assert!(KeyFormat::default().parse(&key.secret).is_ok());
    }
}
