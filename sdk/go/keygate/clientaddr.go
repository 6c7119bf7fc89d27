package keygate

import (
	"net"
	"net/http"
	"strings"
)

// RemoteAddrIP returns the IP address of the connection's peer
// (r.RemoteAddr without its port), the client address of an [Authorizer]
// without [WithTrustedProxies].
func RemoteAddrIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// httpClientIP is the client address the HTTP middleware sends to Keygate.
func (a *Authorizer) httpClientIP(r *http.Request) string {
	if a.clientIP != nil {
		return a.clientIP(r)
	}
	return clientAddr(RemoteAddrIP(r), r.Header.Values("X-Forwarded-For"), a.trustedProxies)
}

// clientAddr returns the client's address: peer when no proxy is trusted,
// else the trustedProxies-th entry from the right of the X-Forwarded-For
// values (each a comma-separated list, in the order received), falling back
// to peer when there are fewer entries or that one is not an address.
func clientAddr(peer string, forwardedFor []string, trustedProxies int) string {
	if trustedProxies <= 0 {
		return peer
	}
	var entries []string
	for _, value := range forwardedFor {
		for _, entry := range strings.Split(value, ",") {
			// Empty entries are dropped: proxies never write one, so
			// this cannot move a proxy-written entry.
			if entry = strings.TrimSpace(entry); entry != "" {
				entries = append(entries, entry)
			}
		}
	}
	if len(entries) < trustedProxies {
		return peer
	}
	if ip := parseForwardedIP(entries[len(entries)-trustedProxies]); ip != "" {
		return ip
	}
	return peer
}

// parseForwardedIP parses an X-Forwarded-For entry: an IPv4 or IPv6 address,
// optionally with a port ("192.0.2.1:4711", "[2001:db8::1]:443") or in
// brackets. It returns the address in canonical form, or "" if entry is none.
func parseForwardedIP(entry string) string {
	if ip := net.ParseIP(entry); ip != nil {
		return ip.String()
	}
	if host, _, err := net.SplitHostPort(entry); err == nil {
		entry = host
	} else {
		entry = strings.TrimSuffix(strings.TrimPrefix(entry, "["), "]")
	}
	if ip := net.ParseIP(entry); ip != nil {
		return ip.String()
	}
	return ""
}
