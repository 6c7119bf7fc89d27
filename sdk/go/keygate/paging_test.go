package keygate_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keygate/keygate/sdk/go/keygate"
	keygatev1 "github.com/keygate/keygate/sdk/go/keygate/v1"
)

// fakePages is an in-process KeyManagementService whose ListKeys and
// ListAuditEvents serve n items, two a page (page tokens "1", "2", …), and
// fail with failAt's page token, if set. It records the requests it saw.
type fakePages struct {
	keygatev1.UnimplementedKeyManagementServiceServer

	n      int
	failAt string

	mu            sync.Mutex
	keyRequests   []*keygatev1.ListKeysRequest
	auditRequests []*keygatev1.ListAuditEventsRequest
}

// page returns the indexes of the items of the page at token, and the next token.
func (f *fakePages) page(token string) ([]int, string, error) {
	if token != "" && token == f.failAt {
		return nil, "", status.Error(codes.InvalidArgument, "bad page token")
	}
	start := 0
	if token != "" {
		start, _ = strconv.Atoi(token)
		start *= 2
	}
	end := min(start+2, f.n)
	var items []int
	for i := start; i < end; i++ {
		items = append(items, i)
	}
	next := ""
	if end < f.n {
		next = strconv.Itoa(end / 2)
	}
	return items, next, nil
}

func (f *fakePages) ListKeys(_ context.Context, req *keygatev1.ListKeysRequest) (*keygatev1.ListKeysResponse, error) {
	f.mu.Lock()
	f.keyRequests = append(f.keyRequests, req)
	f.mu.Unlock()
	items, next, err := f.page(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &keygatev1.ListKeysResponse{NextPageToken: next}
	for _, i := range items {
		resp.Keys = append(resp.Keys, &keygatev1.ApiKey{KeyId: "k" + strconv.Itoa(i)})
	}
	return resp, nil
}

func (f *fakePages) ListAuditEvents(_ context.Context, req *keygatev1.ListAuditEventsRequest) (*keygatev1.ListAuditEventsResponse, error) {
	f.mu.Lock()
	f.auditRequests = append(f.auditRequests, req)
	f.mu.Unlock()
	items, next, err := f.page(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &keygatev1.ListAuditEventsResponse{NextPageToken: next}
	for _, i := range items {
		resp.Events = append(resp.Events, &keygatev1.AuditEvent{EventId: "e" + strconv.Itoa(i)})
	}
	return resp, nil
}

func (f *fakePages) seen() ([]*keygatev1.ListKeysRequest, []*keygatev1.ListAuditEventsRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.keyRequests), slices.Clone(f.auditRequests)
}

func startFakePages(t *testing.T, fake *fakePages) *keygate.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	keygatev1.RegisterKeyManagementServiceServer(srv, fake)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	client, err := keygate.NewClient(lis.Addr().String(), keygate.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// collect runs seq to its end, returning the ids it yielded and its error.
func collect[T comparable](t *testing.T, seq func(func(T, error) bool), id func(T) string) ([]string, error) {
	t.Helper()
	var ids []string
	for item, err := range seq {
		if err != nil {
			var zero T
			if item != zero {
				t.Errorf("error %v yielded with item %v, want a nil item", err, item)
			}
			return ids, err
		}
		ids = append(ids, id(item))
	}
	return ids, nil
}

// TestAllAuditEventsPages: every page is fetched with every field of the
// filter (the filter itself left alone), from the filter's page token on.
func TestAllAuditEventsPages(t *testing.T) {
	fake := &fakePages{n: 5}
	client := startFakePages(t, fake)
	start := timestamppb.New(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	filter := &keygatev1.ListAuditEventsRequest{
		KeyId: "k1", OwnerId: "acme", ActorKeyId: "admin", Method: "UpdateKey",
		StartTime: start, EndTime: timestamppb.New(start.AsTime().Add(time.Hour)), PageSize: 2,
	}
	original := proto.Clone(filter)

	ids, err := collect(t, client.AllAuditEvents(context.Background(), filter), (*keygatev1.AuditEvent).GetEventId)
	if err != nil {
		t.Fatalf("AllAuditEvents: %v", err)
	}
	if want := []string{"e0", "e1", "e2", "e3", "e4"}; !slices.Equal(ids, want) {
		t.Errorf("AllAuditEvents = %v, want %v", ids, want)
	}
	if !proto.Equal(filter, original) {
		t.Errorf("filter modified: %v, was %v", filter, original)
	}
	_, seen := fake.seen()
	var tokens []string
	for _, req := range seen {
		tokens = append(tokens, req.GetPageToken())
		withoutToken := proto.Clone(req).(*keygatev1.ListAuditEventsRequest)
		withoutToken.PageToken = ""
		if !proto.Equal(withoutToken, filter) {
			t.Errorf("request %v does not carry the filter %v", req, filter)
		}
	}
	if want := []string{"", "1", "2"}; !slices.Equal(tokens, want) {
		t.Errorf("page tokens sent = %q, want %q", tokens, want)
	}

	// From the filter's page token on; a nil filter is an empty request.
	ids, _ = collect(t, client.AllAuditEvents(context.Background(), &keygatev1.ListAuditEventsRequest{PageToken: "2"}), (*keygatev1.AuditEvent).GetEventId)
	if want := []string{"e4"}; !slices.Equal(ids, want) {
		t.Errorf("AllAuditEvents from page 2 = %v, want %v", ids, want)
	}
	ids, _ = collect(t, client.AllAuditEvents(context.Background(), nil), (*keygatev1.AuditEvent).GetEventId)
	if len(ids) != 5 {
		t.Errorf("AllAuditEvents(nil) = %v, want 5 events", ids)
	}
}

// TestAllAuditEventsStops: breaking out fetches no further page; an error
// ends the iteration as a *keygate.Error with a nil event.
func TestAllAuditEventsStops(t *testing.T) {
	fake := &fakePages{n: 6, failAt: "2"}
	client := startFakePages(t, fake)

	for event := range client.AllAuditEvents(context.Background(), &keygatev1.ListAuditEventsRequest{}) {
		if event.GetEventId() == "e0" {
			break
		}
	}
	if _, seen := fake.seen(); len(seen) != 1 {
		t.Errorf("breaking out on the first event made %d calls, want 1", len(seen))
	}

	ids, err := collect(t, client.AllAuditEvents(context.Background(), &keygatev1.ListAuditEventsRequest{}), (*keygatev1.AuditEvent).GetEventId)
	if want := []string{"e0", "e1", "e2", "e3"}; !slices.Equal(ids, want) {
		t.Errorf("events before the error = %v, want %v", ids, want)
	}
	var kerr *keygate.Error
	if !errors.As(err, &kerr) || kerr.Code != codes.InvalidArgument {
		t.Errorf("error = %v (%T), want a *keygate.Error with INVALID_ARGUMENT", err, err)
	}
}

// TestAllKeysKeepsEveryFilter: AllKeys sends every field of its filter on
// every page, ShowDeleted and the time filters included.
func TestAllKeysKeepsEveryFilter(t *testing.T) {
	fake := &fakePages{n: 3}
	client := startFakePages(t, fake)
	filter := &keygatev1.ListKeysRequest{
		OwnerId: "acme", Environment: "live", Status: keygatev1.KeyStatus_KEY_STATUS_DELETED, PageSize: 2,
		LastUsedBefore: timestamppb.Now(), ExpiresBefore: timestamppb.Now(), ShowDeleted: true,
	}
	ids, err := collect(t, client.AllKeys(context.Background(), filter), (*keygatev1.ApiKey).GetKeyId)
	if err != nil || !slices.Equal(ids, []string{"k0", "k1", "k2"}) {
		t.Fatalf("AllKeys = %v, %v; want [k0 k1 k2]", ids, err)
	}
	seen, _ := fake.seen()
	if len(seen) != 2 {
		t.Fatalf("AllKeys made %d calls, want 2", len(seen))
	}
	for _, req := range seen {
		withoutToken := proto.Clone(req).(*keygatev1.ListKeysRequest)
		withoutToken.PageToken = ""
		if !proto.Equal(withoutToken, filter) {
			t.Errorf("request %v does not carry the filter %v", req, filter)
		}
	}
}
