//! Scopes name what a key may do (`dns:read`, `billing:*`, `*`). This module
//! owns their grammar and the one rule that decides whether held scopes grant
//! a required one, so the Authorize path and the management "no escalation"
//! check can never disagree.

use std::fmt;

use crate::validation::quote;

/// Reading keys through the management API.
pub const KEYS_READ: &str = "keys:read";
/// Creating, rotating and changing keys through the management API.
pub const KEYS_WRITE: &str = "keys:write";
/// Managing every key of every owner and environment; the root of trust.
pub const KEYS_ADMIN: &str = "keys:admin";

/// Longest resource or action part.
const MAX_PART_CHARS: usize = 64;
/// Longest whole scope: `resource:action` with both parts at their maximum.
pub const MAX_SCOPE_CHARS: usize = 2 * MAX_PART_CHARS + 1;

const GRAMMAR: &str = "expected `*` or `resource:action` (or `resource:*`), each part 1-64 characters of [a-z0-9_.-] starting with a letter or digit";

/// Why a scope string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The scope was empty (or only whitespace).
    #[error("scope is empty")]
    Empty,
    /// The scope does not follow the grammar; the message says what is
    /// wrong and quotes at most the first 64 characters of the scope.
    #[error("{0}")]
    Malformed(String),
}

/// A validated scope: `*`, `resource:*` or `resource:action`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Parses a scope, checking the grammar. Surrounding whitespace is not
    /// accepted: callers trim if they want to.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        let malformed = |why: &str| {
            ScopeError::Malformed(format!("invalid scope {}: {why}; {GRAMMAR}", quote(s)))
        };
        if s.len() > MAX_SCOPE_CHARS {
            return Err(malformed("too long"));
        }
        if s == "*" {
            return Ok(Scope(s.to_owned()));
        }
        let Some((resource, action)) = s.split_once(':') else {
            return Err(malformed("missing `:`"));
        };
        if !valid_part(resource) {
            return Err(malformed("bad resource"));
        }
        if action != "*" && !valid_part(action) {
            return Err(malformed("bad action"));
        }
        Ok(Scope(s.to_owned()))
    }

    /// The scope as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the global wildcard `*`.
    pub fn is_global_wildcard(&self) -> bool {
        self.0 == "*"
    }

    /// The resource part (`dns` in `dns:read`); `None` for `*`.
    pub fn resource(&self) -> Option<&str> {
        self.0.split_once(':').map(|(r, _)| r)
    }

    /// The action part (`read` in `dns:read`, `*` in `dns:*`); `None` for `*`.
    pub fn action(&self) -> Option<&str> {
        self.0.split_once(':').map(|(_, a)| a)
    }

    /// Whether this scope, held by a key, grants `required`.
    pub fn grants(&self, required: &Scope) -> bool {
        if self.is_global_wildcard() || self == required {
            return true;
        }
        match (self.resource(), self.action(), required.resource()) {
            // `resource:*` grants anything on that resource, including
            // `resource:*` itself; never `*`.
            (Some(held_res), Some("*"), Some(req_res)) => held_res == req_res,
            _ => false,
        }
    }
}

fn valid_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    (1..=MAX_PART_CHARS).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && !bytes[0].is_ascii_uppercase()
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

/// Whether `held` grants `required`: held contains it exactly, or holds
/// `resource:*` for its resource, or holds `*`. A wildcard requirement is
/// granted only by an equal or broader wildcard (`dns:*` by `dns:*` or `*`;
/// `*` only by `*`). The same rule checks that a manager never creates a key
/// beyond its own scopes.
pub fn grants(held: &[Scope], required: &Scope) -> bool {
    held.iter().any(|h| h.grants(required))
}

/// The `required` scopes that `held` does not grant, in order, without
/// duplicates.
pub fn missing(held: &[Scope], required: &[Scope]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for r in required {
        if !grants(held, r) && !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &str) -> Scope {
        Scope::parse(v).unwrap()
    }

    fn ss(v: &[&str]) -> Vec<Scope> {
        v.iter().map(|x| s(x)).collect()
    }

    #[test]
    fn parses_valid_scopes() {
        for ok in [
            "*",
            "dns:read",
            "dns:*",
            "a:b",
            "0:9",
            "billing.v2:write-all",
            "my_res:act.ion",
            "keys:admin",
        ] {
            assert_eq!(Scope::parse(ok).unwrap().as_str(), ok);
        }
        let long = format!("{}:{}", "a".repeat(64), "b".repeat(64));
        assert_eq!(long.len(), 129);
        assert!(Scope::parse(&long).is_ok());
    }

    #[test]
    fn rejects_invalid_scopes() {
        assert_eq!(Scope::parse(""), Err(ScopeError::Empty));
        for bad in [
            " ",
            "dns",
            "dns:",
            ":read",
            "DNS:read",
            "dns:Read",
            "dns:read:x",
            "*:read",
            "**",
            "dns:**",
            "dns:re*",
            "-dns:read",
            "dns:_read",
            "dns :read",
            " dns:read",
            "dns:read ",
            "dns:réad",
            "*:*",
        ] {
            match Scope::parse(bad) {
                Err(ScopeError::Malformed(msg)) => {
                    assert!(msg.contains("resource:action"), "{msg}");
                    assert!(!msg.ends_with('.'));
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let too_long_part = format!("{}:b", "a".repeat(65));
        assert!(Scope::parse(&too_long_part).is_err());
        let too_long = format!("{}:{}", "a".repeat(64), "b".repeat(65));
        assert!(Scope::parse(&too_long).is_err());
    }

    #[test]
    fn display_and_as_ref() {
        let sc = s("dns:read");
        assert_eq!(sc.to_string(), "dns:read");
        assert_eq!(AsRef::<str>::as_ref(&sc), "dns:read");
        assert_eq!("dns:read".parse::<Scope>().unwrap(), sc);
        assert_eq!(sc.resource(), Some("dns"));
        assert_eq!(sc.action(), Some("read"));
        assert_eq!(s("*").resource(), None);
    }

    #[test]
    fn grant_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["dns:read"], "dns:read", true),
            (&["dns:read"], "dns:write", false),
            (&["dns:*"], "dns:write", true),
            (&["dns:*"], "dns:*", true),
            (&["dns:*"], "dnsx:read", false),
            (&["dns:*"], "*", false),
            (&["*"], "anything:here", true),
            (&["*"], "dns:*", true),
            (&["*"], "*", true),
            (&["dns:read", "dns:write"], "dns:*", false),
            (&["dns:read"], "dns:*", false),
            (&["billing:*"], "dns:*", false),
            (&[], "dns:read", false),
            (&["keys:*"], "keys:admin", true),
        ];
        for (held, req, want) in cases {
            assert_eq!(grants(&ss(held), &s(req)), *want, "{held:?} -> {req}");
        }
    }

    #[test]
    fn missing_is_ordered_and_deduplicated() {
        let held = ss(&["dns:read", "billing:*"]);
        let req = ss(&[
            "zone:write",
            "dns:read",
            "a:b",
            "zone:write",
            "billing:x",
            "a:b",
        ]);
        assert_eq!(missing(&held, &req), ss(&["zone:write", "a:b"]));
        assert!(missing(&held, &[]).is_empty());
    }

    /// Printable strings, strings of any characters, scope-like strings,
    /// long strings, and arbitrary bytes read as (lossy) UTF-8.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,140}",
            ".{0,140}",
            "[a-zA-Z0-9_.*:-]{0,140}",
            "[a-z:*]{100,3000}",
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    #[test]
    fn long_scope_is_quoted_short() {
        let long = format!("dns:{}", "r".repeat(5_000));
        let Err(ScopeError::Malformed(msg)) = Scope::parse(&long) else {
            panic!("accepted a 5000-character scope");
        };
        assert!(msg.contains("too long"), "{msg}");
        assert!(msg.contains("\"…: too long"), "{msg}");
        assert!(msg.len() < 300, "{} bytes: {msg}", msg.len());
    }

    fn scope_strategy() -> impl Strategy<Value = Scope> {
        prop_oneof![
            Just("*".to_owned()),
            "[a-c]{1,2}:\\*",
            "[a-c]{1,2}:[a-c]{1,2}",
        ]
        .prop_map(|v| Scope::parse(&v).unwrap())
    }

    proptest! {
        #[test]
        fn grants_is_reflexive_and_transitive(a in scope_strategy(), b in scope_strategy(), c in scope_strategy()) {
            prop_assert!(a.grants(&a));
            if a.grants(&b) && b.grants(&c) {
                prop_assert!(a.grants(&c));
            }
            // Only `*` grants `*`.
            if c.is_global_wildcard() {
                prop_assert_eq!(a.grants(&c), a.is_global_wildcard());
            }
        }

        #[test]
        fn any_text_is_parsed_or_refused_with_a_reason(v in any_text()) {
            match Scope::parse(&v) {
                Ok(scope) => {
                    prop_assert_eq!(scope.as_str(), v.as_str());
                    prop_assert!(v.len() <= MAX_SCOPE_CHARS);
                    prop_assert!(scope.grants(&scope));
                }
                Err(ScopeError::Empty) => prop_assert!(v.is_empty()),
                Err(ScopeError::Malformed(msg)) => {
                    prop_assert!(msg.starts_with("invalid scope "), "{}", msg);
                    prop_assert!(msg.contains(GRAMMAR), "{}", msg);
                    let why = ["too long", "missing `:`", "bad resource", "bad action"];
                    prop_assert!(why.iter().any(|w| msg.contains(w)), "{}", msg);
                    prop_assert!(
                        msg.len() <= 4 * crate::validation::MAX_QUOTED_CHARS + 60 + GRAMMAR.len(),
                        "{} bytes", msg.len()
                    );
                }
            }
        }
    }
}
