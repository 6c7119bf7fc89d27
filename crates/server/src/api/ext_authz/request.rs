//! The part of Envoy's `CheckRequest` Keygate reads, read in place from
//! the received bytes.
//!
//! Envoy sends every request header, the peers, the route's metadata and
//! more on every Check; Keygate needs the key header, `x-forwarded-for`,
//! the source address and two context extensions. envoy-types' generated
//! `CheckRequest` decodes all of it: two `HashMap<String, String>`s (a
//! SipHash and two allocations per header) and a struct of several KB.
//! A lean prost message of the fields read still made a reference-counted
//! slice of the buffer per string, and a vector per list. Here the request
//! is its bytes: [`CheckRequest::decode`] checks the wire format of every
//! field on the way to the ones read, as prost would (a malformed request
//! fails to decode), and each accessor walks the bytes to its field, with
//! the field numbers of `envoy/service/auth/v3` and
//! `envoy/config/core/v3`, skipping the rest. Envoy sends few enough
//! headers for a walk to beat building anything.
//!
//! Envoy sends request headers in `headers`, or in `header_map` when the
//! filter sets `encode_raw_headers`; both are read. Protobuf rules hold: a
//! message field sent more than once is merged (all occurrences are
//! searched), and of a map key sent twice the last value counts.

use std::borrow::Cow;

use prost::{
    bytes::{Buf, Bytes},
    encoding::{WireType, decode_varint},
};

/// Why a `CheckRequest` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// A varint or wire type prost could not read.
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
    /// A field runs past the end of its message.
    #[error("buffer underflow")]
    Underflow,
    /// Field number 0, or above the protobuf maximum.
    #[error("invalid field number")]
    FieldNumber,
    /// A field Keygate reads, not length-delimited.
    #[error("field {0}: invalid wire type")]
    WireType(u32),
    /// A (deprecated) group, which Envoy's messages do not use.
    #[error("groups are not used by Envoy's messages")]
    Group,
}

/// `envoy.service.auth.v3.CheckRequest`, as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckRequest {
    raw: Bytes,
}

/// The fields read of one message type: tag and, for a message, its own.
type Schema = &'static [(u32, Field)];

#[derive(Clone, Copy)]
enum Field {
    Message(Schema),
    Text,
}

/// `CheckRequest.attributes`.
const ATTRIBUTES: u32 = 1;
/// `AttributeContext.source`, `.request`, `.context_extensions`.
const SOURCE: u32 = 1;
const REQUEST: u32 = 4;
const CONTEXT_EXTENSIONS: u32 = 10;
/// `AttributeContext.Peer.address`; `Address.socket_address`;
/// `SocketAddress.address`.
const PEER_ADDRESS: u32 = 1;
const SOCKET_ADDRESS: u32 = 1;
const IP: u32 = 2;
/// `AttributeContext.Request.http`; `HttpRequest.headers`, `.header_map`.
const HTTP: u32 = 2;
const HEADERS: u32 = 3;
const HEADER_MAP: u32 = 13;
/// `HeaderMap.headers`; `HeaderValue.key`, `.value`, `.raw_value`; a map
/// entry's `key` and `value`.
const HEADER_MAP_LINES: u32 = 1;
const KEY: u32 = 1;
const VALUE: u32 = 2;
const RAW_VALUE: u32 = 3;

const ENTRY: Schema = &[(KEY, Field::Text), (VALUE, Field::Text)];
const HEADER_VALUE: Schema = &[
    (KEY, Field::Text),
    (VALUE, Field::Text),
    (RAW_VALUE, Field::Text),
];
const HEADER_MAP_SCHEMA: Schema = &[(HEADER_MAP_LINES, Field::Message(HEADER_VALUE))];
const HTTP_REQUEST: Schema = &[
    (HEADERS, Field::Message(ENTRY)),
    (HEADER_MAP, Field::Message(HEADER_MAP_SCHEMA)),
];
const REQUEST_SCHEMA: Schema = &[(HTTP, Field::Message(HTTP_REQUEST))];
const SOCKET_ADDRESS_SCHEMA: Schema = &[(IP, Field::Text)];
const ADDRESS: Schema = &[(SOCKET_ADDRESS, Field::Message(SOCKET_ADDRESS_SCHEMA))];
const PEER: Schema = &[(PEER_ADDRESS, Field::Message(ADDRESS))];
const ATTRIBUTE_CONTEXT: Schema = &[
    (SOURCE, Field::Message(PEER)),
    (REQUEST, Field::Message(REQUEST_SCHEMA)),
    (CONTEXT_EXTENSIONS, Field::Message(ENTRY)),
];
const CHECK_REQUEST: Schema = &[(ATTRIBUTES, Field::Message(ATTRIBUTE_CONTEXT))];

/// One field as found on the wire: its number, and its bytes if it is
/// length-delimited (other wire types are skipped and yield `None`).
type Found<'a> = (u32, Option<&'a [u8]>);

/// Reads the next field of `buf`, advancing past it.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Found<'a>, Malformed> {
    let key = decode_varint(buf)?;
    let tag = u32::try_from(key >> 3)
        .ok()
        .filter(|t| (1..1 << 29).contains(t))
        .ok_or(Malformed::FieldNumber)?;
    let skip = |buf: &mut &'a [u8], n: usize| {
        if buf.len() < n {
            return Err(Malformed::Underflow);
        }
        buf.advance(n);
        Ok(())
    };
    match WireType::try_from(key & 7)? {
        WireType::Varint => {
            decode_varint(buf)?;
            Ok((tag, None))
        }
        WireType::SixtyFourBit => skip(buf, 8).map(|()| (tag, None)),
        WireType::ThirtyTwoBit => skip(buf, 4).map(|()| (tag, None)),
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(buf)?).map_err(|_| Malformed::Underflow)?;
            let (value, rest) = buf.split_at_checked(len).ok_or(Malformed::Underflow)?;
            *buf = rest;
            Ok((tag, Some(value)))
        }
        WireType::StartGroup | WireType::EndGroup => Err(Malformed::Group),
    }
}

/// Checks that `msg` is well-formed down to every field `schema` names,
/// and that those fields are length-delimited, as their types say.
fn validate(mut msg: &[u8], schema: Schema) -> Result<(), Malformed> {
    while !msg.is_empty() {
        let (tag, value) = next_field(&mut msg)?;
        let Some((_, field)) = schema.iter().find(|(t, _)| *t == tag) else {
            continue;
        };
        let value = value.ok_or(Malformed::WireType(tag))?;
        if let Field::Message(inner) = field {
            validate(value, inner)?;
        }
    }
    Ok(())
}

/// Every occurrence of field `tag` in `msg` (validated), in order.
fn each(msg: &[u8], tag: u32) -> impl Iterator<Item = &[u8]> {
    let mut rest = msg;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            match next_field(&mut rest) {
                Ok((t, Some(value))) if t == tag => return Some(value),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
}

/// The last occurrence of field `tag` in `msg` (protobuf: last one wins).
fn last(msg: &[u8], tag: u32) -> Option<&[u8]> {
    each(msg, tag).last()
}

/// The value of the last `map<string, string>` entry (field `tag` of
/// `msg`) named `name`, if it is UTF-8.
fn map_value<'a>(msg: &'a [u8], tag: u32, name: &str) -> Option<&'a str> {
    each(msg, tag)
        .filter(|entry| last(entry, KEY).unwrap_or_default() == name.as_bytes())
        .last()
        .and_then(|entry| std::str::from_utf8(last(entry, VALUE).unwrap_or_default()).ok())
}

/// A `HeaderValue`'s text as Envoy means it: `raw_value`, or the deprecated
/// `value` when that is all it sent.
fn header_value_text(header: &[u8]) -> Option<&str> {
    let value = last(header, RAW_VALUE)
        .filter(|v| !v.is_empty())
        .or_else(|| last(header, VALUE))
        .unwrap_or_default();
    std::str::from_utf8(value).ok()
}

impl CheckRequest {
    /// The request in `raw`, checked to be well-formed where Keygate reads.
    pub fn decode(raw: Bytes) -> Result<CheckRequest, Malformed> {
        validate(&raw, CHECK_REQUEST)?;
        Ok(CheckRequest { raw })
    }

    fn attributes(&self) -> impl Iterator<Item = &[u8]> {
        each(&self.raw, ATTRIBUTES)
    }

    fn http(&self) -> impl Iterator<Item = &[u8]> {
        self.attributes()
            .flat_map(|a| each(a, REQUEST))
            .flat_map(|r| each(r, HTTP))
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
        let mut in_headers = None;
        for http in self.http() {
            for entry in each(http, HEADERS) {
                if last(entry, KEY).unwrap_or_default() == name.as_bytes() {
                    in_headers = Some(last(entry, VALUE).unwrap_or_default());
                }
            }
        }
        if let Some(value) = in_headers {
            return std::str::from_utf8(value).ok().map(Cow::Borrowed);
        }
        let mut lines = self
            .http()
            .flat_map(|h| each(h, HEADER_MAP))
            .flat_map(|m| each(m, HEADER_MAP_LINES))
            .filter(|h| last(h, KEY).unwrap_or_default() == name.as_bytes());
        let first = header_value_text(lines.next()?)?;
        let mut joined = Cow::Borrowed(first);
        for line in lines {
            let text = joined.to_mut();
            text.push(',');
            text.push_str(header_value_text(line)?);
        }
        Some(joined)
    }

    /// A context extension set by the route.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.attributes()
            .filter_map(|a| map_value(a, CONTEXT_EXTENSIONS, name))
            .last()
    }

    /// The downstream peer's address, as Envoy wrote it.
    pub fn source_address(&self) -> Option<&str> {
        let ip = self
            .attributes()
            .flat_map(|a| each(a, SOURCE))
            .flat_map(|p| each(p, PEER_ADDRESS))
            .flat_map(|a| each(a, SOCKET_ADDRESS))
            .flat_map(|s| each(s, IP))
            .last()?;
        std::str::from_utf8(ip).ok()
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
            let lean = CheckRequest::decode(bytes.into()).expect("decode");
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
        let lean = CheckRequest::decode(request.encode_to_vec().into()).expect("decode");
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
        let lean = CheckRequest::decode(Bytes::new()).expect("decode");
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
        let lean = CheckRequest::decode(request.encode_to_vec().into()).expect("decode");
        assert_eq!(lean.source_address(), None);
    }

    #[test]
    fn a_malformed_request_does_not_decode() {
        let bytes = full_request(false).encode_to_vec();
        let cut = Bytes::copy_from_slice(&bytes[..bytes.len() - 1]);
        assert!(CheckRequest::decode(cut).is_err(), "truncated");
        // `attributes` (field 1) as a varint instead of a message.
        assert!(CheckRequest::decode(Bytes::from_static(&[0x08, 0x01])).is_err());
        // A length past the end.
        assert!(CheckRequest::decode(Bytes::from_static(&[0x0a, 0x05, 0x00])).is_err());
        // Field number 0.
        assert!(CheckRequest::decode(Bytes::from_static(&[0x02, 0x00])).is_err());
    }

    #[test]
    fn unknown_fields_are_skipped_and_repeated_messages_merge() {
        let mut first = auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                context_extensions: [("keygate_scopes".to_owned(), "a:b".to_owned())].into(),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        // Unknown fields of every wire type: 2 varint, 3 fixed64, 4 fixed32.
        first.extend([0x10, 0x96, 0x01]);
        first.extend([0x19, 1, 2, 3, 4, 5, 6, 7, 8]);
        first.extend([0x25, 1, 2, 3, 4]);
        let second = full_request(false).encode_to_vec();
        let mut both = first;
        both.extend(second);
        let lean = CheckRequest::decode(both.into()).expect("decode");
        // `attributes` twice: merged; of the map key sent twice the last
        // value counts.
        assert_eq!(lean.extension("keygate_scopes"), Some("dns:read"));
        assert_eq!(lean.extension("keygate_environment"), Some("live"));
        assert_eq!(
            lean.header("authorization").as_deref(),
            Some("Bearer kg_live_abc")
        );
        assert_eq!(lean.source_address(), Some("10.0.0.2"));
    }
}
