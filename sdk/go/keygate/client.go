// Package keygate is the Go client of Keygate, an API key service.
//
// [Client] speaks to a Keygate server over gRPC: it embeds the generated
// service clients of package keygatev1 (github.com/keygate/keygate/sdk/go/keygate/v1)
// and sends a management key as bearer metadata on every call. [Authorizer]
// protects your own services with Keygate: [Authorizer.Require] is a net/http
// middleware and [Authorizer.UnaryServerInterceptor] a gRPC interceptor.
//
// [NewClient] uses TLS with the system's root certificates by default.
// [WithTLSFiles] takes PEM files for a private CA and, for a Keygate that
// requires mutual TLS, a client certificate and key; [WithTLSConfig] takes a
// *tls.Config of your own; [WithInsecure] connects in plaintext.
package keygate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"iter"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	keygatev1 "github.com/keygate/keygate/sdk/go/keygate/v1"
)

// Client is a connection to a Keygate server. It embeds the generated service
// clients, so every RPC is available; the methods defined on Client itself
// shadow them with the same signatures and return errors as *[Error].
//
// Optimistic concurrency: RotateKey, RevokeKey, UpdateKeyExpiry, DisableKey,
// EnableKey, UpdateKey and DeleteKey requests take an optional Etag, the ApiKey.Etag of the key as
// last read. When it is set and the key has changed since, the call fails
// with codes.Aborted and [Error.Reason] "ETAG_MISMATCH", and changes nothing:
//
//	got, err := client.GetKey(ctx, &keygatev1.GetKeyRequest{KeyId: id})
//	...
//	_, err = client.DisableKey(ctx, &keygatev1.DisableKeyRequest{KeyId: id, Etag: got.GetKey().GetEtag()})
//	if keygate.Reason(err) == "ETAG_MISMATCH" { /* re-read and decide again */ }
//
// A Client is safe for concurrent use. Close it when done.
type Client struct {
	keygatev1.KeyManagementServiceClient
	keygatev1.AuthorizationServiceClient

	conn *grpc.ClientConn
}

// Option configures [NewClient].
type Option func(*clientConfig)

type clientConfig struct {
	tls           *tls.Config
	tlsFiles      *tlsFiles
	insecure      bool
	managementKey string
	dialOptions   []grpc.DialOption
}

// WithInsecure connects without TLS, for a Keygate on localhost or inside a
// trusted network. The management key is then sent in clear.
func WithInsecure() Option {
	return func(c *clientConfig) { c.insecure = true }
}

// WithTLSConfig connects with TLS using cfg (for a private CA or client
// certificates). Without this option, [WithTLSFiles] and [WithInsecure], the
// client uses TLS with the system's root certificates.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(c *clientConfig) { c.tls = cfg }
}

// WithTLSFiles connects with TLS configured from PEM files: caFile holds the
// CA certificates the server's certificate must be signed by (empty: the
// system's roots); certFile and keyFile are a client certificate and its
// private key, for a Keygate that requires mutual TLS (both empty: no client
// certificate). [NewClient] reads the files and fails, naming the file, when
// one cannot be read or holds no usable PEM.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(c *clientConfig) { c.tlsFiles = &tlsFiles{ca: caFile, cert: certFile, key: keyFile} }
}

// WithManagementKey sends key as "authorization: Bearer <key>" metadata on
// every call. KeyManagementService calls need it; Authorize does not.
func WithManagementKey(key string) Option {
	return func(c *clientConfig) { c.managementKey = key }
}

// WithDialOptions adds gRPC dial options, such as interceptors or keepalive
// parameters.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *clientConfig) { c.dialOptions = append(c.dialOptions, opts...) }
}

// NewClient returns a client for the Keygate server at target, such as
// "keygate.internal:50051" or "dns:///keygate.internal:443". It does not
// connect until the first call.
func NewClient(target string, opts ...Option) (*Client, error) {
	var cfg clientConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.insecure && cfg.tls != nil {
		return nil, errors.New("keygate: WithInsecure and WithTLSConfig exclude each other")
	}
	if cfg.tlsFiles != nil {
		if cfg.insecure || cfg.tls != nil {
			return nil, errors.New("keygate: WithTLSFiles excludes WithInsecure and WithTLSConfig")
		}
		var err error
		if cfg.tls, err = cfg.tlsFiles.load(); err != nil {
			return nil, err
		}
	}

	dialOptions := make([]grpc.DialOption, 0, len(cfg.dialOptions)+2)
	switch {
	case cfg.insecure:
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(insecure.NewCredentials()))
	case cfg.tls != nil:
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(credentials.NewTLS(cfg.tls)))
	default:
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})))
	}
	if cfg.managementKey != "" {
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearerToken{
			token:          cfg.managementKey,
			requireSecured: !cfg.insecure,
		}))
	}
	dialOptions = append(dialOptions, cfg.dialOptions...)

	conn, err := grpc.NewClient(target, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("keygate: connecting to %q: %w", target, err)
	}
	return &Client{
		KeyManagementServiceClient: keygatev1.NewKeyManagementServiceClient(conn),
		AuthorizationServiceClient: keygatev1.NewAuthorizationServiceClient(conn),
		conn:                       conn,
	}, nil
}

// Close closes the connection. Calls in flight fail.
func (c *Client) Close() error {
	return c.conn.Close()
}

// CreateKey creates a key. The response holds its secret, the only time
// Keygate returns it.
func (c *Client) CreateKey(ctx context.Context, in *keygatev1.CreateKeyRequest, opts ...grpc.CallOption) (*keygatev1.CreateKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.CreateKey, in, opts)
}

// GetKey returns a key's metadata.
func (c *Client) GetKey(ctx context.Context, in *keygatev1.GetKeyRequest, opts ...grpc.CallOption) (*keygatev1.GetKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.GetKey, in, opts)
}

// ListKeys returns one page of keys. [Client.AllKeys] iterates over every page.
func (c *Client) ListKeys(ctx context.Context, in *keygatev1.ListKeysRequest, opts ...grpc.CallOption) (*keygatev1.ListKeysResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.ListKeys, in, opts)
}

// RotateKey gives a key a new secret; the old one keeps working for the
// request's grace period.
func (c *Client) RotateKey(ctx context.Context, in *keygatev1.RotateKeyRequest, opts ...grpc.CallOption) (*keygatev1.RotateKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.RotateKey, in, opts)
}

// RevokeKey ends a key for good.
func (c *Client) RevokeKey(ctx context.Context, in *keygatev1.RevokeKeyRequest, opts ...grpc.CallOption) (*keygatev1.RevokeKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.RevokeKey, in, opts)
}

// UpdateKeyExpiry sets or clears a key's expiry.
func (c *Client) UpdateKeyExpiry(ctx context.Context, in *keygatev1.UpdateKeyExpiryRequest, opts ...grpc.CallOption) (*keygatev1.UpdateKeyExpiryResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.UpdateKeyExpiry, in, opts)
}

// DisableKey switches a key off until [Client.EnableKey].
func (c *Client) DisableKey(ctx context.Context, in *keygatev1.DisableKeyRequest, opts ...grpc.CallOption) (*keygatev1.DisableKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.DisableKey, in, opts)
}

// EnableKey switches a disabled key back on.
func (c *Client) EnableKey(ctx context.Context, in *keygatev1.EnableKeyRequest, opts ...grpc.CallOption) (*keygatev1.EnableKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.EnableKey, in, opts)
}

// GetKeyUsage returns a key's requests per hour (allowed, denied by rate
// limit, denied otherwise), by default for the last 24 hours; at most 31
// days per call.
func (c *Client) GetKeyUsage(ctx context.Context, in *keygatev1.GetKeyUsageRequest, opts ...grpc.CallOption) (*keygatev1.GetKeyUsageResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.GetKeyUsage, in, opts)
}

// UpdateKey changes the fields of in.Key named in in.UpdateMask, of "name",
// "scopes", "ip_allowlist", "rate_limit_per_hour", "metadata" and
// "expires_at"; in.Key.KeyId names the key. A named field left unset in
// in.Key is cleared (the server's default rate limit, no expiry, no
// metadata, no scopes); the name cannot be cleared. Any other path fails
// with codes.InvalidArgument and a [FieldViolation] naming it, such as
// "update_mask.paths[0]"; scopes beyond the caller's own fail with
// codes.PermissionDenied, reason "SCOPE_ESCALATION":
//
//	limit := uint32(1000)
//	_, err := client.UpdateKey(ctx, &keygatev1.UpdateKeyRequest{
//		Key:        &keygatev1.ApiKey{KeyId: id, Scopes: []string{"dns:read"}, RateLimitPerHour: &limit},
//		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"scopes", "rate_limit_per_hour"}},
//	})
func (c *Client) UpdateKey(ctx context.Context, in *keygatev1.UpdateKeyRequest, opts ...grpc.CallOption) (*keygatev1.UpdateKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.UpdateKey, in, opts)
}

// DeleteKey soft-deletes a key: it stops authorizing at once (Authorize
// denies it as DENY_REASON_KEY_INVALID), leaves ListKeys unless ShowDeleted
// is set, and is purged at the returned key's PurgeTime unless
// [Client.UndeleteKey] restores it first. Any other change to a deleted key
// fails with codes.FailedPrecondition, reason "KEY_DELETED".
func (c *Client) DeleteKey(ctx context.Context, in *keygatev1.DeleteKeyRequest, opts ...grpc.CallOption) (*keygatev1.DeleteKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.DeleteKey, in, opts)
}

// UndeleteKey restores a deleted key, with the state it had. It fails with
// codes.FailedPrecondition, reason "KEY_NOT_DELETED" for a key that is not
// deleted and "KEY_PURGED" past its purge time.
func (c *Client) UndeleteKey(ctx context.Context, in *keygatev1.UndeleteKeyRequest, opts ...grpc.CallOption) (*keygatev1.UndeleteKeyResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.UndeleteKey, in, opts)
}

// ListAuditEvents returns one page of audit events, newest first.
// [Client.AllAuditEvents] iterates over every page.
func (c *Client) ListAuditEvents(ctx context.Context, in *keygatev1.ListAuditEventsRequest, opts ...grpc.CallOption) (*keygatev1.ListAuditEventsResponse, error) {
	return call(ctx, c.KeyManagementServiceClient.ListAuditEvents, in, opts)
}

// Authorize asks whether a presented key may make a request. A deny is a
// successful response with DECISION_DENY; an error means Keygate could not
// decide.
func (c *Client) Authorize(ctx context.Context, in *keygatev1.AuthorizeRequest, opts ...grpc.CallOption) (*keygatev1.AuthorizeResponse, error) {
	return call(ctx, c.AuthorizationServiceClient.Authorize, in, opts)
}

// AllKeys iterates over the keys matching filter, fetching page after page.
// filter's PageToken is where it starts; filter itself is not modified.
// Iteration stops at the first error, which is yielded with a nil key.
func (c *Client) AllKeys(ctx context.Context, filter *keygatev1.ListKeysRequest, opts ...grpc.CallOption) iter.Seq2[*keygatev1.ApiKey, error] {
	return pages(filter, func(req *keygatev1.ListKeysRequest) ([]*keygatev1.ApiKey, string, error) {
		page, err := c.ListKeys(ctx, req, opts...)
		return page.GetKeys(), page.GetNextPageToken(), err
	}, func(req *keygatev1.ListKeysRequest, token string) { req.PageToken = token })
}

// AllAuditEvents iterates over the audit events matching filter, newest
// first, fetching page after page. filter's PageToken is where it starts;
// filter itself is not modified. Iteration stops at the first error, which
// is yielded with a nil event.
//
//	for event, err := range client.AllAuditEvents(ctx, &keygatev1.ListAuditEventsRequest{KeyId: id}) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(event.GetTime().AsTime(), event.GetMethod(), event.GetActorKeyId())
//	}
func (c *Client) AllAuditEvents(ctx context.Context, filter *keygatev1.ListAuditEventsRequest, opts ...grpc.CallOption) iter.Seq2[*keygatev1.AuditEvent, error] {
	return pages(filter, func(req *keygatev1.ListAuditEventsRequest) ([]*keygatev1.AuditEvent, string, error) {
		page, err := c.ListAuditEvents(ctx, req, opts...)
		return page.GetEvents(), page.GetNextPageToken(), err
	}, func(req *keygatev1.ListAuditEventsRequest, token string) { req.PageToken = token })
}

// pages iterates over the items of a paged List call. Each iteration of the
// sequence starts from a copy of filter (of every field, so no filter is
// lost; an empty request when filter is nil): fetch gets the page the copy
// asks for and returns its items and the next page token, which setToken
// puts in the copy for the next page.
func pages[Req proto.Message, Item any](
	filter Req,
	fetch func(Req) ([]Item, string, error),
	setToken func(Req, string),
) iter.Seq2[Item, error] {
	return func(yield func(Item, error) bool) {
		var req Req
		if filter.ProtoReflect().IsValid() {
			req = proto.Clone(filter).(Req)
		} else {
			req = filter.ProtoReflect().Type().New().Interface().(Req)
		}
		for {
			items, next, err := fetch(req)
			if err != nil {
				var zero Item
				yield(zero, err)
				return
			}
			for _, item := range items {
				if !yield(item, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			setToken(req, next)
		}
	}
}

// call runs one unary RPC and converts its error into an *Error.
func call[Req, Resp any](
	ctx context.Context,
	rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error),
	in Req,
	opts []grpc.CallOption,
) (Resp, error) {
	resp, err := rpc(ctx, in, opts...)
	if err != nil {
		var zero Resp
		return zero, wrapError(err)
	}
	return resp, nil
}

// tlsFiles are the PEM files of [WithTLSFiles].
type tlsFiles struct{ ca, cert, key string }

// load builds the TLS configuration, failing with the file at fault.
func (f *tlsFiles) load() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("keygate: reading TLS CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("keygate: TLS CA file %s holds no PEM certificate", f.ca)
		}
	}
	if (f.cert == "") != (f.key == "") {
		return nil, errors.New("keygate: WithTLSFiles needs both a client certificate file and its key file, or neither")
	}
	if f.cert != "" {
		certPEM, err := os.ReadFile(f.cert)
		if err != nil {
			return nil, fmt.Errorf("keygate: reading TLS client certificate: %w", err)
		}
		keyPEM, err := os.ReadFile(f.key)
		if err != nil {
			return nil, fmt.Errorf("keygate: reading TLS client key: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("keygate: TLS client certificate %s with key %s: %w", f.cert, f.key, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// bearerToken sends "authorization: Bearer <token>" on every call.
type bearerToken struct {
	token          string
	requireSecured bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireSecured }
