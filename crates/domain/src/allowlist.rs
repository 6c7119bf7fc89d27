//! IP allowlists: parsing the networks a key may be used from, and judging a
//! client address against them. Addresses are normalised (IPv4-mapped IPv6 is
//! treated as IPv4) so a client cannot slip past a v4 list by presenting
//! `::ffff:a.b.c.d`, and a list entry written in mapped form still matches.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::validation::quote;

/// Why an allowlist entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    /// The value (as given) is neither a CIDR network nor an IP address. The
    /// message quotes at most its first 64 characters.
    #[error(
        "invalid network {}: expected a CIDR such as 10.0.0.0/8 or 2001:db8::/32, or an IP address",
        quote(.0)
    )]
    Invalid(String),
}

/// Parses an allowlist entry: a v4/v6 CIDR or a bare address (taken as /32 or
/// /128). Surrounding whitespace is trimmed, host bits are cleared
/// (`10.0.0.1/8` becomes `10.0.0.0/8`) and IPv4-mapped IPv6 networks with a
/// prefix of at least 96 become their IPv4 equivalent.
pub fn parse_network(s: &str) -> Result<IpNet, AllowlistError> {
    let t = s.trim();
    let net = if t.contains('/') {
        t.parse::<IpNet>().ok()
    } else {
        t.parse::<IpAddr>().ok().map(IpNet::from)
    }
    .ok_or_else(|| AllowlistError::Invalid(s.to_owned()))?;
    Ok(normalise(net.trunc()))
}

/// Turns `::ffff:a.b.c.d/p` (p >= 96) into `a.b.c.d/(p-96)`; leaves every
/// other network as it is.
fn normalise(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net
}

/// Whether `client` may use a key with allowlist `list`. An empty list allows
/// everyone; a non-empty list refuses an unknown client. The client address
/// is canonicalised first, so `::ffff:1.2.3.4` is judged as `1.2.3.4`.
pub fn allows(list: &[IpNet], client: Option<IpAddr>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(client) = client else {
        return false;
    };
    let client = client.to_canonical();
    list.iter().any(|net| net_contains(net, client))
}

fn net_contains(net: &IpNet, client: IpAddr) -> bool {
    match (net, client) {
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
        // A mapped network with a short prefix (< 96) stays v6; let it match
        // the mapped form of a v4 client too.
        (IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
        (IpNet::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Parses a client address as a proxy or transport reports it: plain v4/v6,
/// bracketed `[v6]`, or v6 with a zone (`fe80::1%eth0`, zone dropped).
/// Returns `None` for empty or unparsable input.
pub fn parse_client_ip(s: &str) -> Option<IpAddr> {
    let mut t = s.trim();
    if t.is_empty() {
        return None;
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        t = inner;
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, zone) = t.split_once('%')?;
    if zone.is_empty() {
        return None;
    }
    addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Formats a network for display and storage (`10.0.0.0/8`).
pub fn format_network(net: &IpNet) -> String {
    net.to_string()
}

/// The network holding exactly one address.
pub fn single_host(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::from(a)),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::from(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn n(s: &str) -> IpNet {
        parse_network(s).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn parses_cidrs_and_addresses() {
        assert_eq!(n("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(n(" 2001:db8::/32 ").to_string(), "2001:db8::/32");
        assert_eq!(n("1.2.3.4").to_string(), "1.2.3.4/32");
        assert_eq!(n("::1").to_string(), "::1/128");
        assert_eq!(n("10.0.0.1/8").to_string(), "10.0.0.0/8");
        assert_eq!(n("2001:db8::1/32").to_string(), "2001:db8::/32");
    }

    #[test]
    fn mapped_networks_become_v4() {
        assert_eq!(n("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert_eq!(n("::ffff:10.1.2.3/104").to_string(), "10.0.0.0/8");
        assert_eq!(n("::ffff:1.2.3.4").to_string(), "1.2.3.4/32");
        assert_eq!(n("::ffff:0.0.0.0/96").to_string(), "0.0.0.0/0");
        // Prefix shorter than 96 covers more than the mapped space: kept v6.
        assert!(matches!(n("::ffff:0.0.0.0/80"), IpNet::V6(_)));
    }

    #[test]
    fn rejects_garbage_and_names_the_value() {
        for bad in [
            "",
            "  ",
            "10.0.0.0/33",
            "::/129",
            "10.0.0",
            "host.example",
            "10.0.0.0/",
            "/8",
            "1.2.3.4/8/8",
        ] {
            let err = parse_network(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn empty_list_allows_everyone() {
        assert!(allows(&[], None));
        assert!(allows(&[], ip("1.2.3.4")));
    }

    #[test]
    fn unknown_client_refused_by_non_empty_list() {
        assert!(!allows(&[n("0.0.0.0/0")], None));
    }

    #[test]
    fn v4_list() {
        let list = [n("10.0.0.0/8"), n("192.168.1.7")];
        assert!(allows(&list, ip("10.200.3.4")));
        assert!(allows(&list, ip("192.168.1.7")));
        assert!(!allows(&list, ip("192.168.1.8")));
        assert!(!allows(&list, ip("11.0.0.1")));
        assert!(!allows(&list, ip("2001:db8::1")));
    }

    #[test]
    fn mapped_client_is_judged_as_v4() {
        let list = [n("10.0.0.0/8")];
        assert!(allows(&list, ip("::ffff:10.1.2.3")));
        assert!(!allows(&list, ip("::ffff:11.1.2.3")));
        // A v6 list entry in mapped form matches the plain v4 client.
        let mapped = [n("::ffff:10.0.0.0/104")];
        assert!(allows(&mapped, ip("10.9.9.9")));
        assert!(allows(&mapped, ip("::ffff:10.9.9.9")));
        assert!(!allows(&mapped, ip("11.9.9.9")));
        // A short mapped prefix kept as v6 still applies to v4 clients.
        let wide = [n("::ffff:0.0.0.0/80")];
        assert!(allows(&wide, ip("8.8.8.8")));
    }

    #[test]
    fn v6_list() {
        let list = [n("2001:db8::/32")];
        assert!(allows(&list, ip("2001:db8:1::5")));
        assert!(!allows(&list, ip("2001:db9::1")));
        assert!(!allows(&list, ip("10.0.0.1")));
        assert!(allows(&[n("::1")], ip("::1")));
    }

    #[test]
    fn loopback_v6_is_not_v4_zero_net() {
        // `Ipv6Addr::to_ipv4` would turn ::1 into 0.0.0.1.
        assert!(!allows(&[n("0.0.0.0/8")], ip("::1")));
        assert!(!allows(&[n("0.0.0.1")], ip("::1")));
        assert!(!allows(&[n("0.0.0.0/8")], ip("::")));
        // And the v4-compatible (deprecated) form is not mapped either.
        assert!(!allows(&[n("1.2.3.4")], ip("::1.2.3.4")));
    }

    #[test]
    fn parses_client_ips() {
        assert_eq!(parse_client_ip(" 1.2.3.4 "), ip("1.2.3.4"));
        assert_eq!(parse_client_ip("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(parse_client_ip("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(parse_client_ip("fe80::1%eth0"), ip("fe80::1"));
        assert_eq!(parse_client_ip("[fe80::1%eth0]"), ip("fe80::1"));
        assert_eq!(parse_client_ip("::ffff:1.2.3.4"), ip("::ffff:1.2.3.4"));
        assert_eq!(parse_client_ip(""), None);
        assert_eq!(parse_client_ip("   "), None);
        assert_eq!(parse_client_ip("fe80::1%"), None);
        assert_eq!(parse_client_ip("1.2.3.4%eth0"), None);
        assert_eq!(parse_client_ip("[1.2.3.4"), None);
        assert_eq!(parse_client_ip("not an ip"), None);
    }

    #[test]
    fn single_host_canonicalises() {
        assert_eq!(single_host("::ffff:1.2.3.4".parse().unwrap()), n("1.2.3.4"));
        assert_eq!(
            format_network(&single_host("::1".parse().unwrap())),
            "::1/128"
        );
    }

    #[test]
    fn long_garbage_is_quoted_short() {
        let long = "1".repeat(10_000);
        let msg = parse_network(&long).unwrap_err().to_string();
        assert!(msg.starts_with("invalid network \"1111"), "{msg}");
        assert!(msg.contains("\"…: expected a CIDR"), "{msg}");
        assert!(msg.len() < 200, "{} bytes", msg.len());
    }

    /// Printable strings, strings of any characters, address-like strings,
    /// and arbitrary bytes read as (lossy) UTF-8.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,100}",
            ".{0,100}",
            "\\[?[0-9a-fA-F:.%/\\[\\] ]{0,60}\\]?",
            "[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}(/[0-9]{1,3})?",
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    proptest! {
        #[test]
        fn any_network_text_is_parsed_or_refused_with_a_reason(s in any_text()) {
            match parse_network(&s) {
                Ok(net) => {
                    // Normalised: parsing the result again changes nothing.
                    prop_assert_eq!(parse_network(&format_network(&net)), Ok(net));
                    prop_assert_eq!(net, net.trunc());
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with("invalid network "), "{}", msg);
                    prop_assert!(msg.contains("expected a CIDR"), "{}", msg);
                    prop_assert!(msg.len() <= 4 * crate::validation::MAX_QUOTED_CHARS + 120);
                }
            }
        }

        #[test]
        fn any_client_ip_text_is_parsed_or_ignored(s in any_text()) {
            if let Some(ip) = parse_client_ip(&s) {
                prop_assert_eq!(parse_client_ip(&ip.to_string()), Some(ip));
                // Whatever was accepted can be judged against any list.
                let _ = allows(&[n("10.0.0.0/8"), n("2001:db8::/32")], Some(ip));
            }
        }

        #[test]
        fn mapped_and_plain_v4_agree(a in any::<u32>(), b in any::<u32>(), len in 0u8..=32) {
            let net = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc());
            let client = Ipv4Addr::from(b);
            let plain = allows(&[net], Some(IpAddr::V4(client)));
            let mapped = allows(&[net], Some(IpAddr::V6(client.to_ipv6_mapped())));
            prop_assert_eq!(plain, mapped);
            let mapped_net = parse_network(&format!("::ffff:{}/{}", Ipv4Addr::from(a), u16::from(len) + 96)).unwrap();
            prop_assert_eq!(mapped_net, net);
        }
    }
}
