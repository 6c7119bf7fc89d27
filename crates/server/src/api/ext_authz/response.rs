//! The `CheckResponse` Keygate sends, as lean messages encoded straight to
//! the wire: the counterpart of [`super::request`].
//!
//! envoy-types' `CheckResponse` holds every header name and value as an
//! owned `String`, so an answer cost an allocation and a copy per header
//! name besides the values. These messages declare only the fields Keygate
//! writes, with the field numbers of `envoy/service/auth/v3`,
//! `envoy/config/core/v3`, `envoy/type/v3` and `google/rpc`, and hold
//! strings as `Bytes`: header names are static, values are the
//! [`Verdict`]'s strings moved, not copied. Envoy decodes them as its own
//! messages; the tests decode them with envoy-types and compare with the
//! answer built from envoy-types' messages.

use prost::bytes::Bytes;
use tonic::Code;

use crate::api::proxy::{Header, Verdict};

/// `envoy.service.auth.v3.CheckResponse`. `denied_response` and
/// `ok_response` are one `oneof`; exactly one is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckResponse {
    /// `status`.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    /// `denied_response`.
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    /// `ok_response`.
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
}

/// `google.rpc.Status` (without `details`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// `code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// `message`.
    #[prost(bytes = "bytes", tag = "2")]
    pub message: Bytes,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeniedHttpResponse {
    /// `status`.
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    /// `headers`: for the client.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// `body`.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpStatus {
    /// `code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkHttpResponse {
    /// `headers`: for the upstream.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    /// `headers_to_remove`: before the request goes upstream.
    #[prost(bytes = "bytes", repeated, tag = "5")]
    pub headers_to_remove: Vec<Bytes>,
    /// `response_headers_to_add`: for the client.
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValueOption {
    /// `header`.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// `append_action` (`HeaderAppendAction`).
    #[prost(int32, tag = "3")]
    pub append_action: i32,
    /// `keep_empty_value`.
    #[prost(bool, tag = "4")]
    pub keep_empty_value: bool,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// `key`.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value`.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`: a header Keygate sets
/// replaces any copy the client sent.
const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;

fn header_options(headers: Vec<Header>) -> Vec<HeaderValueOption> {
    headers
        .into_iter()
        .map(|(key, value)| HeaderValueOption {
            // Envoy drops an empty value unless told to keep it; an empty
            // x-keygate-scopes must still replace a client's copy. (Only
            // there: the flag costs bytes on every answer.)
            keep_empty_value: value.is_empty(),
            header: Some(HeaderValue {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from(value),
            }),
            append_action: OVERWRITE_IF_EXISTS_OR_ADD,
        })
        .collect()
}

impl CheckResponse {
    /// The answer to a Check decided as `verdict`; on allow, `remove` names
    /// the request header to strip before the request goes upstream.
    pub fn of(verdict: Verdict, remove: Option<Bytes>) -> CheckResponse {
        match verdict {
            Verdict::Allow { identity, response } => CheckResponse {
                // Envoy reads only the code of an OK; no message.
                status: Some(RpcStatus {
                    code: Code::Ok as i32,
                    message: Bytes::new(),
                }),
                denied_response: None,
                ok_response: Some(OkHttpResponse {
                    headers: header_options(identity),
                    headers_to_remove: remove.into_iter().collect(),
                    response_headers_to_add: header_options(response),
                }),
            },
            Verdict::Deny {
                status,
                reason,
                headers,
                body,
            } => {
                let code = match status {
                    401 => Code::Unauthenticated,
                    429 => Code::ResourceExhausted,
                    _ => Code::PermissionDenied,
                };
                CheckResponse {
                    status: Some(RpcStatus {
                        code: code as i32,
                        message: Bytes::from_static(reason.as_bytes()),
                    }),
                    denied_response: Some(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(status),
                        }),
                        headers: header_options(headers),
                        body: Bytes::from(body),
                    }),
                    ok_response: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::{
        ext_authz::v3::pb::{
            self as envoy, HeaderAppendAction, HttpResponse, OkHttpResponse as EnvoyOk,
        },
        pb::google::rpc,
    };
    use prost::Message;

    use super::*;

    /// The same answer built from envoy-types' messages, as Check did
    /// before the lean ones: the reference.
    fn reference(verdict: Verdict, remove: Option<&str>) -> envoy::CheckResponse {
        #[allow(deprecated)] // `append` is deprecated; leaving it unset is the way
        let options = |headers: Vec<Header>| -> Vec<envoy::HeaderValueOption> {
            headers
                .into_iter()
                .map(|(key, value)| envoy::HeaderValueOption {
                    keep_empty_value: value.is_empty(),
                    header: Some(envoy::HeaderValue {
                        key: key.to_owned(),
                        value,
                        raw_value: Vec::new(),
                    }),
                    append: None,
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                })
                .collect()
        };
        let status = |code: Code, message: &str| rpc::Status {
            code: code as i32,
            message: message.to_owned(),
            details: Vec::new(),
        };
        match verdict {
            Verdict::Allow { identity, response } => envoy::CheckResponse {
                status: Some(status(Code::Ok, "")),
                #[allow(deprecated)] // `dynamic_metadata` inside is deprecated
                http_response: Some(HttpResponse::OkResponse(EnvoyOk {
                    headers: options(identity),
                    headers_to_remove: remove.into_iter().map(str::to_owned).collect(),
                    response_headers_to_add: options(response),
                    ..Default::default()
                })),
                dynamic_metadata: None,
            },
            Verdict::Deny {
                status: http,
                reason,
                headers,
                body,
            } => {
                let code = match http {
                    401 => Code::Unauthenticated,
                    429 => Code::ResourceExhausted,
                    _ => Code::PermissionDenied,
                };
                envoy::CheckResponse {
                    status: Some(status(code, reason)),
                    http_response: Some(HttpResponse::DeniedResponse(envoy::DeniedHttpResponse {
                        status: Some(envoy::HttpStatus {
                            code: i32::from(http),
                        }),
                        headers: options(headers),
                        body,
                    })),
                    dynamic_metadata: None,
                }
            }
        }
    }

    fn allow(scopes: &str) -> Verdict {
        Verdict::Allow {
            identity: vec![
                (
                    "x-keygate-key-id",
                    "0193a5b0-7e1c-7d2a-9f00-000000000001".into(),
                ),
                ("x-keygate-owner-id", "acme".into()),
                ("x-keygate-scopes", scopes.into()),
            ],
            response: vec![
                ("x-ratelimit-limit", "1000".into()),
                ("x-ratelimit-remaining", "999".into()),
                ("x-ratelimit-reset", "1764979200".into()),
            ],
        }
    }

    fn deny(status: u16, reason: &'static str) -> Verdict {
        Verdict::Deny {
            status,
            reason,
            headers: vec![
                ("content-type", "application/json".into()),
                ("retry-after", "3".into()),
            ],
            body: format!(r#"{{"error":"{reason}","message":"no"}}"#),
        }
    }

    #[test]
    fn envoy_decodes_every_answer_as_built_from_its_own_messages() {
        let cases = [
            (allow("dns:read,dns:write"), Some("authorization")),
            (allow("dns:read"), Some("x-api-key")),
            (allow(""), None),
            (deny(401, "key_revoked"), None),
            (deny(403, "scope_missing"), None),
            (deny(429, "rate_limited"), None),
        ];
        for (verdict, remove) in cases {
            let lean = CheckResponse::of(
                verdict.clone(),
                remove.map(|r| Bytes::from_static(r.as_bytes())),
            );
            let bytes = lean.encode_to_vec();
            let decoded = envoy::CheckResponse::decode(bytes.as_slice()).expect("decodes");
            let expected = reference(verdict.clone(), remove);
            assert_eq!(decoded, expected, "{verdict:?}");
            // And byte for byte what envoy-types would have sent.
            assert_eq!(bytes, expected.encode_to_vec(), "{verdict:?}");
        }
    }
}
