//! Which address a request came from when proxies stand in front: the rule
//! every proxy-facing entry point (Envoy ext_authz, HTTP forward-auth, the
//! SDKs' middleware) applies the same way.
//!
//! `X-Forwarded-For` is a list each proxy appends the address of its own
//! peer to; whatever the client sent stands on the left, so only the entries
//! that trusted proxies appended can be believed. With `hops` trusted
//! proxies, the client is the `hops`-th entry counted from the right. With
//! no trusted proxy, or fewer entries than that, or an entry that is not an
//! address, the connection's own peer is the client.

use std::net::{IpAddr, SocketAddr};

/// The client address of a request that reached us from `peer` with the
/// `X-Forwarded-For` header values `forwarded_for` (in the order received;
/// each a comma-separated list) through `hops` trusted proxies.
pub fn client_address<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    hops: usize,
) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    // Empty entries are dropped: proxies never write one, so dropping them
    // cannot move an entry a proxy wrote.
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    let Some(index) = entries.len().checked_sub(hops) else {
        return peer;
    };
    parse_entry(entries[index]).or(peer)
}

/// An `X-Forwarded-For` entry as an address: `192.0.2.1`, `2001:db8::1`,
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:443`) or in brackets.
/// IPv4-mapped IPv6 addresses become IPv4.
pub fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let peer = ip("10.0.0.9");
        assert_eq!(client_address(peer, ["1.2.3.4"], 0), peer);
        assert_eq!(client_address(None, ["1.2.3.4"], 0), None);
    }

    #[test]
    fn entries_are_counted_from_the_right() {
        let peer = ip("10.0.0.9");
        // The client wrote "6.6.6.6"; two trusted proxies appended theirs.
        let xff = ["6.6.6.6, 192.0.2.1", "10.0.0.2"];
        assert_eq!(client_address(peer, xff, 1), ip("10.0.0.2"));
        assert_eq!(client_address(peer, xff, 2), ip("192.0.2.1"));
        assert_eq!(client_address(peer, xff, 3), ip("6.6.6.6"));
        // Fewer entries than trusted hops: the request skipped a proxy.
        assert_eq!(client_address(peer, xff, 4), peer);
        assert_eq!(client_address(peer, [], 1), peer);
        // Not an address: the peer.
        assert_eq!(client_address(peer, ["1.2.3.4, unknown"], 1), peer);
        // Empty entries do not count.
        assert_eq!(client_address(peer, ["1.2.3.4,, ", ""], 1), ip("1.2.3.4"));
    }

    #[test]
    fn entries_with_ports_brackets_and_mapped_addresses() {
        for (entry, want) in [
            ("192.0.2.1:4711", "192.0.2.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            (" 2001:db8::1 ", "2001:db8::1"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
        ] {
            assert_eq!(parse_entry(entry), ip(want), "{entry}");
        }
        for entry in ["", "unknown", "1.2.3", "[1.2.3.4", "1.2.3.4:99999"] {
            assert_eq!(parse_entry(entry), None, "{entry}");
        }
    }

    proptest! {
        #[test]
        fn any_header_gives_the_peer_or_one_of_its_entries(
            values in proptest::collection::vec(".{0,40}", 0..4),
            hops in 0usize..5,
        ) {
            let peer = ip("10.0.0.9");
            let got = client_address(peer, values.iter().map(String::as_str), hops);
            let entries: Vec<IpAddr> = values
                .iter()
                .flat_map(|v| v.split(','))
                .filter_map(parse_entry)
                .collect();
            prop_assert!(got == peer || got.is_some_and(|g| entries.contains(&g)));
        }
    }
}
