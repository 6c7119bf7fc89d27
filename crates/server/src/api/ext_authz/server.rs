//! The gRPC route of `envoy.service.auth.v3.Authorization/Check`: what
//! envoy-types' generated `AuthorizationServer` does, with the request
//! decoded as [`super::request::CheckRequest`] (the fields Keygate reads)
//! instead of Envoy's whole message. The answer is envoy-types'
//! `CheckResponse`; the service's name is envoy-types' too, so health and
//! reflection name it as before.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use envoy_types::ext_authz::v3::pb::CheckResponse;
use tonic::{
    body::Body,
    codegen::{Body as HttpBody, BoxFuture, StdError, http},
    server::{Grpc, NamedService, UnaryService},
};

use super::{ExtAuthzService, request::CheckRequest};

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
            let mut grpc =
                Grpc::new(tonic_prost::ProstCodec::<CheckResponse, CheckRequest>::default())
                    .apply_max_message_size_config(max_decoding, None);
            Ok(grpc.unary(check, request).await)
        })
    }
}
