//! The environments a deployment knows (`live`, `test`, ...). Every key lives
//! in exactly one, and its name is part of the key's visible prefix, so the
//! names are kept short and to a strict alphabet.

use crate::validation::quote;

/// Longest environment name.
pub const MAX_ENVIRONMENT_CHARS: usize = 16;

/// Why a list of environments was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvironmentError {
    /// No environment was configured.
    #[error("at least one environment must be configured")]
    Empty,
    /// A name does not follow the grammar.
    #[error(
        "invalid environment name {}: expected 1-16 characters of [a-z0-9] starting with a letter",
        quote(.0)
    )]
    InvalidName(String),
    /// A name appears twice.
    #[error("duplicate environment name {}", quote(.0))]
    Duplicate(String),
}

/// Whether `name` is a valid environment name: 1-16 chars of `[a-z0-9]`,
/// starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=MAX_ENVIRONMENT_CHARS).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The configured, validated set of environment names, in configuration order.
#[derive(Clone, Debug)]
pub struct Environments {
    names: Vec<String>,
}

impl Environments {
    /// Validates a non-empty list of distinct names.
    pub fn new<I, S>(names: I) -> Result<Self, EnvironmentError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let name = name.into();
            if !is_valid_name(&name) {
                return Err(EnvironmentError::InvalidName(name));
            }
            if out.contains(&name) {
                return Err(EnvironmentError::Duplicate(name));
            }
            out.push(name);
        }
        if out.is_empty() {
            return Err(EnvironmentError::Empty);
        }
        Ok(Self { names: out })
    }

    /// Whether `name` is configured (exact match).
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The configured names, in configuration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Default for Environments {
    /// `live` and `test`.
    fn default() -> Self {
        Self {
            names: vec!["live".to_owned(), "test".to_owned()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_live_and_test() {
        let e = Environments::default();
        assert_eq!(e.names(), ["live", "test"]);
        assert!(e.contains("live"));
        assert!(e.contains("test"));
        assert!(!e.contains("prod"));
        assert!(!e.contains("Live"));
        assert!(!e.contains(""));
    }

    #[test]
    fn accepts_valid_lists() {
        let e = Environments::new(["prod", "staging2", "a", "abcdefghijklmnop"]).unwrap();
        assert_eq!(e.names().len(), 4);
        let owned = Environments::new(vec![String::from("dev")]).unwrap();
        assert!(owned.contains("dev"));
    }

    #[test]
    fn rejects_invalid_lists() {
        assert_eq!(
            Environments::new(Vec::<String>::new()).unwrap_err(),
            EnvironmentError::Empty
        );
        for bad in [
            "",
            "Live",
            "1live",
            "li-ve",
            "li_ve",
            "abcdefghijklmnopq",
            "é",
        ] {
            assert_eq!(
                Environments::new(["live", bad]).unwrap_err(),
                EnvironmentError::InvalidName(bad.to_owned()),
                "{bad:?}"
            );
        }
        assert_eq!(
            Environments::new(["live", "test", "live"]).unwrap_err(),
            EnvironmentError::Duplicate("live".into())
        );
    }
}
