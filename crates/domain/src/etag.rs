//! Etags: the optimistic-concurrency token of a key (Google's AIP-154).
//!
//! A key's etag is its stored version, which storage bumps on every change.
//! Clients treat it as opaque: they read it from a key and send it back with
//! a change, which then applies only if the key is still at that version.
//! The rendering (`v` and the decimal version) is not a promise; parsing
//! only has to accept what [`encode`] writes.

/// Why an etag sent by a client cannot be one of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an etag returned by Keygate")]
pub struct EtagError;

/// The etag of a key at `version`.
pub fn encode(version: u64) -> String {
    format!("v{version}")
}

/// The version named by an etag written by [`encode`].
pub fn decode(etag: &str) -> Result<u64, EtagError> {
    let digits = etag.strip_prefix('v').ok_or(EtagError)?;
    let canonical = !digits.is_empty()
        && digits.len() <= 20
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'));
    if !canonical {
        return Err(EtagError);
    }
    digits.parse().map_err(|_| EtagError)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn roundtrips_and_rejects_foreign_tokens() {
        for v in [1, 2, 42, u64::MAX] {
            assert_eq!(decode(&encode(v)), Ok(v));
        }
        for bad in [
            "",
            "v",
            "7",
            "v-1",
            "v+1",
            "v1 ",
            " v1",
            "V1",
            "v1.0",
            "v01",
            "v99999999999999999999",
        ] {
            assert_eq!(decode(bad), Err(EtagError), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            if let Ok(v) = decode(&s) {
                prop_assert_eq!(encode(v), s);
            }
        }
    }
}
