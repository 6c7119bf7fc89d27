//! Opaque ListKeys cursors. A token carries the last key id of a page and a
//! fingerprint of the filters it was issued for, plus a truncated SHA-256
//! tag, all in URL-safe base64. Clients cannot usefully edit a token by
//! accident, and a token reused with different filters is refused instead of
//! silently paging through another result set.
//!
//! The tag is an integrity check, not a signature: a determined client can
//! forge a token, which only lets it start a listing at another key id. The
//! owner and environment bounds of ListKeys are enforced independently.

use sha2::{Digest, Sha256};

/// Format version, the first payload byte.
const VERSION: u8 = 1;
/// Bytes of the integrity tag.
const TAG_BYTES: usize = 8;
/// Bytes before the key id: version and fingerprint.
const HEADER_BYTES: usize = 1 + 8;
/// Longest token accepted, in characters.
pub const MAX_TOKEN_CHARS: usize = 512;
/// Domain separation for the tag.
const TAG_CONTEXT: &[u8] = b"keygate.page_token.v1\0";

/// Why a page token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not URL-safe base64, too short, too long or an unknown version.
    #[error("page token is malformed")]
    Malformed,
    /// The integrity tag does not match: the token was modified or truncated.
    #[error("page token is corrupt or was modified")]
    Tampered,
    /// The token was issued for a listing with other filters.
    #[error("page token was issued for different filters")]
    FilterMismatch,
}

/// A stable 64-bit fingerprint of filter values: the first 8 bytes of
/// SHA-256 of the parts joined with a 0 byte.
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    u64::from_be_bytes(first8(&digest))
}

fn first8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

fn tag(payload: &[u8]) -> [u8; TAG_BYTES] {
    let mut h = Sha256::new();
    h.update(TAG_CONTEXT);
    h.update(payload);
    first8(&h.finalize())
}

/// A token to continue a listing after `after_key_id`, valid only for the
/// filters whose [`fingerprint`] is `filter_fingerprint`.
pub fn encode(after_key_id: &str, filter_fingerprint: u64) -> String {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + after_key_id.len() + TAG_BYTES);
    bytes.push(VERSION);
    bytes.extend_from_slice(&filter_fingerprint.to_be_bytes());
    bytes.extend_from_slice(after_key_id.as_bytes());
    let t = tag(&bytes);
    bytes.extend_from_slice(&t);
    base64url::encode(&bytes)
}

/// The key id a token continues after, if the token is intact and was issued
/// for `filter_fingerprint`.
pub fn decode(token: &str, filter_fingerprint: u64) -> Result<String, PageTokenError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(PageTokenError::Malformed);
    }
    let bytes = base64url::decode(token).ok_or(PageTokenError::Malformed)?;
    if bytes.len() < HEADER_BYTES + TAG_BYTES {
        return Err(PageTokenError::Malformed);
    }
    let (payload, got_tag) = bytes.split_at(bytes.len() - TAG_BYTES);
    if tag(payload) != got_tag {
        return Err(PageTokenError::Tampered);
    }
    if payload[0] != VERSION {
        return Err(PageTokenError::Malformed);
    }
    if u64::from_be_bytes(first8(&payload[1..])) != filter_fingerprint {
        return Err(PageTokenError::FilterMismatch);
    }
    String::from_utf8(payload[HEADER_BYTES..].to_vec()).map_err(|_| PageTokenError::Malformed)
}

/// Unpadded URL-safe base64 (RFC 4648 §5), strict: only canonical encodings
/// decode, so every distinct string maps to distinct bytes.
mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }

    pub(super) fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.as_bytes();
        if s.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
        for chunk in s.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= value(c)? << (18 - 6 * i);
            }
            let produced = chunk.len() - 1;
            // Bits below the produced bytes must be zero (canonical form).
            if n & ((1u32 << (24 - 8 * produced)) - 1) != 0 {
                return None;
            }
            out.extend((0..produced).map(|i| (n >> (16 - 8 * i)) as u8));
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rfc4648_vectors() {
            let cases = [
                ("", ""),
                ("f", "Zg"),
                ("fo", "Zm8"),
                ("foo", "Zm9v"),
                ("foob", "Zm9vYg"),
                ("fooba", "Zm9vYmE"),
                ("foobar", "Zm9vYmFy"),
            ];
            for (plain, enc) in cases {
                assert_eq!(encode(plain.as_bytes()), enc);
                assert_eq!(decode(enc).unwrap(), plain.as_bytes());
            }
            assert_eq!(encode(&[0xfb, 0xff]), "-_8");
            assert_eq!(decode("-_8").unwrap(), [0xfb, 0xff]);
        }

        #[test]
        fn strict_decoding() {
            assert_eq!(decode("Zg=="), None);
            assert_eq!(decode("Zh"), None); // non-zero trailing bits
            assert_eq!(decode("Zm9"), None);
            assert_eq!(decode("Z"), None);
            assert_eq!(decode("Zm9v+/"), None);
            assert_eq!(decode("Zm 9v"), None);
        }

        proptest::proptest! {
            #[test]
            fn roundtrip(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
                proptest::prop_assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn roundtrip_basic() {
        let fp = fingerprint(&["acme", "live", "active"]);
        let t = encode(ID, fp);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode(&t, fp).unwrap(), ID);
    }

    #[test]
    fn fingerprint_is_stable_and_separates_parts() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["ab", ""]));
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["b", "a"]));
        assert_ne!(fingerprint(&[]), fingerprint(&[""; 2]));
        // Pinned: changing this breaks tokens held by clients across upgrades.
        let mut h = Sha256::new();
        h.update(b"a\0b");
        assert_eq!(
            fingerprint(&["a", "b"]),
            u64::from_be_bytes(first8(&h.finalize()))
        );
    }

    #[test]
    fn other_filters_rejected() {
        let t = encode(ID, fingerprint(&["acme", "live", ""]));
        assert_eq!(
            decode(&t, fingerprint(&["acme", "test", ""])),
            Err(PageTokenError::FilterMismatch)
        );
        assert_eq!(
            decode(&t, fingerprint(&["other", "live", ""])),
            Err(PageTokenError::FilterMismatch)
        );
    }

    #[test]
    fn every_single_byte_tamper_is_rejected() {
        let fp = 42;
        let t = encode(ID, fp);
        let raw = base64url::decode(&t).unwrap();
        for i in 0..raw.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut b = raw.clone();
                b[i] ^= delta;
                assert_eq!(
                    decode(&base64url::encode(&b), fp),
                    Err(PageTokenError::Tampered),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn every_single_char_tamper_is_rejected() {
        let fp = 7;
        let t = encode(ID, fp);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. ";
        for i in 0..t.len() {
            for c in alphabet.chars() {
                if t.as_bytes()[i] == c as u8 {
                    continue;
                }
                let mut s = t.clone();
                s.replace_range(i..=i, &c.to_string());
                assert!(decode(&s, fp).is_err(), "{s}");
            }
        }
        // Truncation and extension too.
        assert!(decode(&t[..t.len() - 1], fp).is_err());
        assert!(decode(&format!("{t}A"), fp).is_err());
        assert!(decode(&format!("{t}AA"), fp).is_err());
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(decode("", 0), Err(PageTokenError::Malformed));
        assert_eq!(decode("!!!!", 0), Err(PageTokenError::Malformed));
        assert_eq!(decode("AAAA", 0), Err(PageTokenError::Malformed));
        assert_eq!(
            decode(&"A".repeat(MAX_TOKEN_CHARS + 4), 0),
            Err(PageTokenError::Malformed)
        );
        assert_eq!(
            PageTokenError::Tampered.to_string(),
            "page token is corrupt or was modified"
        );
        assert_eq!(
            PageTokenError::FilterMismatch.to_string(),
            "page token was issued for different filters"
        );
    }

    /// Printable strings, strings of any characters, base64url-like
    /// strings, and arbitrary bytes read as (lossy) UTF-8.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,100}",
            ".{0,100}",
            "[A-Za-z0-9_=+/-]{0,600}",
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    const MESSAGES: [&str; 3] = [
        "page token is malformed",
        "page token is corrupt or was modified",
        "page token was issued for different filters",
    ];

    proptest! {
        #[test]
        fn any_text_is_refused_with_a_reason(token in any_text(), fp in any::<u64>()) {
            // Nothing typed or garbled by hand carries a valid tag.
            let err = decode(&token, fp).unwrap_err();
            prop_assert!(MESSAGES.contains(&err.to_string().as_str()), "{}", err);
        }

        #[test]
        fn untagged_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..400), fp in any::<u64>()) {
            let token = base64url::encode(&bytes);
            let err = decode(&token, fp).unwrap_err();
            if token.len() > MAX_TOKEN_CHARS || bytes.len() < HEADER_BYTES + TAG_BYTES {
                prop_assert_eq!(err, PageTokenError::Malformed);
            } else {
                prop_assert_eq!(err, PageTokenError::Tampered);
            }
        }

        /// A correctly tagged token with any payload (any version byte, any
        /// fingerprint, any bytes for the key id, including invalid UTF-8)
        /// is decoded or refused for the right reason, without panicking.
        #[test]
        fn tagged_payloads_are_judged_field_by_field(
            payload in prop::collection::vec(any::<u8>(), 0..120),
            version_ok in any::<bool>(),
            fp in any::<u64>(),
            fp_ok in any::<bool>(),
        ) {
            let mut payload = payload;
            if version_ok && !payload.is_empty() {
                payload[0] = VERSION;
            }
            if fp_ok && payload.len() >= HEADER_BYTES {
                payload[1..HEADER_BYTES].copy_from_slice(&fp.to_be_bytes());
            }
            let mut bytes = payload.clone();
            bytes.extend_from_slice(&tag(&payload));
            let token = base64url::encode(&bytes);
            let got = decode(&token, fp);
            let want = if token.len() > MAX_TOKEN_CHARS
                || payload.len() < HEADER_BYTES
                || payload[0] != VERSION
            {
                Err(PageTokenError::Malformed)
            } else if payload[1..HEADER_BYTES] != fp.to_be_bytes() {
                Err(PageTokenError::FilterMismatch)
            } else {
                String::from_utf8(payload[HEADER_BYTES..].to_vec())
                    .map_err(|_| PageTokenError::Malformed)
            };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn roundtrip(id in "\\PC{0,64}", fp in any::<u64>()) {
            let t = encode(&id, fp);
            prop_assert_eq!(decode(&t, fp).unwrap(), id.clone());
            if fp != 0 {
                prop_assert_eq!(decode(&t, 0), Err(PageTokenError::FilterMismatch));
            }
        }
    }
}
