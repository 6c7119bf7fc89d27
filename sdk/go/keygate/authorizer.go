package keygate

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	keygatev1 "github.com/keygate/keygate/sdk/go/keygate/v1"
)

// DefaultTimeout bounds each Authorize call made by an [Authorizer] unless
// [WithTimeout] says otherwise.
const DefaultTimeout = 500 * time.Millisecond

// AuthorizeClient is the part of a Keygate client an [Authorizer] needs.
// *[Client] and keygatev1.AuthorizationServiceClient implement it.
type AuthorizeClient interface {
	Authorize(ctx context.Context, in *keygatev1.AuthorizeRequest, opts ...grpc.CallOption) (*keygatev1.AuthorizeResponse, error)
}

// Authorizer checks the API keys of requests to your service with Keygate.
// Its middleware answer denied requests themselves and pass allowed ones on
// with an [Identity] in the request context.
//
// When Keygate cannot be reached, does not answer within the timeout, or
// answers with an error, the Authorizer fails closed (HTTP 503, gRPC
// UNAVAILABLE); [WithFailOpen] lets requests through only in the first two
// cases.
type Authorizer struct {
	client         AuthorizeClient
	environment    string
	timeout        time.Duration
	failOpen       bool
	trustedProxies int
	clientIP       func(*http.Request) string // nil: peer, or X-Forwarded-For per trustedProxies
}

// AuthorizerOption configures [NewAuthorizer].
type AuthorizerOption func(*Authorizer)

// WithTimeout bounds each Authorize call; the default is [DefaultTimeout].
func WithTimeout(d time.Duration) AuthorizerOption {
	return func(a *Authorizer) { a.timeout = d }
}

// WithFailOpen lets requests through, without an [Identity], when Keygate
// is unreachable: the Authorize call failed with UNAVAILABLE (connection
// refused or lost, no server) or DEADLINE_EXCEEDED (no answer within the
// timeout). Any other error — INVALID_ARGUMENT from a misconfigured
// environment, INTERNAL, PERMISSION_DENIED, … — still fails closed, so a
// broken configuration cannot open every route. Use it only for routes where
// availability matters more than access control.
func WithFailOpen() AuthorizerOption {
	return func(a *Authorizer) { a.failOpen = true }
}

// WithTrustedProxies tells the Authorizer that n reverse proxies, each of
// which appends the address it received the request from to
// X-Forwarded-For, sit in front of this service. The client address sent to
// Keygate (for the key's IP allowlist) is then the n-th X-Forwarded-For entry
// from the right: with n = 1 the rightmost, written by the one proxy; the
// entries further left are whatever the client sent and are ignored. Several
// X-Forwarded-For headers count as one list, in order. When the header has
// fewer than n entries, or the n-th from the right is not an IP address
// (optionally with a port), the connection's peer address is used instead:
// the request did not come through the configured proxies.
//
// The default, 0, ignores X-Forwarded-For and uses the peer address. It
// applies to the HTTP middleware and to the gRPC interceptor (whose
// x-forwarded-for metadata proxies such as Envoy set). Configure it only if
// the service cannot be reached except through those proxies.
// A negative n counts as 0.
func WithTrustedProxies(n int) AuthorizerOption {
	return func(a *Authorizer) { a.trustedProxies = max(n, 0) }
}

// WithClientIP replaces how the HTTP middleware finds the client's address
// for the key's IP allowlist (the peer address, or [WithTrustedProxies]'
// choice), for a proxy set-up of your own, such as a header only your proxy
// writes. Return "" when unknown: a key with an allowlist is then denied.
// It does not change the gRPC interceptor.
func WithClientIP(fn func(*http.Request) string) AuthorizerOption {
	return func(a *Authorizer) { a.clientIP = fn }
}

// NewAuthorizer returns an Authorizer that asks client about keys for the
// given environment, such as "live".
func NewAuthorizer(client AuthorizeClient, environment string, opts ...AuthorizerOption) *Authorizer {
	a := &Authorizer{
		client:      client,
		environment: environment,
		timeout:     DefaultTimeout,
	}
	for _, opt := range opts {
		opt(a)
	}
	return a
}

// Identity is the key an allowed request was made with.
type Identity struct {
	KeyID       string
	OwnerID     string
	Environment string
	Scopes      []string
	// Metadata is the key's own data (ApiKey.metadata), such as the
	// customer's plan or tenant id; nil when it has none.
	Metadata map[string]string
}

type identityKey struct{}

// IdentityFromContext returns the Identity the middleware put in ctx; false
// when there is none (the route is unprotected, or Keygate was unavailable
// and the Authorizer fails open).
func IdentityFromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	return id, ok
}

// ContextWithIdentity returns a copy of ctx carrying id, as the middleware
// does; useful in tests of handlers.
func ContextWithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// outcome is the Authorizer's verdict on one request, independent of the
// protocol it arrived by.
type outcome struct {
	// resp is Keygate's answer; nil when the key was missing or Keygate
	// could not decide.
	resp *keygatev1.AuthorizeResponse
	// denial is set when the request must be refused.
	denial *denial
}

type denial struct {
	class         denialClass
	reason        string // lower snake case, as in the JSON body
	message       string
	missingScopes []string
	retryAfter    time.Duration // RATE_LIMITED only
}

type denialClass int

const (
	unauthenticated denialClass = iota
	forbidden
	rateLimited
	unavailable
)

const (
	reasonKeyInvalid  = "key_invalid"
	reasonUnavailable = "authorization_unavailable"
)

// decide asks Keygate about key and turns the answer into an outcome.
func (a *Authorizer) decide(ctx context.Context, key, clientIP string, scopes []string) outcome {
	if key == "" {
		return outcome{denial: &denial{class: unauthenticated, reason: reasonKeyInvalid, message: "missing API key"}}
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.client.Authorize(ctx, &keygatev1.AuthorizeRequest{
		Key:            key,
		RequiredScopes: scopes,
		Environment:    a.environment,
		ClientIp:       clientIP,
	})
	if err != nil {
		if a.failOpen && unreachable(err) {
			return outcome{}
		}
		return outcome{denial: &denial{class: unavailable, reason: reasonUnavailable, message: "authorization service unavailable"}}
	}
	if resp.GetDecision() == keygatev1.Decision_DECISION_ALLOW {
		return outcome{resp: resp}
	}
	return outcome{resp: resp, denial: denialOf(resp)}
}

// unreachable reports whether an Authorize error means that Keygate could not
// be reached or did not answer in time, the only failures [WithFailOpen]
// lets requests through on.
func unreachable(err error) bool {
	switch Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	// An AuthorizeClient of its own may return the context's error as is.
	return errors.Is(err, context.DeadlineExceeded)
}

// denialOf maps a deny response to its class and body.
func denialOf(resp *keygatev1.AuthorizeResponse) *denial {
	d := &denial{class: unauthenticated, reason: reasonKeyInvalid, message: resp.GetMessage()}
	switch resp.GetReason() {
	case keygatev1.DenyReason_DENY_REASON_KEY_INVALID,
		keygatev1.DenyReason_DENY_REASON_KEY_EXPIRED,
		keygatev1.DenyReason_DENY_REASON_KEY_REVOKED,
		keygatev1.DenyReason_DENY_REASON_KEY_DISABLED,
		keygatev1.DenyReason_DENY_REASON_ENVIRONMENT_MISMATCH:
		d.reason = reasonName(resp.GetReason())
	case keygatev1.DenyReason_DENY_REASON_SCOPE_MISSING:
		d.class, d.reason = forbidden, reasonName(resp.GetReason())
		d.missingScopes = resp.GetMissingScopes()
	case keygatev1.DenyReason_DENY_REASON_IP_NOT_ALLOWED:
		d.class, d.reason = forbidden, reasonName(resp.GetReason())
	case keygatev1.DenyReason_DENY_REASON_RATE_LIMITED:
		d.class, d.reason = rateLimited, reasonName(resp.GetReason())
		d.retryAfter = resp.GetRateLimit().GetRetryAfter().AsDuration()
	default:
		// A deny without a reason this SDK knows (a newer server): refuse
		// as an invalid key rather than let it through.
	}
	return d
}

// reasonName turns DENY_REASON_SCOPE_MISSING into scope_missing.
func reasonName(r keygatev1.DenyReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "DENY_REASON_"))
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}

func identityOf(resp *keygatev1.AuthorizeResponse) *Identity {
	return &Identity{
		KeyID:       resp.GetKeyId(),
		OwnerID:     resp.GetOwnerId(),
		Environment: resp.GetEnvironment(),
		Scopes:      resp.GetScopes(),
		Metadata:    resp.GetMetadata(),
	}
}
