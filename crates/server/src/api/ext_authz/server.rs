//! The gRPC route of `envoy.service.auth.v3.Authorization/Check`: what
//! envoy-types' generated `AuthorizationServer` does, with the request
//! decoded as [`super::request::CheckRequest`] (the fields Keygate reads)
//! instead of Envoy's whole message, and answered with
//! [`super::response::CheckResponse`] (the fields Keygate sets). The
//! service's name is envoy-types', so health and reflection name it as
//! before.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use prost::bytes::Buf;
use tonic::{
    body::Body,
    codec::{Codec, DecodeBuf, Decoder},
    codegen::{Body as HttpBody, BoxFuture, StdError, http},
    server::{Grpc, NamedService, UnaryService},
};

use tonic_prost::ProstEncoder;

use super::{CheckResponse, ExtAuthzService, request::CheckRequest};

/// The gRPC path of Check.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Serves [`ExtAuthzService`] as `envoy.service.auth.v3.Authorization`.
#[derive(Clone, Debug)]
pub struct ExtAuthzServer {
    inner: Arc<ExtAuthzService>,
    max_decoding_message_size: Option<usize>,
}

impl ExtAuthzServer {
    /// The server of `service`.
    pub fn new(service: ExtAuthzService) -> Self {
        Self {
            inner: Arc::new(service),
            max_decoding_message_size: None,
        }
    }

    /// Limits the size of a decoded request (default: tonic's 4 MB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }
}

impl NamedService for ExtAuthzServer {
    const NAME: &'static str =
        envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME;
}

struct Check(Arc<ExtAuthzService>);

impl UnaryService<CheckRequest> for Check {
    type Response = CheckResponse;
    type Future = BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            service
                .check(&request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> tower::Service<http::Request<B>> for ExtAuthzServer
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let check = Check(Arc::clone(&self.inner));
        let max_decoding = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(CheckCodec).apply_max_message_size_config(max_decoding, None);
            Ok(grpc.unary(check, request).await)
        })
    }
}

/// Check's codec: the request kept as its bytes ([`CheckRequest::decode`]),
/// the answer encoded by prost.
#[derive(Clone, Copy, Debug, Default)]
struct CheckCodec;

/// Takes a request's bytes without copying them.
#[derive(Clone, Copy, Debug, Default)]
struct CheckDecoder;

impl Codec for CheckCodec {
    type Encode = CheckResponse;
    type Decode = CheckRequest;
    type Encoder = ProstEncoder<CheckResponse>;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder
    }
}

impl Decoder for CheckDecoder {
    type Item = CheckRequest;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<CheckRequest>, tonic::Status> {
        let raw = buf.copy_to_bytes(buf.remaining());
        CheckRequest::decode(raw)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding CheckRequest: {e}")))
    }
}
