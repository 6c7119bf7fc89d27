//! A thin Rust client: one [`Client`] that holds both generated service
//! clients over a single channel and sends a management key as bearer
//! metadata on every call, so callers do not hand-roll interceptors.

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::v1::{
    AuthorizeRequest, AuthorizeResponse, authorization_service_client::AuthorizationServiceClient,
    key_management_service_client::KeyManagementServiceClient,
};

/// Adds `authorization: Bearer <key>` to every request when a key is set.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// Sends `key` as a bearer token. Fails if the key is not valid ASCII
    /// metadata. The value is marked sensitive, so HTTP/2 never puts it in
    /// its header compression table (HPACK "never indexed") and it is not
    /// shown in debug output.
    pub fn new(key: &str) -> Result<Self, Status> {
        let mut header: MetadataValue<Ascii> = format!("Bearer {key}")
            .parse()
            .map_err(|_| Status::invalid_argument("management key is not valid ASCII metadata"))?;
        header.set_sensitive(true);
        Ok(Self {
            header: Some(header),
        })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// The management service client with bearer auth.
pub type ManagementClient = KeyManagementServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Both Keygate services over one HTTP/2 channel.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    /// `KeyManagementService`, sending the management key (if any) on every call.
    pub keys: ManagementClient,
    /// `AuthorizationService`; needs no management key.
    pub authz: AuthorizationServiceClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (for example `http://127.0.0.1:50051`).
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, tonic::transport::Error> {
        Self::connect_with(Endpoint::from_shared(endpoint.into())?).await
    }

    /// Connects through `endpoint` as configured by the caller: TLS (CA
    /// to trust, client certificate for mutual TLS), timeouts, and so on.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    /// let tls = ClientTlsConfig::new()
    ///     .ca_certificate(Certificate::from_pem(std::fs::read("ca.pem")?))
    ///     .identity(Identity::from_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?));
    /// let endpoint = Endpoint::from_static("https://keygate.internal:50051").tls_config(tls)?;
    /// let client = keygate::Client::connect_with(endpoint).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(endpoint: Endpoint) -> Result<Self, tonic::transport::Error> {
        let channel = endpoint.tcp_nodelay(true).connect().await?;
        Ok(Self::from_channel(channel, BearerAuth::default()))
    }

    /// Builds a client on an existing channel.
    pub fn from_channel(channel: Channel, auth: BearerAuth) -> Self {
        Self {
            keys: KeyManagementServiceClient::with_interceptor(channel.clone(), auth),
            authz: AuthorizationServiceClient::new(channel.clone()),
            channel,
        }
    }

    /// Returns a copy that sends `management_key` on management calls.
    pub fn with_management_key(&self, management_key: &str) -> Result<Self, Status> {
        Ok(Self::from_channel(
            self.channel.clone(),
            BearerAuth::new(management_key)?,
        ))
    }

    /// Asks whether `key` may use `scopes` in `environment` from `client_ip`.
    pub async fn authorize(
        &mut self,
        key: &str,
        scopes: &[&str],
        environment: &str,
        client_ip: &str,
    ) -> Result<AuthorizeResponse, Status> {
        let request = AuthorizeRequest {
            key: key.to_owned(),
            required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            environment: environment.to_owned(),
            client_ip: client_ip.to_owned(),
        };
        Ok(self.authz.authorize(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_header_is_sensitive_and_not_printed() {
        let mut auth = BearerAuth::new("kg_live_secretsecret").unwrap();
        let request = auth.call(Request::new(())).unwrap();
        let value = request.metadata().get("authorization").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Bearer kg_live_secretsecret");
        assert!(!format!("{auth:?}").contains("secretsecret"), "{auth:?}");
        assert!(BearerAuth::new("kg_live_\u{e9}t\u{e9}\n").is_err());
    }
}
