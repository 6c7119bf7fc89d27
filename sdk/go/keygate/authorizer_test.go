package keygate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keygate/keygate/sdk/go/keygate"
	keygatev1 "github.com/keygate/keygate/sdk/go/keygate/v1"
)

// fakeKeygate is an in-process AuthorizationService that answers every call
// with resp (or err) and records the requests it saw.
type fakeKeygate struct {
	keygatev1.UnimplementedAuthorizationServiceServer

	mu       sync.Mutex
	resp     *keygatev1.AuthorizeResponse
	err      error
	requests []*keygatev1.AuthorizeRequest
}

func (f *fakeKeygate) Authorize(_ context.Context, req *keygatev1.AuthorizeRequest) (*keygatev1.AuthorizeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	return f.resp, f.err
}

func (f *fakeKeygate) seen() []*keygatev1.AuthorizeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// startFake serves fake on a local port and returns a client of it.
func startFake(t *testing.T, fake *fakeKeygate) *keygate.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	keygatev1.RegisterAuthorizationServiceServer(srv, fake)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	client, err := keygate.NewClient(lis.Addr().String(), keygate.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

var resetAt = time.Unix(1_900_000_000, 0)

func rateLimit(limit, remaining uint32, retryAfter time.Duration) *keygatev1.RateLimit {
	return &keygatev1.RateLimit{
		Limit:      limit,
		Remaining:  remaining,
		ResetAt:    timestamppb.New(resetAt),
		RetryAfter: durationpb.New(retryAfter),
	}
}

func deny(reason keygatev1.DenyReason, message string) *keygatev1.AuthorizeResponse {
	return &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_DENY, Reason: reason, Message: message}
}

// identityEcho is a handler that answers 200 with the identity it got.
var identityEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	id, ok := keygate.IdentityFromContext(r.Context())
	if !ok {
		_, _ = w.Write([]byte("anonymous"))
		return
	}
	_, _ = w.Write([]byte(id.OwnerID + "/" + id.KeyID))
})

type wantResponse struct {
	status        int
	body          string // the handler's body, on 200
	errorReason   string // the JSON "error", otherwise
	missingScopes []string
	retryAfter    string
	rateLimit     bool // X-RateLimit-* expected
}

// checkResponse verifies a middleware response against want.
func checkResponse(t *testing.T, rec *httptest.ResponseRecorder, want wantResponse) {
	t.Helper()
	if rec.Code != want.status {
		t.Fatalf("status = %d, want %d (body %q)", rec.Code, want.status, rec.Body)
	}
	h := rec.Header()
	if want.status == http.StatusOK {
		if got := rec.Body.String(); got != want.body {
			t.Errorf("body = %q, want %q", got, want.body)
		}
	} else {
		if ct := h.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
		var body struct {
			Error         string   `json:"error"`
			Message       string   `json:"message"`
			MissingScopes []string `json:"missing_scopes"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("body %q: %v", rec.Body, err)
		}
		if body.Error != want.errorReason {
			t.Errorf(`body "error" = %q, want %q`, body.Error, want.errorReason)
		}
		if body.Message == "" {
			t.Errorf(`body "message" is empty`)
		}
		if !slices.Equal(body.MissingScopes, want.missingScopes) {
			t.Errorf(`body "missing_scopes" = %q, want %q`, body.MissingScopes, want.missingScopes)
		}
	}
	if got, wantAuth := h.Get("WWW-Authenticate"), want.status == http.StatusUnauthorized; (got == "Bearer") != wantAuth {
		t.Errorf("WWW-Authenticate = %q, want it set: %v", got, wantAuth)
	}
	if got := h.Get("Retry-After"); got != want.retryAfter {
		t.Errorf("Retry-After = %q, want %q", got, want.retryAfter)
	}
	for _, name := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
		if got := h.Get(name) != ""; got != want.rateLimit {
			t.Errorf("%s = %q, want it set: %v", name, h.Get(name), want.rateLimit)
		}
	}
}

func TestRequireMapsDecisions(t *testing.T) {
	allow := &keygatev1.AuthorizeResponse{
		Decision:  keygatev1.Decision_DECISION_ALLOW,
		KeyId:     "key_1",
		OwnerId:   "acme",
		Scopes:    []string{"dns:read"},
		RateLimit: rateLimit(100, 99, 0),
	}
	scopeMissing := deny(keygatev1.DenyReason_DENY_REASON_SCOPE_MISSING, "Missing scope")
	scopeMissing.MissingScopes = []string{"dns:write"}
	limited := deny(keygatev1.DenyReason_DENY_REASON_RATE_LIMITED, "Rate limit exceeded")
	limited.RateLimit = rateLimit(2, 0, 1200*time.Millisecond)

	tests := []struct {
		name string
		resp *keygatev1.AuthorizeResponse
		want wantResponse
	}{
		{"allow", allow, wantResponse{status: 200, body: "acme/key_1", rateLimit: true}},
		{"key invalid", deny(keygatev1.DenyReason_DENY_REASON_KEY_INVALID, "Invalid API key"), wantResponse{status: 401, errorReason: "key_invalid"}},
		{"key expired", deny(keygatev1.DenyReason_DENY_REASON_KEY_EXPIRED, "Expired"), wantResponse{status: 401, errorReason: "key_expired"}},
		{"key revoked", deny(keygatev1.DenyReason_DENY_REASON_KEY_REVOKED, "Revoked"), wantResponse{status: 401, errorReason: "key_revoked"}},
		{"key disabled", deny(keygatev1.DenyReason_DENY_REASON_KEY_DISABLED, "Disabled"), wantResponse{status: 401, errorReason: "key_disabled"}},
		{"environment mismatch", deny(keygatev1.DenyReason_DENY_REASON_ENVIRONMENT_MISMATCH, "Wrong environment"), wantResponse{status: 401, errorReason: "environment_mismatch"}},
		{"unknown reason", deny(keygatev1.DenyReason(99), "Denied"), wantResponse{status: 401, errorReason: "key_invalid"}},
		{"ip not allowed", deny(keygatev1.DenyReason_DENY_REASON_IP_NOT_ALLOWED, "IP not allowed"), wantResponse{status: 403, errorReason: "ip_not_allowed"}},
		{"scope missing", scopeMissing, wantResponse{status: 403, errorReason: "scope_missing", missingScopes: []string{"dns:write"}}},
		{"rate limited", limited, wantResponse{status: 429, errorReason: "rate_limited", retryAfter: "2", rateLimit: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeKeygate{resp: tt.resp}
			auth := keygate.NewAuthorizer(startFake(t, fake), "live")
			req := httptest.NewRequest(http.MethodGet, "/zones", nil)
			req.Header.Set("Authorization", "Bearer kg_live_presented")
			rec := httptest.NewRecorder()
			auth.Require("dns:read", "dns:write")(identityEcho).ServeHTTP(rec, req)
			checkResponse(t, rec, tt.want)
		})
	}
}

func TestRequireRateLimitHeaderValues(t *testing.T) {
	resp := deny(keygatev1.DenyReason_DENY_REASON_RATE_LIMITED, "Rate limit exceeded")
	resp.RateLimit = rateLimit(2, 0, 3*time.Second)
	auth := keygate.NewAuthorizer(startFake(t, &fakeKeygate{resp: resp}), "live")
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer kg_live_presented")
	rec := httptest.NewRecorder()
	auth.Require()(identityEcho).ServeHTTP(rec, req)

	want := map[string]string{
		"Retry-After":           "3",
		"X-RateLimit-Limit":     "2",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "1900000000",
	}
	for name, value := range want {
		if got := rec.Header().Get(name); got != value {
			t.Errorf("%s = %q, want %q", name, got, value)
		}
	}
}

func TestRetryAfterRounding(t *testing.T) {
	tests := []struct {
		retryAfter time.Duration
		want       string
	}{
		{0, "1"},
		{time.Millisecond, "1"},
		{time.Second, "1"},
		{time.Second + time.Nanosecond, "2"},
		{59*time.Minute + 30*time.Second, "3570"},
	}
	for _, tt := range tests {
		t.Run(tt.retryAfter.String(), func(t *testing.T) {
			resp := deny(keygatev1.DenyReason_DENY_REASON_RATE_LIMITED, "Rate limit exceeded")
			resp.RateLimit = rateLimit(1, 0, tt.retryAfter)
			auth := keygate.NewAuthorizer(startFake(t, &fakeKeygate{resp: resp}), "live")
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Authorization", "Bearer k")
			rec := httptest.NewRecorder()
			auth.Require()(identityEcho).ServeHTTP(rec, req)
			if got := rec.Header().Get("Retry-After"); got != tt.want {
				t.Errorf("Retry-After = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRequireSendsRequestFields(t *testing.T) {
	tests := []struct {
		name     string
		opts     []keygate.AuthorizerOption
		header   string
		remote   string
		xff      string
		wantKey  string
		wantIP   string
		wantCall bool
	}{
		{name: "bearer", header: "Bearer kg_live_abc", remote: "192.0.2.7:5555", wantKey: "kg_live_abc", wantIP: "192.0.2.7", wantCall: true},
		{name: "scheme case-insensitive", header: "bearer   kg_live_abc ", remote: "[2001:db8::1]:443", wantKey: "kg_live_abc", wantIP: "2001:db8::1", wantCall: true},
		{name: "forwarded-for ignored by default", header: "Bearer k", remote: "10.0.0.1:1", xff: "203.0.113.9", wantKey: "k", wantIP: "10.0.0.1", wantCall: true},
		{name: "forwarded-for with a trusted proxy", opts: []keygate.AuthorizerOption{keygate.WithTrustedProxies(1)}, header: "Bearer k", remote: "10.0.0.1:1", xff: "203.0.113.9", wantKey: "k", wantIP: "203.0.113.9", wantCall: true},
		{name: "missing header", remote: "10.0.0.1:1"},
		{name: "basic scheme", header: "Basic dXNlcjpwYXNz", remote: "10.0.0.1:1"},
		{name: "bearer without key", header: "Bearer ", remote: "10.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeKeygate{resp: &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_ALLOW}}
			auth := keygate.NewAuthorizer(startFake(t, fake), "test", tt.opts...)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = tt.remote
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			if tt.xff != "" {
				req.Header.Set("X-Forwarded-For", tt.xff)
			}
			rec := httptest.NewRecorder()
			auth.Require("a:read", "b:write")(identityEcho).ServeHTTP(rec, req)

			seen := fake.seen()
			if !tt.wantCall {
				if len(seen) != 0 {
					t.Fatalf("Keygate was called %d times, want none", len(seen))
				}
				checkResponse(t, rec, wantResponse{status: 401, errorReason: "key_invalid"})
				return
			}
			if len(seen) != 1 {
				t.Fatalf("Keygate was called %d times, want once", len(seen))
			}
			want := &keygatev1.AuthorizeRequest{Key: tt.wantKey, RequiredScopes: []string{"a:read", "b:write"}, Environment: "test", ClientIp: tt.wantIP}
			if !proto.Equal(seen[0], want) {
				t.Errorf("request = %v, want %v", seen[0], want)
			}
		})
	}
}

// TestClientAddress checks which address the HTTP middleware sends to
// Keygate: the peer's, unless trusted proxies are configured, and then the
// X-Forwarded-For entry the outermost trusted proxy wrote.
func TestClientAddress(t *testing.T) {
	const peer = "10.0.0.1"
	tests := []struct {
		name    string
		proxies int
		xff     []string // one value per X-Forwarded-For header
		want    string
	}{
		{name: "no trusted proxies: peer, X-Forwarded-For ignored", xff: []string{"203.0.113.9"}, want: peer},
		{name: "no trusted proxies, spoofed chain", xff: []string{"6.6.6.6, 203.0.113.9"}, want: peer},
		{name: "one proxy: rightmost entry", proxies: 1, xff: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "one proxy: spoofed leftmost entry ignored", proxies: 1, xff: []string{"6.6.6.6, 203.0.113.9"}, want: "203.0.113.9"},
		{name: "one proxy: several spoofed entries ignored", proxies: 1, xff: []string{"6.6.6.6,7.7.7.7 ,  203.0.113.9"}, want: "203.0.113.9"},
		{name: "one proxy: headers joined in order", proxies: 1, xff: []string{"6.6.6.6", "203.0.113.9"}, want: "203.0.113.9"},
		{name: "two proxies: second from the right", proxies: 2, xff: []string{"6.6.6.6, 203.0.113.9, 192.168.1.5"}, want: "203.0.113.9"},
		{name: "two proxies: exactly two entries", proxies: 2, xff: []string{"203.0.113.9, 192.168.1.5"}, want: "203.0.113.9"},
		{name: "two proxies: headers joined in order", proxies: 2, xff: []string{"6.6.6.6, 203.0.113.9", "192.168.1.5"}, want: "203.0.113.9"},
		{name: "two proxies, one entry: peer", proxies: 2, xff: []string{"203.0.113.9"}, want: peer},
		{name: "one proxy, no header: peer", proxies: 1, want: peer},
		{name: "one proxy, empty header: peer", proxies: 1, xff: []string{" , "}, want: peer},
		{name: "one proxy, not an address: peer", proxies: 1, xff: []string{"203.0.113.9, unknown"}, want: peer},
		{name: "one proxy, IPv6", proxies: 1, xff: []string{"2001:DB8::9"}, want: "2001:db8::9"},
		{name: "one proxy, IPv4 with port", proxies: 1, xff: []string{"203.0.113.9:4711"}, want: "203.0.113.9"},
		{name: "one proxy, IPv6 with port", proxies: 1, xff: []string{"[2001:db8::9]:443"}, want: "2001:db8::9"},
		{name: "negative count: peer", proxies: -1, xff: []string{"203.0.113.9"}, want: peer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeKeygate{resp: &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_ALLOW}}
			auth := keygate.NewAuthorizer(startFake(t, fake), "live", keygate.WithTrustedProxies(tt.proxies))
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = peer + ":5555"
			req.Header.Set("Authorization", "Bearer k")
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			auth.Require()(identityEcho).ServeHTTP(httptest.NewRecorder(), req)
			seen := fake.seen()
			if len(seen) != 1 {
				t.Fatalf("Keygate was called %d times, want once", len(seen))
			}
			if got := seen[0].GetClientIp(); got != tt.want {
				t.Errorf("client_ip = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("WithClientIP replaces the lookup", func(t *testing.T) {
		fake := &fakeKeygate{resp: &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_ALLOW}}
		fromHeader := func(r *http.Request) string { return r.Header.Get("X-Real-IP") }
		auth := keygate.NewAuthorizer(startFake(t, fake), "live", keygate.WithTrustedProxies(1), keygate.WithClientIP(fromHeader))
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Authorization", "Bearer k")
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		req.Header.Set("X-Real-IP", "198.51.100.4")
		auth.Require()(identityEcho).ServeHTTP(httptest.NewRecorder(), req)
		if seen := fake.seen(); len(seen) != 1 || seen[0].GetClientIp() != "198.51.100.4" {
			t.Errorf("requests = %v, want one from 198.51.100.4", seen)
		}
	})
}

// countingHandler counts the requests that reached it and answers as
// identityEcho does.
type countingHandler struct {
	mu    sync.Mutex
	calls int
}

func (h *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.calls++
	h.mu.Unlock()
	identityEcho.ServeHTTP(w, r)
}

func (h *countingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// TestRequireWhenKeygateFails checks that an Authorize error fails closed,
// and that fail-open lets a request through only when Keygate is
// unreachable (UNAVAILABLE, DEADLINE_EXCEEDED), never on another error.
func TestRequireWhenKeygateFails(t *testing.T) {
	refused := wantResponse{status: 503, errorReason: "authorization_unavailable"}
	passed := wantResponse{status: 200, body: "anonymous"}
	tests := []struct {
		code     codes.Code
		failOpen bool
		want     wantResponse
	}{
		{codes.Unavailable, false, refused},
		{codes.DeadlineExceeded, false, refused},
		{codes.InvalidArgument, false, refused},
		{codes.Unavailable, true, passed},
		{codes.DeadlineExceeded, true, passed},
		{codes.InvalidArgument, true, refused},
		{codes.Internal, true, refused},
		{codes.PermissionDenied, true, refused},
		{codes.Unauthenticated, true, refused},
		{codes.FailedPrecondition, true, refused},
		{codes.Unimplemented, true, refused},
		{codes.Unknown, true, refused},
	}
	for _, tt := range tests {
		name := tt.code.String() + ", fail closed"
		if tt.failOpen {
			name = tt.code.String() + ", fail open"
		}
		t.Run(name, func(t *testing.T) {
			fake := &fakeKeygate{err: status.Error(tt.code, "fake failure")}
			var opts []keygate.AuthorizerOption
			if tt.failOpen {
				opts = append(opts, keygate.WithFailOpen())
			}
			auth := keygate.NewAuthorizer(startFake(t, fake), "live", opts...)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Authorization", "Bearer k")
			rec := httptest.NewRecorder()
			handler := &countingHandler{}
			auth.Require()(handler).ServeHTTP(rec, req)
			checkResponse(t, rec, tt.want)
			if reached, want := handler.count(), tt.want.status == http.StatusOK; (reached == 1) != want || reached > 1 {
				t.Errorf("handler ran %d times, want it to run: %v", reached, want)
			}
		})
	}

	// A fake that answers after the Authorizer's timeout: DEADLINE_EXCEEDED
	// raised by the client itself.
	slow := &slowKeygate{delay: 2 * time.Second}
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("too slow, fail open %v", failOpen), func(t *testing.T) {
			opts := []keygate.AuthorizerOption{keygate.WithTimeout(100 * time.Millisecond)}
			want := refused
			if failOpen {
				opts, want = append(opts, keygate.WithFailOpen()), passed
			}
			auth := keygate.NewAuthorizer(startSlowFake(t, slow), "live", opts...)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Authorization", "Bearer k")
			rec := httptest.NewRecorder()
			auth.Require()(identityEcho).ServeHTTP(rec, req)
			checkResponse(t, rec, want)
		})
	}

	t.Run("own client returning the context error", func(t *testing.T) {
		auth := keygate.NewAuthorizer(contextErrorClient{}, "live", keygate.WithFailOpen())
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Authorization", "Bearer k")
		rec := httptest.NewRecorder()
		auth.Require()(identityEcho).ServeHTTP(rec, req)
		checkResponse(t, rec, passed)
	})
}

// slowKeygate answers Authorize with ALLOW after delay, or when the call ends.
type slowKeygate struct {
	keygatev1.UnimplementedAuthorizationServiceServer
	delay time.Duration
}

func (s *slowKeygate) Authorize(ctx context.Context, _ *keygatev1.AuthorizeRequest) (*keygatev1.AuthorizeResponse, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
	}
	return &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_ALLOW, KeyId: "late"}, nil
}

func startSlowFake(t *testing.T, slow *slowKeygate) *keygate.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	keygatev1.RegisterAuthorizationServiceServer(srv, slow)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	client, err := keygate.NewClient(lis.Addr().String(), keygate.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// contextErrorClient is an AuthorizeClient of one's own that waits for the
// deadline and returns the bare context error, not a gRPC status.
type contextErrorClient struct{}

func (contextErrorClient) Authorize(ctx context.Context, _ *keygatev1.AuthorizeRequest, _ ...grpc.CallOption) (*keygatev1.AuthorizeResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestErrorKeepsDetails checks that a client error exposes the status's
// ErrorInfo and BadRequest details.
func TestErrorKeepsDetails(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, "environment: must name the environment").WithDetails(
		&errdetails.ErrorInfo{Reason: "INVALID_ARGUMENT", Domain: "keygate.dev", Metadata: map[string]string{"k": "v"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "environment", Description: "must name the environment"},
			{Field: "key", Description: "must not be empty"},
		}},
	)
	if err != nil {
		t.Fatal(err)
	}
	client := startFake(t, &fakeKeygate{err: st.Err()})
	_, err = client.Authorize(context.Background(), &keygatev1.AuthorizeRequest{})
	var kerr *keygate.Error
	if !errors.As(err, &kerr) {
		t.Fatalf("error %v (%T), want *keygate.Error", err, err)
	}
	if kerr.Code != codes.InvalidArgument || kerr.Reason != "INVALID_ARGUMENT" || kerr.Domain != keygate.ErrorDomain || kerr.Metadata["k"] != "v" {
		t.Errorf("error = %+v, want INVALID_ARGUMENT with reason INVALID_ARGUMENT in keygate.dev and metadata k=v", kerr)
	}
	if got := keygate.Reason(err); got != "INVALID_ARGUMENT" {
		t.Errorf("Reason(err) = %q", got)
	}
	want := []keygate.FieldViolation{
		{Field: "environment", Description: "must name the environment"},
		{Field: "key", Description: "must not be empty"},
	}
	if !slices.Equal(kerr.FieldViolations, want) {
		t.Errorf("FieldViolations = %v, want %v", kerr.FieldViolations, want)
	}
	if len(status.Convert(err).Details()) != 2 {
		t.Errorf("GRPCStatus lost the details: %v", status.Convert(err).Details())
	}

	// Without details: no reason, no violations.
	plain := startFake(t, &fakeKeygate{err: status.Error(codes.Internal, "boom")})
	_, err = plain.Authorize(context.Background(), &keygatev1.AuthorizeRequest{})
	if !errors.As(err, &kerr) || kerr.Reason != "" || kerr.Domain != "" || kerr.FieldViolations != nil {
		t.Errorf("error = %+v, want one without reason or violations", err)
	}
	if keygate.Reason(errors.New("other")) != "" {
		t.Error(`Reason of a plain error is not ""`)
	}
}

// protectedHealth serves the gRPC health service behind auth's interceptor and
// returns a client of it.
func protectedHealth(t *testing.T, auth *keygate.Authorizer, scopes map[string][]string) healthpb.HealthClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(auth.UnaryServerInterceptor(scopes)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return healthpb.NewHealthClient(conn)
}

const healthCheck = "/grpc.health.v1.Health/Check"

func TestInterceptorMapsDecisions(t *testing.T) {
	limited := deny(keygatev1.DenyReason_DENY_REASON_RATE_LIMITED, "Rate limit exceeded")
	limited.RateLimit = rateLimit(2, 0, 2500*time.Millisecond)
	allow := &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_ALLOW, KeyId: "key_1", RateLimit: rateLimit(10, 9, 0)}

	tests := []struct {
		name       string
		resp       *keygatev1.AuthorizeResponse
		err        error
		noKey      bool
		wantCode   codes.Code
		wantReason string
		wantRetry  time.Duration
		wantLimit  string
	}{
		{name: "allow", resp: allow, wantCode: codes.OK, wantLimit: "10"},
		{name: "no key", noKey: true, wantCode: codes.Unauthenticated, wantReason: "KEY_INVALID"},
		{name: "revoked", resp: deny(keygatev1.DenyReason_DENY_REASON_KEY_REVOKED, "Revoked"), wantCode: codes.Unauthenticated, wantReason: "KEY_REVOKED"},
		{name: "environment mismatch", resp: deny(keygatev1.DenyReason_DENY_REASON_ENVIRONMENT_MISMATCH, "Env"), wantCode: codes.Unauthenticated, wantReason: "ENVIRONMENT_MISMATCH"},
		{name: "scope missing", resp: deny(keygatev1.DenyReason_DENY_REASON_SCOPE_MISSING, "Scope"), wantCode: codes.PermissionDenied, wantReason: "SCOPE_MISSING"},
		{name: "ip not allowed", resp: deny(keygatev1.DenyReason_DENY_REASON_IP_NOT_ALLOWED, "IP"), wantCode: codes.PermissionDenied, wantReason: "IP_NOT_ALLOWED"},
		{name: "rate limited", resp: limited, wantCode: codes.ResourceExhausted, wantReason: "RATE_LIMITED", wantRetry: 3 * time.Second, wantLimit: "2"},
		{name: "keygate error", err: status.Error(codes.Internal, "boom"), wantCode: codes.Unavailable, wantReason: "AUTHORIZATION_UNAVAILABLE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeKeygate{resp: tt.resp, err: tt.err}
			auth := keygate.NewAuthorizer(startFake(t, fake), "live")
			client := protectedHealth(t, auth, map[string][]string{healthCheck: {"health:read"}})
			ctx := context.Background()
			if !tt.noKey {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer kg_live_presented")
			}
			var header metadata.MD
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header))
			st := status.Convert(err)
			if st.Code() != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", st.Code(), err, tt.wantCode)
			}
			if got := strings.Join(header.Get("x-ratelimit-limit"), ","); got != tt.wantLimit {
				t.Errorf("x-ratelimit-limit = %q, want %q", got, tt.wantLimit)
			}
			if tt.wantCode == codes.OK {
				if seen := fake.seen(); len(seen) != 1 || !slices.Equal(seen[0].GetRequiredScopes(), []string{"health:read"}) || seen[0].GetClientIp() != "127.0.0.1" {
					t.Errorf("requests = %v, want one with scopes [health:read] from 127.0.0.1", seen)
				}
				return
			}
			var reason string
			var retry time.Duration
			for _, d := range st.Details() {
				switch d := d.(type) {
				case *errdetails.ErrorInfo:
					reason = d.GetReason()
				case *errdetails.RetryInfo:
					retry = d.GetRetryDelay().AsDuration()
				}
			}
			if reason != tt.wantReason {
				t.Errorf("ErrorInfo reason = %q, want %q", reason, tt.wantReason)
			}
			if retry != tt.wantRetry {
				t.Errorf("RetryInfo delay = %v, want %v", retry, tt.wantRetry)
			}
		})
	}
}

func TestInterceptorFailOpenOnlyWhenUnreachable(t *testing.T) {
	tests := []struct {
		code     codes.Code
		wantCode codes.Code
	}{
		{codes.InvalidArgument, codes.Unavailable},
		{codes.Internal, codes.Unavailable},
		{codes.PermissionDenied, codes.Unavailable},
		{codes.Unavailable, codes.OK},
		{codes.DeadlineExceeded, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			fake := &fakeKeygate{err: status.Error(tt.code, "fake failure")}
			auth := keygate.NewAuthorizer(startFake(t, fake), "live", keygate.WithFailOpen())
			reached := false
			handler := func(ctx context.Context, _ any) (any, error) {
				reached = true
				if _, ok := keygate.IdentityFromContext(ctx); ok {
					t.Error("a failed-open call carries an identity")
				}
				return "ok", nil
			}
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer k"))
			_, err := auth.UnaryServerInterceptor(nil)(ctx, nil, &grpc.UnaryServerInfo{FullMethod: healthCheck}, handler)
			if got := status.Code(err); got != tt.wantCode {
				t.Errorf("code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if reached != (tt.wantCode == codes.OK) {
				t.Errorf("handler reached = %v, want %v", reached, tt.wantCode == codes.OK)
			}
		})
	}
}

func TestInterceptorClientAddress(t *testing.T) {
	tests := []struct {
		name    string
		proxies int
		xff     []string
		want    string
	}{
		{name: "no trusted proxies: peer", xff: []string{"203.0.113.9"}, want: "127.0.0.1"},
		{name: "one proxy: spoofed leftmost ignored", proxies: 1, xff: []string{"6.6.6.6, 203.0.113.9"}, want: "203.0.113.9"},
		{name: "two proxies", proxies: 2, xff: []string{"6.6.6.6, 203.0.113.9", "192.168.1.5"}, want: "203.0.113.9"},
		{name: "two proxies, one entry: peer", proxies: 2, xff: []string{"203.0.113.9"}, want: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeKeygate{resp: &keygatev1.AuthorizeResponse{Decision: keygatev1.Decision_DECISION_ALLOW}}
			auth := keygate.NewAuthorizer(startFake(t, fake), "live", keygate.WithTrustedProxies(tt.proxies))
			client := protectedHealth(t, auth, nil)
			ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer k")
			for _, v := range tt.xff {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-forwarded-for", v)
			}
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
			if seen := fake.seen(); len(seen) != 1 || seen[0].GetClientIp() != tt.want {
				t.Errorf("requests = %v, want one from %s", seen, tt.want)
			}
		})
	}
}

func TestInterceptorPassesIdentity(t *testing.T) {
	fake := &fakeKeygate{resp: &keygatev1.AuthorizeResponse{
		Decision: keygatev1.Decision_DECISION_ALLOW, KeyId: "key_9", OwnerId: "acme", Environment: "live", Scopes: []string{"*"},
		Metadata: map[string]string{"plan": "pro"},
	}}
	auth := keygate.NewAuthorizer(startFake(t, fake), "live")
	var got *keygate.Identity
	handler := func(ctx context.Context, _ any) (any, error) {
		got, _ = keygate.IdentityFromContext(ctx)
		return "ok", nil
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer k"))
	if _, err := auth.UnaryServerInterceptor(nil)(ctx, nil, &grpc.UnaryServerInfo{FullMethod: healthCheck}, handler); err != nil {
		t.Fatal(err)
	}
	want := keygate.Identity{KeyID: "key_9", OwnerID: "acme", Environment: "live", Scopes: []string{"*"}, Metadata: map[string]string{"plan": "pro"}}
	if got == nil || got.KeyID != want.KeyID || got.OwnerID != want.OwnerID || got.Environment != want.Environment || !slices.Equal(got.Scopes, want.Scopes) || !maps.Equal(got.Metadata, want.Metadata) {
		t.Errorf("identity = %+v, want %+v", got, want)
	}
}
