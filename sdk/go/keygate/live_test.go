package keygate_test

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keygate/keygate/sdk/go/keygate"
	keygatev1 "github.com/keygate/keygate/sdk/go/keygate/v1"
)

// Tests against a real `keygate serve` (see server_test.go).

func createKey(t *testing.T, client *keygate.Client, req *keygatev1.CreateKeyRequest) *keygatev1.CreateKeyResponse {
	t.Helper()
	if req.OwnerId == "" {
		req.OwnerId = "acme"
	}
	if req.Environment == "" {
		req.Environment = "live"
	}
	if req.Name == "" {
		req.Name = t.Name()
	}
	resp, err := client.CreateKey(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return resp
}

func authorize(t *testing.T, client *keygate.Client, key string, scopes ...string) *keygatev1.AuthorizeResponse {
	t.Helper()
	resp, err := client.Authorize(context.Background(), &keygatev1.AuthorizeRequest{
		Key: key, RequiredScopes: scopes, Environment: "live", ClientIp: "127.0.0.1",
	})
	if err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	return resp
}

func TestLiveKeyLifecycle(t *testing.T) {
	ctx := context.Background()
	client := adminClient(t)

	created := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	if !strings.HasPrefix(created.GetSecret(), "kg_live_") {
		t.Fatalf("secret %q does not start with kg_live_", created.GetSecret())
	}
	keyID := created.GetKey().GetKeyId()

	got, err := client.GetKey(ctx, &keygatev1.GetKeyRequest{KeyId: keyID})
	if err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	if got.GetKey().GetStatus() != keygatev1.KeyStatus_KEY_STATUS_ACTIVE || !slices.Equal(got.GetKey().GetScopes(), []string{"dns:read"}) {
		t.Errorf("GetKey = %v, want an active key with scopes [dns:read]", got.GetKey())
	}

	allowed := authorize(t, client, created.GetSecret(), "dns:read")
	if allowed.GetDecision() != keygatev1.Decision_DECISION_ALLOW || allowed.GetKeyId() != keyID || allowed.GetOwnerId() != "acme" {
		t.Fatalf("Authorize = %v, want ALLOW for %s of acme", allowed, keyID)
	}

	rotated, err := client.RotateKey(ctx, &keygatev1.RotateKeyRequest{KeyId: keyID})
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if rotated.GetSecret() == created.GetSecret() || rotated.GetKey().GetKeyId() != keyID {
		t.Fatalf("RotateKey = %v, want a new secret for %s", rotated, keyID)
	}
	if d := authorize(t, client, rotated.GetSecret(), "dns:read").GetDecision(); d != keygatev1.Decision_DECISION_ALLOW {
		t.Errorf("new secret: decision %v, want ALLOW", d)
	}
	if d := authorize(t, client, created.GetSecret(), "dns:read").GetDecision(); d != keygatev1.Decision_DECISION_DENY {
		t.Errorf("old secret after a rotation without grace: decision %v, want DENY", d)
	}

	revoked, err := client.RevokeKey(ctx, &keygatev1.RevokeKeyRequest{KeyId: keyID, Reason: "test over"})
	if err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	if revoked.GetKey().GetStatus() != keygatev1.KeyStatus_KEY_STATUS_REVOKED || revoked.GetKey().GetRevokedReason() != "test over" {
		t.Errorf("RevokeKey = %v, want REVOKED with the reason", revoked.GetKey())
	}
	if r := authorize(t, client, rotated.GetSecret()).GetReason(); r != keygatev1.DenyReason_DENY_REASON_KEY_REVOKED {
		t.Errorf("revoked key: reason %v, want KEY_REVOKED", r)
	}

	_, err = client.RotateKey(ctx, &keygatev1.RotateKeyRequest{KeyId: keyID})
	var kerr *keygate.Error
	if !errors.As(err, &kerr) || kerr.Code != codes.FailedPrecondition || kerr.Reason != "KEY_REVOKED" {
		t.Errorf("RotateKey of a revoked key: %v, want a *keygate.Error with FAILED_PRECONDITION and reason KEY_REVOKED", err)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("status.Code(%v) = %v, want FAILED_PRECONDITION through GRPCStatus", err, status.Code(err))
	}
}

func TestLiveDisableEnableAndExpiry(t *testing.T) {
	ctx := context.Background()
	client := adminClient(t)
	created := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"*"}})
	keyID := created.GetKey().GetKeyId()

	if _, err := client.DisableKey(ctx, &keygatev1.DisableKeyRequest{KeyId: keyID}); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	if r := authorize(t, client, created.GetSecret()).GetReason(); r != keygatev1.DenyReason_DENY_REASON_KEY_DISABLED {
		t.Errorf("disabled: reason %v, want KEY_DISABLED", r)
	}
	if _, err := client.EnableKey(ctx, &keygatev1.EnableKeyRequest{KeyId: keyID}); err != nil {
		t.Fatalf("EnableKey: %v", err)
	}
	if d := authorize(t, client, created.GetSecret()).GetDecision(); d != keygatev1.Decision_DECISION_ALLOW {
		t.Errorf("enabled again: decision %v, want ALLOW", d)
	}

	expiry := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	updated, err := client.UpdateKeyExpiry(ctx, &keygatev1.UpdateKeyExpiryRequest{KeyId: keyID, ExpiresAt: timestamppb.New(expiry)})
	if err != nil {
		t.Fatalf("UpdateKeyExpiry: %v", err)
	}
	if got := updated.GetKey().GetExpiresAt().AsTime(); !got.Equal(expiry) {
		t.Errorf("expires_at = %v, want %v", got, expiry)
	}
}

func TestLiveAllKeysPages(t *testing.T) {
	client := adminClient(t)
	owner := "pager-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var want []string
	for range 5 {
		want = append(want, createKey(t, client, &keygatev1.CreateKeyRequest{OwnerId: owner, Scopes: []string{"dns:read"}}).GetKey().GetKeyId())
	}
	slices.Sort(want)

	var got []string
	for key, err := range client.AllKeys(context.Background(), &keygatev1.ListKeysRequest{OwnerId: owner, PageSize: 2}) {
		if err != nil {
			t.Fatalf("AllKeys: %v", err)
		}
		got = append(got, key.GetKeyId())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("AllKeys = %v, want %v", got, want)
	}
}

func TestLiveErrors(t *testing.T) {
	srv := live(t)
	tests := []struct {
		name       string
		key        string
		call       func(*keygate.Client) error
		wantCode   codes.Code
		wantReason string
		wantFields []string // the fields of the BadRequest violations
	}{
		{"unknown key", srv.adminKey, func(c *keygate.Client) error {
			_, err := c.GetKey(context.Background(), &keygatev1.GetKeyRequest{KeyId: "00000000-0000-7000-8000-000000000000"})
			return err
		}, codes.NotFound, "KEY_NOT_FOUND", nil},
		{"malformed key id", srv.adminKey, func(c *keygate.Client) error {
			_, err := c.GetKey(context.Background(), &keygatev1.GetKeyRequest{KeyId: "not a key id"})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT", []string{"key_id"}},
		{"bad management key", "kg_live_not-a-real-key", func(c *keygate.Client) error {
			_, err := c.ListKeys(context.Background(), &keygatev1.ListKeysRequest{})
			return err
		}, codes.Unauthenticated, "MANAGEMENT_KEY_INVALID", nil},
		{"no management key", "", func(c *keygate.Client) error {
			_, err := c.ListKeys(context.Background(), &keygatev1.ListKeysRequest{})
			return err
		}, codes.Unauthenticated, "MANAGEMENT_KEY_MISSING", nil},
		{"missing environment", srv.adminKey, func(c *keygate.Client) error {
			_, err := c.Authorize(context.Background(), &keygatev1.AuthorizeRequest{Key: "kg_live_x"})
			return err
		}, codes.InvalidArgument, "INVALID_ARGUMENT", []string{"environment"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := []keygate.Option{keygate.WithInsecure()}
			if tt.key != "" {
				opts = append(opts, keygate.WithManagementKey(tt.key))
			}
			client, err := keygate.NewClient(srv.addr, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			err = tt.call(client)
			var kerr *keygate.Error
			if !errors.As(err, &kerr) {
				t.Fatalf("error %v (%T), want *keygate.Error", err, err)
			}
			if kerr.Code != tt.wantCode || keygate.Code(err) != tt.wantCode {
				t.Errorf("code = %v, want %v (%v)", kerr.Code, tt.wantCode, err)
			}
			if kerr.Reason != tt.wantReason || kerr.Domain != keygate.ErrorDomain {
				t.Errorf("reason = %q in %q, want %q in %q", kerr.Reason, kerr.Domain, tt.wantReason, keygate.ErrorDomain)
			}
			var fields []string
			for _, v := range kerr.FieldViolations {
				fields = append(fields, v.Field)
				if v.Description == "" {
					t.Errorf("violation of %s has no description", v.Field)
				}
			}
			if !slices.Equal(fields, tt.wantFields) {
				t.Errorf("field violations = %+v, want fields %v", kerr.FieldViolations, tt.wantFields)
			}
		})
	}
}

// TestLiveEtagMismatch: a change with the key's current etag applies; one
// with an etag read before that change fails with ABORTED / ETAG_MISMATCH and
// changes nothing.
func TestLiveEtagMismatch(t *testing.T) {
	ctx := context.Background()
	client := adminClient(t)
	keyID := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}}).GetKey().GetKeyId()

	got, err := client.GetKey(ctx, &keygatev1.GetKeyRequest{KeyId: keyID})
	if err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	oldEtag := got.GetKey().GetEtag()
	if oldEtag == "" {
		t.Fatalf("GetKey returned no etag: %v", got.GetKey())
	}

	disabled, err := client.DisableKey(ctx, &keygatev1.DisableKeyRequest{KeyId: keyID, Etag: oldEtag})
	if err != nil {
		t.Fatalf("DisableKey with the current etag: %v", err)
	}
	if disabled.GetKey().GetStatus() != keygatev1.KeyStatus_KEY_STATUS_DISABLED {
		t.Fatalf("DisableKey = %v, want DISABLED", disabled.GetKey())
	}
	if e := disabled.GetKey().GetEtag(); e == "" || e == oldEtag {
		t.Errorf("etag after DisableKey = %q, want a new one (was %q)", e, oldEtag)
	}

	_, err = client.EnableKey(ctx, &keygatev1.EnableKeyRequest{KeyId: keyID, Etag: oldEtag})
	var kerr *keygate.Error
	if !errors.As(err, &kerr) || kerr.Code != codes.Aborted || kerr.Reason != "ETAG_MISMATCH" || kerr.Domain != keygate.ErrorDomain {
		t.Fatalf("EnableKey with a stale etag: %v (%+v), want ABORTED with reason ETAG_MISMATCH", err, kerr)
	}

	after, err := client.GetKey(ctx, &keygatev1.GetKeyRequest{KeyId: keyID})
	if err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	if after.GetKey().GetStatus() != keygatev1.KeyStatus_KEY_STATUS_DISABLED {
		t.Errorf("after the refused EnableKey: status %v, want still DISABLED", after.GetKey().GetStatus())
	}
	if after.GetKey().GetEtag() != disabled.GetKey().GetEtag() {
		t.Errorf("etag changed by the refused EnableKey: %q, was %q", after.GetKey().GetEtag(), disabled.GetKey().GetEtag())
	}
}

// TestLiveGetKeyUsage: requests are counted per hour by outcome, and a bad
// range is INVALID_ARGUMENT naming the field.
func TestLiveGetKeyUsage(t *testing.T) {
	ctx := context.Background()
	client := adminClient(t)
	created := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	for range 2 {
		if d := authorize(t, client, created.GetSecret(), "dns:read").GetDecision(); d != keygatev1.Decision_DECISION_ALLOW {
			t.Fatalf("Authorize = %v, want ALLOW", d)
		}
	}
	authorize(t, client, created.GetSecret(), "dns:write")

	usage, err := client.GetKeyUsage(ctx, &keygatev1.GetKeyUsageRequest{KeyId: created.GetKey().GetKeyId()})
	if err != nil {
		t.Fatalf("GetKeyUsage: %v", err)
	}
	if n := len(usage.GetBuckets()); n != 25 {
		t.Errorf("GetKeyUsage returned %d buckets, want 25 (the last 24 hours and the current one)", n)
	}
	var allowed, denied uint64
	for _, b := range usage.GetBuckets() {
		allowed += b.GetAllowed()
		denied += b.GetDeniedOther()
	}
	if allowed != 2 || denied != 1 {
		t.Errorf("GetKeyUsage counted %d allowed, %d denied; want 2 and 1", allowed, denied)
	}

	now := time.Now()
	_, err = client.GetKeyUsage(ctx, &keygatev1.GetKeyUsageRequest{
		KeyId:     created.GetKey().GetKeyId(),
		StartTime: timestamppb.New(now),
		EndTime:   timestamppb.New(now.Add(-time.Hour)),
	})
	var kerr *keygate.Error
	if !errors.As(err, &kerr) || kerr.Code != codes.InvalidArgument || !strings.Contains(kerr.Message, "end_time") {
		t.Fatalf("GetKeyUsage with end before start: %v, want INVALID_ARGUMENT naming end_time", err)
	}
}

// TestLiveMiddlewareDenials runs every deny reason through the HTTP
// middleware, with keys made on the live server.
func TestLiveMiddlewareDenials(t *testing.T) {
	ctx := context.Background()
	client := adminClient(t)
	auth := keygate.NewAuthorizer(client, "live")

	secret := func(req *keygatev1.CreateKeyRequest) string { return createKey(t, client, req).GetSecret() }
	reader := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	revoked := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	if _, err := client.RevokeKey(ctx, &keygatev1.RevokeKeyRequest{KeyId: revoked.GetKey().GetKeyId()}); err != nil {
		t.Fatal(err)
	}
	disabled := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	if _, err := client.DisableKey(ctx, &keygatev1.DisableKeyRequest{KeyId: disabled.GetKey().GetKeyId()}); err != nil {
		t.Fatal(err)
	}
	expiring := secret(&keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}, Expiry: &keygatev1.CreateKeyRequest_Ttl{Ttl: durationpb.New(time.Second)}})
	testEnv := secret(&keygatev1.CreateKeyRequest{Environment: "test", Scopes: []string{"dns:read"}})
	elsewhere := secret(&keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}, IpAllowlist: []string{"10.0.0.0/8"}})
	local := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}, IpAllowlist: []string{"127.0.0.0/8", "::1/128"}})
	limit := uint32(2)
	limited := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}, RateLimitPerHour: &limit})
	time.Sleep(1100 * time.Millisecond) // let the 1 s key expire

	tests := []struct {
		name   string
		header string
		scopes []string
		want   wantResponse
	}{
		{"allowed", "Bearer " + reader.GetSecret(), []string{"dns:read"}, wantResponse{status: 200, body: "acme/" + reader.GetKey().GetKeyId(), rateLimit: true}},
		{"allowed by allowlist", "Bearer " + local.GetSecret(), []string{"dns:read"}, wantResponse{status: 200, body: "acme/" + local.GetKey().GetKeyId(), rateLimit: true}},
		{"missing header", "", []string{"dns:read"}, wantResponse{status: 401, errorReason: "key_invalid"}},
		{"invalid key", "Bearer kg_live_00000000000000000000000000000000000000", nil, wantResponse{status: 401, errorReason: "key_invalid"}},
		{"expired", "Bearer " + expiring, nil, wantResponse{status: 401, errorReason: "key_expired"}},
		{"revoked", "Bearer " + revoked.GetSecret(), nil, wantResponse{status: 401, errorReason: "key_revoked"}},
		{"disabled", "Bearer " + disabled.GetSecret(), nil, wantResponse{status: 401, errorReason: "key_disabled"}},
		{"environment mismatch", "Bearer " + testEnv, nil, wantResponse{status: 401, errorReason: "environment_mismatch"}},
		{"ip not allowed", "Bearer " + elsewhere, nil, wantResponse{status: 403, errorReason: "ip_not_allowed"}},
		{"scope missing", "Bearer " + reader.GetSecret(), []string{"dns:read", "dns:write"}, wantResponse{status: 403, errorReason: "scope_missing", missingScopes: []string{"dns:write"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkResponse(t, serve(auth, tt.header, tt.scopes...), tt.want)
		})
	}

	t.Run("rate limited", func(t *testing.T) {
		for i, want := range []string{"1", "0"} {
			rec := serve(auth, "Bearer "+limited.GetSecret(), "dns:read")
			checkResponse(t, rec, wantResponse{status: 200, body: "acme/" + limited.GetKey().GetKeyId(), rateLimit: true})
			if got := rec.Header().Get("X-RateLimit-Remaining"); got != want {
				t.Errorf("request %d: X-RateLimit-Remaining = %q, want %q", i+1, got, want)
			}
		}
		rec := serve(auth, "Bearer "+limited.GetSecret(), "dns:read")
		retryAfter, _ := strconv.Atoi(rec.Header().Get("Retry-After"))
		checkResponse(t, rec, wantResponse{status: 429, errorReason: "rate_limited", retryAfter: strconv.Itoa(retryAfter), rateLimit: true})
		if retryAfter < 1 || retryAfter > 3600 {
			t.Errorf("Retry-After = %d, want 1..3600 seconds", retryAfter)
		}
		if got := rec.Header().Get("X-RateLimit-Limit"); got != "2" {
			t.Errorf("X-RateLimit-Limit = %q, want 2", got)
		}
		reset, _ := strconv.ParseInt(rec.Header().Get("X-RateLimit-Reset"), 10, 64)
		if now := time.Now().Unix(); reset <= now || reset > now+3601 {
			t.Errorf("X-RateLimit-Reset = %d, want within the next hour of %d", reset, now)
		}
	})
}

// serve sends one GET through auth.Require(scopes...) from 127.0.0.1.
func serve(auth *keygate.Authorizer, header string, scopes ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/zones", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	if header != "" {
		req.Header.Set("Authorization", header)
	}
	rec := httptest.NewRecorder()
	auth.Require(scopes...)(identityEcho).ServeHTTP(rec, req)
	return rec
}

func TestLiveInterceptor(t *testing.T) {
	client := adminClient(t)
	auth := keygate.NewAuthorizer(client, "live")
	health := protectedHealth(t, auth, map[string][]string{healthCheck: {"health:read"}})
	reader := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"health:read"}}).GetSecret()
	other := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}}).GetSecret()

	tests := []struct {
		name string
		key  string
		want codes.Code
	}{
		{"allowed", reader, codes.OK},
		{"no key", "", codes.Unauthenticated},
		{"invalid key", "kg_live_nope", codes.Unauthenticated},
		{"scope missing", other, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.key != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.key)
			}
			_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
			if got := status.Code(err); got != tt.want {
				t.Errorf("code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

// blackhole accepts TCP connections and never answers, like a hung server.
func blackhole(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return lis.Addr().String()
}

// closedAddr returns an address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestUnreachableKeygate(t *testing.T) {
	tests := []struct {
		name     string
		addr     func(*testing.T) string
		failOpen bool
		want     wantResponse
	}{
		{"refused, fail closed", closedAddr, false, wantResponse{status: 503, errorReason: "authorization_unavailable"}},
		{"refused, fail open", closedAddr, true, wantResponse{status: 200, body: "anonymous"}},
		{"hung, fail closed", blackhole, false, wantResponse{status: 503, errorReason: "authorization_unavailable"}},
		{"hung, fail open", blackhole, true, wantResponse{status: 200, body: "anonymous"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, err := keygate.NewClient(tt.addr(t), keygate.WithInsecure())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			opts := []keygate.AuthorizerOption{keygate.WithTimeout(300 * time.Millisecond)}
			if tt.failOpen {
				opts = append(opts, keygate.WithFailOpen())
			}
			auth := keygate.NewAuthorizer(client, "live", opts...)
			start := time.Now()
			rec := serve(auth, "Bearer kg_live_whatever")
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Errorf("took %v, want about the 300ms timeout", elapsed)
			}
			checkResponse(t, rec, tt.want)
		})
	}

	t.Run("interceptor", func(t *testing.T) {
		client, err := keygate.NewClient(closedAddr(t), keygate.WithInsecure())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		health := protectedHealth(t, keygate.NewAuthorizer(client, "live"), nil)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer kg_live_whatever")
		_, err = health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
		if got := status.Code(err); got != codes.Unavailable {
			t.Errorf("code = %v (%v), want UNAVAILABLE", got, err)
		}
	})
}

// TestLiveUpdateDeleteUndeleteAudit: metadata comes back from Authorize;
// UpdateKey changes the masked fields and refuses an unknown path; a deleted
// key stops authorizing, leaves ListKeys (unless ShowDeleted) and refuses
// changes until UndeleteKey; the audit log tells it all, newest first.
func TestLiveUpdateDeleteUndeleteAudit(t *testing.T) {
	ctx := context.Background()
	client := adminClient(t)
	owner := "audit-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	created := createKey(t, client, &keygatev1.CreateKeyRequest{
		OwnerId: owner, Scopes: []string{"dns:read"}, Metadata: map[string]string{"plan": "free", "tenant": "t1"},
	})
	keyID := created.GetKey().GetKeyId()
	if want := map[string]string{"plan": "free", "tenant": "t1"}; !maps.Equal(created.GetKey().GetMetadata(), want) {
		t.Errorf("CreateKey metadata = %v, want %v", created.GetKey().GetMetadata(), want)
	}
	allowed := authorize(t, client, created.GetSecret(), "dns:read")
	if allowed.GetDecision() != keygatev1.Decision_DECISION_ALLOW || allowed.GetMetadata()["plan"] != "free" || allowed.GetMetadata()["tenant"] != "t1" {
		t.Fatalf("Authorize = %v, want ALLOW with the key's metadata", allowed)
	}

	limit := uint32(500)
	updated, err := client.UpdateKey(ctx, &keygatev1.UpdateKeyRequest{
		Key: &keygatev1.ApiKey{
			KeyId: keyID, Scopes: []string{"dns:read", "dns:write"}, RateLimitPerHour: &limit,
			Metadata: map[string]string{"plan": "pro"},
			Name:     "ignored: not in the mask",
		},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"scopes", "rate_limit_per_hour", "metadata"}},
		Etag:       created.GetKey().GetEtag(),
	})
	if err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	key := updated.GetKey()
	if !slices.Equal(key.GetScopes(), []string{"dns:read", "dns:write"}) || key.GetRateLimitPerHour() != 500 ||
		!maps.Equal(key.GetMetadata(), map[string]string{"plan": "pro"}) || key.GetName() != created.GetKey().GetName() {
		t.Errorf("UpdateKey = %v, want scopes [dns:read dns:write], limit 500, metadata {plan: pro} and the old name", key)
	}
	if key.GetEtag() == created.GetKey().GetEtag() {
		t.Errorf("etag unchanged by UpdateKey: %q", key.GetEtag())
	}
	if d := authorize(t, client, created.GetSecret(), "dns:write"); d.GetDecision() != keygatev1.Decision_DECISION_ALLOW || d.GetMetadata()["plan"] != "pro" {
		t.Errorf("Authorize dns:write after UpdateKey = %v, want ALLOW with plan pro", d)
	}

	_, err = client.UpdateKey(ctx, &keygatev1.UpdateKeyRequest{
		Key:        &keygatev1.ApiKey{KeyId: keyID, OwnerId: "someone-else"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"owner_id"}},
	})
	var kerr *keygate.Error
	if !errors.As(err, &kerr) || kerr.Code != codes.InvalidArgument || len(kerr.FieldViolations) != 1 ||
		kerr.FieldViolations[0].Field != "update_mask.paths[0]" || !strings.Contains(kerr.FieldViolations[0].Description, "owner_id") {
		t.Errorf("UpdateKey of owner_id: %v (%+v), want INVALID_ARGUMENT with a violation of update_mask.paths[0] naming owner_id", err, kerr)
	}

	deleted, err := client.DeleteKey(ctx, &keygatev1.DeleteKeyRequest{KeyId: keyID, Etag: key.GetEtag()})
	if err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if dk := deleted.GetKey(); dk.GetStatus() != keygatev1.KeyStatus_KEY_STATUS_DELETED || dk.GetDeleteTime() == nil ||
		!dk.GetPurgeTime().AsTime().After(dk.GetDeleteTime().AsTime()) {
		t.Errorf("DeleteKey = %v, want DELETED with a delete time before the purge time", dk)
	}
	if d := authorize(t, client, created.GetSecret(), "dns:read"); d.GetDecision() != keygatev1.Decision_DECISION_DENY || d.GetReason() != keygatev1.DenyReason_DENY_REASON_KEY_INVALID {
		t.Errorf("Authorize of a deleted key = %v, want DENY with KEY_INVALID", d)
	}
	listed := func(showDeleted bool) []string {
		t.Helper()
		var ids []string
		for k, err := range client.AllKeys(ctx, &keygatev1.ListKeysRequest{OwnerId: owner, ShowDeleted: showDeleted}) {
			if err != nil {
				t.Fatalf("AllKeys: %v", err)
			}
			ids = append(ids, k.GetKeyId())
		}
		return ids
	}
	if ids := listed(false); len(ids) != 0 {
		t.Errorf("ListKeys without ShowDeleted = %v, want no key", ids)
	}
	if ids := listed(true); !slices.Equal(ids, []string{keyID}) {
		t.Errorf("ListKeys with ShowDeleted = %v, want [%s]", ids, keyID)
	}
	_, err = client.DisableKey(ctx, &keygatev1.DisableKeyRequest{KeyId: keyID})
	if keygate.Code(err) != codes.FailedPrecondition || keygate.Reason(err) != "KEY_DELETED" {
		t.Errorf("DisableKey of a deleted key: %v, want FAILED_PRECONDITION with reason KEY_DELETED", err)
	}

	restored, err := client.UndeleteKey(ctx, &keygatev1.UndeleteKeyRequest{KeyId: keyID})
	if err != nil {
		t.Fatalf("UndeleteKey: %v", err)
	}
	if rk := restored.GetKey(); rk.GetStatus() != keygatev1.KeyStatus_KEY_STATUS_ACTIVE || rk.GetDeleteTime() != nil || rk.GetPurgeTime() != nil {
		t.Errorf("UndeleteKey = %v, want ACTIVE without delete and purge times", rk)
	}
	if d := authorize(t, client, created.GetSecret(), "dns:read").GetDecision(); d != keygatev1.Decision_DECISION_ALLOW {
		t.Errorf("Authorize after UndeleteKey: %v, want ALLOW", d)
	}
	_, err = client.UndeleteKey(ctx, &keygatev1.UndeleteKeyRequest{KeyId: keyID})
	if keygate.Code(err) != codes.FailedPrecondition || keygate.Reason(err) != "KEY_NOT_DELETED" {
		t.Errorf("UndeleteKey of a key not deleted: %v, want FAILED_PRECONDITION with reason KEY_NOT_DELETED", err)
	}

	// One event per successful change, newest first, one a page.
	var events []*keygatev1.AuditEvent
	for event, err := range client.AllAuditEvents(ctx, &keygatev1.ListAuditEventsRequest{KeyId: keyID, PageSize: 1}) {
		if err != nil {
			t.Fatalf("AllAuditEvents: %v", err)
		}
		events = append(events, event)
	}
	var methods []string
	for i, event := range events {
		methods = append(methods, event.GetMethod())
		if event.GetKeyId() != keyID || event.GetOwnerId() != owner || event.GetActorOwnerId() != "acme" || event.GetActorKeyId() == "" {
			t.Errorf("event %d = %v, want one of %s of %s, by the acme admin key", i, event, keyID, owner)
		}
		if i > 0 && event.GetTime().AsTime().After(events[i-1].GetTime().AsTime()) {
			t.Errorf("event %d (%s) is newer than event %d (%s)", i, event.GetTime().AsTime(), i-1, events[i-1].GetTime().AsTime())
		}
	}
	if want := []string{"UndeleteKey", "DeleteKey", "UpdateKey", "CreateKey"}; !slices.Equal(methods, want) {
		t.Fatalf("audit methods = %v, want %v", methods, want)
	}
	changes := map[string]*keygatev1.FieldChange{}
	for _, c := range events[2].GetChanges() {
		changes[c.GetField()] = c
	}
	for field, want := range map[string][2]string{
		"rate_limit_per_hour": {"", "500"},
		"metadata.plan":       {"free", "pro"},
		"metadata.tenant":     {"t1", ""},
	} {
		if c := changes[field]; c == nil || c.GetOldValue() != want[0] || c.GetNewValue() != want[1] {
			t.Errorf("UpdateKey change of %s = %v, want %q -> %q", field, c, want[0], want[1])
		}
	}
	if c := changes["scopes"]; c == nil || !strings.Contains(c.GetNewValue(), "dns:write") || strings.Contains(c.GetOldValue(), "dns:write") {
		t.Errorf("UpdateKey change of scopes = %v, want dns:write added", c)
	}
	if _, ok := changes["name"]; ok || len(changes) != 4 {
		t.Errorf("UpdateKey changes = %v, want exactly scopes, rate_limit_per_hour, metadata.plan and metadata.tenant", events[2].GetChanges())
	}
	page, err := client.ListAuditEvents(ctx, &keygatev1.ListAuditEventsRequest{KeyId: keyID, Method: "DeleteKey"})
	if err != nil || len(page.GetEvents()) != 1 || page.GetEvents()[0].GetEventId() != events[1].GetEventId() || page.GetNextPageToken() != "" {
		t.Errorf("ListAuditEvents of DeleteKey = %v, %v; want the one DeleteKey event on one page", page, err)
	}
}

// TestLiveUpdateKeyScopeEscalation: a management key cannot widen a key's
// scopes beyond its own.
func TestLiveUpdateKeyScopeEscalation(t *testing.T) {
	ctx := context.Background()
	admin := adminClient(t)
	writer := createKey(t, admin, &keygatev1.CreateKeyRequest{Scopes: []string{"keys:write", "dns:read"}})
	target := createKey(t, admin, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	client, err := keygate.NewClient(live(t).addr, keygate.WithInsecure(), keygate.WithManagementKey(writer.GetSecret()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_, err = client.UpdateKey(ctx, &keygatev1.UpdateKeyRequest{
		Key:        &keygatev1.ApiKey{KeyId: target.GetKey().GetKeyId(), Scopes: []string{"dns:*"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"scopes"}},
	})
	if keygate.Code(err) != codes.PermissionDenied || keygate.Reason(err) != "SCOPE_ESCALATION" {
		t.Errorf("UpdateKey to dns:* by a dns:read key: %v, want PERMISSION_DENIED with reason SCOPE_ESCALATION", err)
	}
	if _, err := client.UpdateKey(ctx, &keygatev1.UpdateKeyRequest{
		Key:        &keygatev1.ApiKey{KeyId: target.GetKey().GetKeyId(), Name: "renamed"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
	}); err != nil {
		t.Errorf("UpdateKey of the name by the same key: %v", err)
	}
}
