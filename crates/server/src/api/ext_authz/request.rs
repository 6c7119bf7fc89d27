//! The part of Envoy's `CheckRequest` Keygate reads, decoded straight from
//! the wire.
//!
//! Envoy sends every request header, the peers, the route's metadata and
//! more on every Check; Keygate needs the key header, `x-forwarded-for`,
//! the source address and two context extensions. envoy-types' generated
//! `CheckRequest` decodes all of it: two `HashMap<String, String>`s (a
//! SipHash and two allocations per header) and a struct of several KB
//! moved through the call. These messages declare only the fields read,
//! with the same field numbers as `envoy/service/auth/v3` and
//! `envoy/config/core/v3`; prost skips the others without building them.
//! Maps are declared as what they are on the wire, repeated key/value
//! entries, with strings kept as bytes slices of the received buffer
//! (a `string` and a `bytes` field are encoded alike); they are searched
//! by name, in order, as Envoy sends few enough headers for that to beat
//! hashing. The answer is envoy-types' own `CheckResponse`, and the
//! envoy-types messages remain what tests and clients build requests with.
//!
//! Envoy sends request headers in `headers`, or in `header_map` when the
//! filter sets `encode_raw_headers`; both are read.

use std::borrow::Cow;

use prost::bytes::Bytes;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    /// `attributes`.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    /// `source`: the downstream peer.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    /// `request`.
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// `context_extensions` (`map<string, string>`).
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    /// `address` (`envoy.config.core.v3.Address`).
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address`: only its `socket_address` case.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    /// `socket_address`.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    /// `address`: the IP, as text.
    #[prost(bytes = "bytes", tag = "2")]
    pub address: Bytes,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// `http`.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    /// `headers` (`map<string, string>`), names in lowercase.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    /// `header_map`, sent instead of `headers` with `encode_raw_headers`.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// One entry of a `map<string, string>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// The key.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// The value.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    /// `headers`.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// `key`.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value` (deprecated by Envoy in favour of `raw_value`).
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// `raw_value`.
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// The value of the first entry named `name`, if it is UTF-8.
fn find<'a>(entries: &'a [Entry], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e.key.as_ref() == name.as_bytes())
        .and_then(|e| std::str::from_utf8(&e.value).ok())
}

impl HeaderValue {
    /// The value as Envoy means it: `raw_value`, or the deprecated `value`
    /// when that is all it sent.
    fn text(&self) -> Option<&str> {
        let value = if self.raw_value.is_empty() {
            &self.value
        } else {
            &self.raw_value
        };
        std::str::from_utf8(value).ok()
    }
}

impl CheckRequest {
    fn http(&self) -> Option<&HttpRequest> {
        self.attributes.as_ref()?.request.as_ref()?.http.as_ref()
    }

    /// A request header (`name` in lowercase, as Envoy sends names).
    ///
    /// `headers` holds each name once, repeated lines already joined by
    /// Envoy; `header_map` holds every line, so lines of one name are
    /// joined here, in order, with `,` (RFC 9110 §5.3). Reading only the
    /// first would let a client's own `x-forwarded-for` line hide the one
    /// a trusted proxy added after it. A value that is not UTF-8 makes the
    /// header unreadable, as if it were absent.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let http = self.http()?;
        if let Some(value) = find(&http.headers, name) {
            return Some(Cow::Borrowed(value));
        }
        let mut lines = http
            .header_map
            .as_ref()?
            .headers
            .iter()
            .filter(|h| h.key.as_ref() == name.as_bytes());
        let first = lines.next()?.text()?;
        let mut joined = Cow::Borrowed(first);
        for line in lines {
            let text = joined.to_mut();
            text.push(',');
            text.push_str(line.text()?);
        }
        Some(joined)
    }

    /// A context extension set by the route.
    pub fn extension(&self, name: &str) -> Option<&str> {
        find(&self.attributes.as_ref()?.context_extensions, name)
    }

    /// The downstream peer's address, as Envoy wrote it.
    pub fn source_address(&self) -> Option<&str> {
        let address = self
            .attributes
            .as_ref()?
            .source
            .as_ref()?
            .address
            .as_ref()?
            .socket_address
            .as_ref()?;
        std::str::from_utf8(&address.address).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::{
        config::core::v3::{self as core, address, socket_address},
        service::auth::v3::{self as auth, attribute_context},
    };
    use prost::Message;

    use super::*;

    fn full_request(header_map: bool) -> auth::CheckRequest {
        let headers: Vec<(&str, &str)> = vec![
            (":authority", "api.example"),
            (":method", "GET"),
            (":path", "/zones"),
            ("authorization", "Bearer kg_live_abc"),
            ("user-agent", "curl/8"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
            ("x-request-id", "8a6d"),
        ];
        let mut http = attribute_context::HttpRequest {
            id: "8a6d".into(),
            method: "GET".into(),
            path: "/zones".into(),
            host: "api.example".into(),
            protocol: "HTTP/1.1".into(),
            ..Default::default()
        };
        if header_map {
            http.header_map = Some(core::HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| core::HeaderValue {
                        key: (*k).into(),
                        value: String::new(),
                        raw_value: v.as_bytes().to_vec(),
                    })
                    .collect(),
            });
        } else {
            http.headers = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>();
        }
        let peer = |ip: &str| attribute_context::Peer {
            address: Some(core::Address {
                address: Some(address::Address::SocketAddress(core::SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                    ..Default::default()
                })),
            }),
            principal: "spiffe://cluster.local/ns/a/sa/b".into(),
            ..Default::default()
        };
        auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                source: Some(peer("10.0.0.2")),
                destination: Some(peer("10.0.0.9")),
                request: Some(attribute_context::Request {
                    time: Some(envoy_types::pb::google::protobuf::Timestamp {
                        seconds: 1,
                        nanos: 0,
                    }),
                    http: Some(http),
                }),
                context_extensions: [
                    ("keygate_scopes".to_owned(), "dns:read".to_owned()),
                    ("keygate_environment".to_owned(), "live".to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_what_envoy_types_wrote() {
        for header_map in [false, true] {
            let bytes = full_request(header_map).encode_to_vec();
            let lean = CheckRequest::decode(bytes.as_slice()).expect("decode");
            assert_eq!(
                lean.header("authorization").as_deref(),
                Some("Bearer kg_live_abc")
            );
            assert_eq!(
                lean.header("x-forwarded-for").as_deref(),
                Some("203.0.113.7, 10.0.0.2")
            );
            assert_eq!(lean.header("x-api-key"), None);
            assert_eq!(lean.header("Authorization"), None, "names are lowercase");
            assert_eq!(lean.extension("keygate_scopes"), Some("dns:read"));
            assert_eq!(lean.extension("keygate_environment"), Some("live"));
            assert_eq!(lean.extension("other"), None);
            assert_eq!(lean.source_address(), Some("10.0.0.2"));
        }
    }

    #[test]
    fn repeated_header_map_lines_are_joined_in_order() {
        let mut request = full_request(true);
        let map = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .and_then(|h| h.header_map.as_mut())
            .expect("header_map");
        map.headers.push(core::HeaderValue {
            key: "x-forwarded-for".into(),
            value: "198.51.100.1".into(),
            raw_value: Vec::new(),
        });
        let lean = CheckRequest::decode(request.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(
            lean.header("x-forwarded-for").as_deref(),
            Some("203.0.113.7, 10.0.0.2,198.51.100.1")
        );
        assert_eq!(
            lean.header("authorization").as_deref(),
            Some("Bearer kg_live_abc")
        );
    }

    #[test]
    fn an_empty_request_has_nothing() {
        let lean = CheckRequest::decode(&[][..]).expect("decode");
        assert_eq!(lean.header("authorization"), None);
        assert_eq!(lean.extension("keygate_scopes"), None);
        assert_eq!(lean.source_address(), None);
    }

    #[test]
    fn a_pipe_peer_has_no_address() {
        let mut request = full_request(false);
        let source = request
            .attributes
            .as_mut()
            .and_then(|a| a.source.as_mut())
            .expect("source");
        source.address = Some(core::Address {
            address: Some(address::Address::Pipe(core::Pipe {
                path: "/run/envoy.sock".into(),
                mode: 0,
            })),
        });
        let lean = CheckRequest::decode(request.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(lean.source_address(), None);
    }
}
