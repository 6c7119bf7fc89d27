//! The shape of a Keygate secret: `{prefix}_{environment}_{body}`, where the
//! body is 32 uniformly random base62 characters followed by a 6-character
//! base62 CRC32 of everything before it. The visible prefix lets people and
//! secret scanners recognise a key; the checksum lets the Authorize hot path
//! reject typos, truncations and garbage without touching a cache or
//! database; the first 8 body characters are the lookup id that finds the
//! stored credential.
//!
//! The checksum is not a defence against forgery: CRC32 is public, so a
//! made-up key with a valid checksum parses, and costs one (negatively
//! cached) storage lookup before it is refused.

use std::fmt;

use rand::{CryptoRng, Rng};

use crate::environment;
use crate::validation::quote;

/// The base62 alphabet, in value order.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters in a body.
pub const RANDOM_CHARS: usize = 32;
/// Checksum characters at the end of a body.
pub const CHECKSUM_CHARS: usize = 6;
/// Length of a body: random part plus checksum.
pub const BODY_CHARS: usize = RANDOM_CHARS + CHECKSUM_CHARS;
/// Length of a lookup id: the first characters of the body.
pub const LOOKUP_ID_CHARS: usize = 8;
/// Length of a hint: the last characters of the secret.
pub const HINT_CHARS: usize = 4;
/// Longest input [`KeyFormat::parse`] looks at (after normalisation).
pub const MAX_KEY_BYTES: usize = 128;
/// Longest prefix.
pub const MAX_PREFIX_CHARS: usize = 16;
/// The default prefix.
pub const DEFAULT_PREFIX: &str = "kg";
/// Bytes at or above this are rejected when sampling, so `byte % 62` is
/// uniform (`248 = 62 * 4`).
const REJECT_AT: u8 = 248;

/// A regular expression secret scanners can use to find keys with the default
/// prefix.
pub const SCANNER_REGEX: &str = r"\bkg_[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{38}\b";

/// Why a prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// The prefix does not follow the grammar.
    #[error(
        "invalid key prefix {}: expected 1-16 characters of [a-z0-9] starting with a letter",
        quote(.0)
    )]
    InvalidPrefix(String),
}

/// Why a presented key was rejected before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing was presented.
    #[error("api key is empty")]
    Empty,
    /// Wrong shape, prefix, characters or length.
    #[error("api key is malformed")]
    Malformed,
    /// The shape is right but the checksum does not match (a typo).
    #[error("api key checksum does not match")]
    BadChecksum,
}

/// A freshly generated secret. Shown to the user once; only its hash is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The full secret, `{prefix}_{environment}_{body}`.
    pub secret: String,
    /// The first 8 characters of the body.
    pub lookup_id: String,
    /// The last 4 characters of the secret.
    pub hint: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("secret", &"<redacted>")
            .field("lookup_id", &self.lookup_id)
            .field("hint", &self.hint)
            .finish()
    }
}

/// A presented key whose shape and checksum are valid. Borrows from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The normalised key: trimmed, without a `Bearer` scheme.
    pub key: &'a str,
    /// The environment named in the key.
    pub environment: &'a str,
    /// The first 8 characters of the body.
    pub lookup_id: &'a str,
}

/// The key format of one deployment: its prefix.
#[derive(Clone, Debug)]
pub struct KeyFormat {
    prefix: String,
}

impl Default for KeyFormat {
    /// The `kg` prefix.
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl KeyFormat {
    /// A format with `prefix`: 1-16 characters of `[a-z0-9]`, starting with a
    /// letter.
    pub fn new(prefix: &str) -> Result<Self, KeyFormatError> {
        if !environment::is_valid_name(prefix) {
            return Err(KeyFormatError::InvalidPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix, such as `kg`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The visible start of every key in `environment`, such as `kg_live_`.
    pub fn display_prefix(&self, environment: &str) -> String {
        format!("{}_{}_", self.prefix, environment)
    }

    /// A scanner regular expression for this format's prefix.
    pub fn scanner_regex(&self) -> String {
        format!(
            r"\b{}_[a-z][a-z0-9]{{0,15}}_[0-9A-Za-z]{{{BODY_CHARS}}}\b",
            self.prefix
        )
    }

    /// Generates a new key in `environment` from the thread-local CSPRNG.
    /// `environment` should be a valid environment name; otherwise the key
    /// will not parse.
    pub fn generate(&self, environment: &str) -> GeneratedKey {
        self.generate_with(environment, &mut rand::rng())
    }

    /// Generates a new key in `environment` from `rng`, which must be a CSPRNG.
    pub fn generate_with<R: CryptoRng + Rng + ?Sized>(
        &self,
        environment: &str,
        rng: &mut R,
    ) -> GeneratedKey {
        debug_assert!(
            environment::is_valid_name(environment),
            "invalid environment name {environment:?}"
        );
        let mut secret =
            String::with_capacity(self.prefix.len() + environment.len() + 2 + BODY_CHARS);
        secret.push_str(&self.prefix);
        secret.push('_');
        secret.push_str(environment);
        secret.push('_');
        let body_start = secret.len();

        let mut produced = 0;
        let mut buf = [0u8; 64];
        while produced < RANDOM_CHARS {
            rng.fill_bytes(&mut buf);
            for &b in buf.iter().filter(|&&b| b < REJECT_AT) {
                secret.push(char::from(ALPHABET[usize::from(b % 62)]));
                produced += 1;
                if produced == RANDOM_CHARS {
                    break;
                }
            }
        }
        let checksum = encode_checksum(crc32fast::hash(secret.as_bytes()));
        secret.extend(checksum.iter().map(|&b| char::from(b)));

        let lookup_id = secret[body_start..body_start + LOOKUP_ID_CHARS].to_owned();
        let hint = secret[secret.len() - HINT_CHARS..].to_owned();
        GeneratedKey {
            secret,
            lookup_id,
            hint,
        }
    }

    /// Checks the shape and checksum of a presented key, without allocating.
    /// Surrounding whitespace and an optional `Bearer ` scheme
    /// (case-insensitive, then one or more spaces) are stripped first. The
    /// environment must be a valid environment name (`[a-z][a-z0-9]{0,15}`).
    pub fn parse<'a>(&self, presented: &'a str) -> Result<ParsedKey<'a>, ParseError> {
        let key = strip_scheme(presented.trim());
        if key.is_empty() {
            return Err(ParseError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(ParseError::Malformed);
        }
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(ParseError::Malformed)?;
        let (environment, body) = rest.split_once('_').ok_or(ParseError::Malformed)?;
        if !environment::is_valid_name(environment)
            || body.len() != BODY_CHARS
            || !body.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ParseError::Malformed);
        }
        let (signed, checksum) = key.split_at(key.len() - CHECKSUM_CHARS);
        if encode_checksum(crc32fast::hash(signed.as_bytes())) != checksum.as_bytes() {
            return Err(ParseError::BadChecksum);
        }
        Ok(ParsedKey {
            key,
            environment,
            lookup_id: &body[..LOOKUP_ID_CHARS],
        })
    }
}

/// Removes a leading `Bearer` scheme (any case) followed by spaces. A bare
/// `Bearer` with nothing after it yields the empty string.
fn strip_scheme(s: &str) -> &str {
    const SCHEME: &str = "bearer";
    match s.get(..SCHEME.len()) {
        Some(head) if head.eq_ignore_ascii_case(SCHEME) => {
            let tail = &s[SCHEME.len()..];
            if tail.is_empty() {
                tail
            } else if tail.starts_with(' ') {
                tail.trim_start_matches(' ')
            } else {
                s
            }
        }
        _ => s,
    }
}

/// The CRC32 as 6 base62 digits, most significant first, zero-padded.
fn encode_checksum(crc: u32) -> [u8; CHECKSUM_CHARS] {
    let mut out = [b'0'; CHECKSUM_CHARS];
    let mut v = crc;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn fmt() -> KeyFormat {
        KeyFormat::default()
    }

    #[test]
    fn prefix_rules() {
        assert_eq!(fmt().prefix(), "kg");
        assert_eq!(fmt().display_prefix("live"), "kg_live_");
        assert_eq!(KeyFormat::new("acme1").unwrap().prefix(), "acme1");
        for bad in ["", "1kg", "KG", "k_g", "abcdefghijklmnopq", "k-g"] {
            assert_eq!(
                KeyFormat::new(bad).unwrap_err(),
                KeyFormatError::InvalidPrefix(bad.into())
            );
        }
    }

    #[test]
    fn generated_key_shape() {
        let k = fmt().generate("live");
        assert!(k.secret.starts_with("kg_live_"));
        assert_eq!(k.secret.len(), "kg_live_".len() + BODY_CHARS);
        assert_eq!(k.lookup_id, &k.secret[8..16]);
        assert_eq!(k.hint, &k.secret[k.secret.len() - 4..]);
        assert_ne!(fmt().generate("live").secret, k.secret);
        let parsed = fmt().parse(&k.secret).unwrap();
        assert_eq!(parsed.key, k.secret);
        assert_eq!(parsed.environment, "live");
        assert_eq!(parsed.lookup_id, k.lookup_id);
    }

    #[test]
    fn debug_redacts_secret() {
        let k = fmt().generate("test");
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.secret));
        assert!(dbg.contains("<redacted>"));
        assert!(dbg.contains(&k.lookup_id));
    }

    #[test]
    fn checksum_encoding_is_fixed_width() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(62), b"000010");
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn strips_bearer_and_whitespace() {
        let k = fmt().generate("live");
        for presented in [
            format!("Bearer {}", k.secret),
            format!("bearer {}", k.secret),
            format!("BEARER    {}", k.secret),
            format!("  \t{}\n", k.secret),
            format!(" Bearer  {} ", k.secret),
        ] {
            let p = fmt().parse(&presented).unwrap();
            assert_eq!(p.key, k.secret, "{presented:?}");
        }
        // The scheme must be followed by a space.
        assert_eq!(
            fmt().parse(&format!("Bearer{}", k.secret)),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            fmt().parse(&format!("Bearer\t{}", k.secret)),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            fmt().parse(&format!("Basic {}", k.secret)),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn empty_inputs() {
        for e in ["", "   ", "\n\t", "Bearer", "bearer   ", " Bearer "] {
            assert_eq!(fmt().parse(e), Err(ParseError::Empty), "{e:?}");
        }
    }

    #[test]
    fn malformed_inputs() {
        let k = fmt().generate("live");
        let body = &k.secret["kg_live_".len()..];
        let cases = [
            format!("xx_live_{body}"),
            format!("kgx_live_{body}"),
            format!("kg-live_{body}"),
            format!("kg_live{body}"),
            format!("kg__{body}"),
            format!("kg_Live_{body}"),
            format!("kg_1ive_{body}"),
            format!("kg_abcdefghijklmnopq_{body}"),
            format!("kg_live_{}", &body[1..]),
            format!("kg_live_{body}0"),
            format!("kg_live_{}-", &body[1..]),
            format!("kg_live_{}é", &body[2..]),
            format!("kg_live_x_{body}"),
            format!("{}{}", k.secret, "a".repeat(200)),
            "kg".to_owned(),
            "kg_".to_owned(),
            "kg_live_".to_owned(),
            "not a key".to_owned(),
        ];
        for c in cases {
            assert_eq!(fmt().parse(&c), Err(ParseError::Malformed), "{c:?}");
        }
        // Another deployment's prefix does not parse here.
        let other = KeyFormat::new("acme").unwrap();
        assert_eq!(other.parse(&k.secret), Err(ParseError::Malformed));
        let mine = other.generate("live");
        assert!(other.parse(&mine.secret).is_ok());
        assert_eq!(fmt().parse(&mine.secret), Err(ParseError::Malformed));
    }

    #[test]
    fn rejects_overlong_input_early() {
        let long = format!("kg_live_{}", "a".repeat(500));
        assert_eq!(fmt().parse(&long), Err(ParseError::Malformed));
    }

    #[test]
    fn environment_is_covered_by_the_checksum() {
        let k = fmt().generate("live");
        let moved = k.secret.replacen("kg_live_", "kg_test_", 1);
        assert_eq!(fmt().parse(&moved), Err(ParseError::BadChecksum));
    }

    #[test]
    fn scanner_regex_mentions_default_prefix() {
        assert_eq!(fmt().scanner_regex(), SCANNER_REGEX);
        assert!(
            KeyFormat::new("acme")
                .unwrap()
                .scanner_regex()
                .starts_with(r"\bacme_")
        );
    }

    #[test]
    fn rejection_sampling_covers_all_symbols_evenly() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u64; 62];
        let keys = 10_000;
        for _ in 0..keys {
            let k = fmt().generate_with("live", &mut rng);
            let random = &k.secret["kg_live_".len().."kg_live_".len() + RANDOM_CHARS];
            for b in random.bytes() {
                let idx = ALPHABET.iter().position(|&a| a == b).unwrap();
                counts[idx] += 1;
            }
        }
        let total = (keys * RANDOM_CHARS) as f64;
        let expected = total / 62.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| {
                let d = c as f64 - expected;
                d * d / expected
            })
            .sum();
        assert!(counts.iter().all(|&c| c > 0));
        // 61 degrees of freedom: mean 61, p = 1e-6 near 130.
        assert!(chi2 < 130.0, "chi-square {chi2}");
    }

    /// A "CSPRNG" that mostly returns bytes that must be rejected.
    #[derive(Debug)]
    struct HighBytes(u8);

    impl rand::RngCore for HighBytes {
        fn next_u32(&mut self) -> u32 {
            rand::rand_core::impls::next_u32_via_fill(self)
        }
        fn next_u64(&mut self) -> u64 {
            rand::rand_core::impls::next_u64_via_fill(self)
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for b in dst {
                self.0 = self.0.wrapping_add(1);
                // Only every 16th byte is below 248.
                *b = if self.0.is_multiple_of(16) {
                    61
                } else {
                    248 + self.0 % 8
                };
            }
        }
    }

    impl CryptoRng for HighBytes {}

    #[test]
    fn bytes_at_or_above_248_are_rejected() {
        let k = fmt().generate_with("live", &mut HighBytes(0));
        let random = &k.secret["kg_live_".len().."kg_live_".len() + RANDOM_CHARS];
        assert_eq!(random, "z".repeat(RANDOM_CHARS));
        assert!(fmt().parse(&k.secret).is_ok());
    }

    fn env_strategy() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,15}"
    }

    proptest! {
        #[test]
        fn generated_keys_parse_back(env in env_strategy(), seed in any::<u64>(), prefix in "[a-z][a-z0-9]{0,15}") {
            let format = KeyFormat::new(&prefix).unwrap();
            let k = format.generate_with(&env, &mut StdRng::seed_from_u64(seed));
            prop_assert!(k.secret.len() <= MAX_KEY_BYTES);
            let body_start = prefix.len() + env.len() + 2;
            let body = &k.secret[body_start..];
            prop_assert_eq!(body.len(), BODY_CHARS);
            prop_assert_eq!(&k.lookup_id, &body[..LOOKUP_ID_CHARS]);
            prop_assert_eq!(&k.hint, &k.secret[k.secret.len() - HINT_CHARS..]);
            let p = format.parse(&k.secret).unwrap();
            prop_assert_eq!(p.key, k.secret.as_str());
            prop_assert_eq!(p.environment, env.as_str());
            prop_assert_eq!(p.lookup_id, k.lookup_id.as_str());
        }

        #[test]
        fn any_single_body_change_fails_the_checksum(
            env in env_strategy(),
            seed in any::<u64>(),
            pos in 0..BODY_CHARS,
            replacement in 0..62usize,
        ) {
            let k = fmt().generate_with(&env, &mut StdRng::seed_from_u64(seed));
            let mut bytes = k.secret.clone().into_bytes();
            let at = bytes.len() - BODY_CHARS + pos;
            let new = ALPHABET[replacement];
            prop_assume!(bytes[at] != new);
            bytes[at] = new;
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(fmt().parse(&tampered), Err(ParseError::BadChecksum));
        }

        #[test]
        fn any_input_is_parsed_or_refused_with_a_reason(s in any_text()) {
            check_parse(&s)?;
        }

        #[test]
        fn near_keys_are_parsed_or_refused_with_a_reason(
            env in env_strategy(),
            seed in any::<u64>(),
            edit in 0..3u8,
            at in any::<prop::sample::Index>(),
            c in any::<char>(),
        ) {
            // One insertion, deletion or replacement of any character,
            // anywhere in a real key (including around the checksum).
            let k = fmt().generate_with(&env, &mut StdRng::seed_from_u64(seed));
            let mut chars: Vec<char> = k.secret.chars().collect();
            let i = at.index(chars.len());
            match edit {
                0 => chars.insert(i, c),
                1 => { chars.remove(i); }
                _ => chars[i] = c,
            }
            let edited: String = chars.into_iter().collect();
            check_parse(&edited)?;
            // The checksum catches every such edit: only whitespace around
            // the key (which is trimmed) leaves a key that parses.
            if let Ok(p) = fmt().parse(&edited) {
                prop_assert_eq!(p.key, k.secret.as_str());
            }
        }
    }

    /// Printable strings, strings of any characters, and arbitrary bytes
    /// read as (lossy) UTF-8, short and long.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,200}",
            ".{0,200}",
            "(Bearer +)?kg_[a-z0-9_]{0,20}[0-9A-Za-z]{30,40}",
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    /// `parse` never panics; a refusal says what is wrong with the key, and
    /// an acceptance is a well-formed part of the input.
    fn check_parse(s: &str) -> Result<(), TestCaseError> {
        match fmt().parse(s) {
            Ok(p) => {
                prop_assert!(s.contains(p.key));
                prop_assert!(p.key.starts_with("kg_"));
                prop_assert!(environment::is_valid_name(p.environment));
                prop_assert_eq!(p.lookup_id.len(), LOOKUP_ID_CHARS);
                prop_assert!(p.lookup_id.bytes().all(|b| b.is_ascii_alphanumeric()));
                prop_assert_eq!(fmt().parse(p.key), Ok(p));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("api key "), "{}", msg);
                // Never echoes the presented key.
                prop_assert!(msg.len() < 40, "{}", msg);
            }
        }
        Ok(())
    }
}
