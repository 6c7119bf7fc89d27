//! Console sign-ins, kept on the server: the browser holds only a random
//! session id (an HttpOnly cookie), never the management key. Each session
//! carries its own CSRF token, ends on sign-out or after its lifetime, and is
//! dropped as soon as its management key stops authenticating. Sign-in
//! attempts are counted per client address.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keygate_console";
/// The cookie carrying the sign-in form's CSRF token (double submit: there is
/// no session yet to hold it).
pub const SIGN_IN_COOKIE: &str = "keygate_console_signin";
/// Sign-in attempts allowed per client address per [`SIGN_IN_WINDOW`].
pub const SIGN_IN_ATTEMPTS: u32 = 10;
/// The window [`SIGN_IN_ATTEMPTS`] are counted in.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(300);
/// Most sessions held at once; the oldest go first past it.
const MAX_SESSIONS: usize = 10_000;

/// A random 256-bit token, hex-encoded: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two tokens are equal, in constant time.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the console's path: HttpOnly, SameSite=Strict,
/// Secure when `secure`; `max_age` None ends the cookie now.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, secure: bool) -> String {
    let age = max_age.map_or(0, |age| age.as_secs());
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/console; Max-Age={age}; HttpOnly; SameSite=Strict{secure}")
}

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    /// The management key the console acts with.
    pub key: String,
    /// The token every form of this session must send back.
    pub csrf: String,
    /// When the session ends whatever happens.
    pub expires_at: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &"(redacted)")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The live sessions and the sign-in attempt counters.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    live: Mutex<HashMap<String, Session>>,
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Sessions {
    /// Sessions lasting `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session acting with `key`; returns its id.
    pub fn start(&self, key: String) -> String {
        let id = random_token();
        let now = Instant::now();
        let session = Session {
            key,
            csrf: random_token(),
            expires_at: now + self.ttl,
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| s.expires_at > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(id, _)| id.clone())
        {
            live.remove(&oldest);
        }
        live.insert(id.clone(), session);
        id
    }

    /// The live session `id`; an expired one is removed and not returned.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(id) {
            Some(session) if session.expires_at > Instant::now() => Some(session.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Ends every session acting with `key` (it no longer authenticates).
    pub fn end_all_with_key(&self, key: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| s.key != key);
    }

    /// Counts a sign-in attempt from `client`; false when it is over the
    /// limit of [`SIGN_IN_ATTEMPTS`] per [`SIGN_IN_WINDOW`].
    pub fn allow_sign_in(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if attempts.len() > MAX_SESSIONS {
            attempts.retain(|_, (start, _)| now.duration_since(*start) < SIGN_IN_WINDOW);
        }
        let entry = attempts.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= SIGN_IN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= SIGN_IN_ATTEMPTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_on_sign_out_expiry_and_key_loss() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let a = sessions.start("key-a".into());
        let b = sessions.start("key-b".into());
        assert_eq!(sessions.get(&a).map(|s| s.key), Some("key-a".into()));
        sessions.end(&a);
        assert!(sessions.get(&a).is_none());
        sessions.end_all_with_key("key-b");
        assert!(sessions.get(&b).is_none());

        let short = Sessions::new(Duration::ZERO);
        let c = short.start("key-c".into());
        assert!(short.get(&c).is_none());
    }

    #[test]
    fn sign_in_attempts_are_limited_per_address() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let one: IpAddr = [10, 0, 0, 1].into();
        let two: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..SIGN_IN_ATTEMPTS {
            assert!(sessions.allow_sign_in(one));
        }
        assert!(!sessions.allow_sign_in(one));
        assert!(sessions.allow_sign_in(two));
    }

    #[test]
    fn cookies_are_found_by_name_and_tokens_compared() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; keygate_console=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", ""));
        let token = random_token();
        assert_eq!(token.len(), 64);
        let set = set_cookie(SESSION_COOKIE, "x", Some(Duration::from_secs(5)), true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.ends_with("; Secure"));
    }
}
