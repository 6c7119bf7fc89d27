package keygate

import (
	"context"
	"net"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// UnaryServerInterceptor returns a gRPC interceptor that does for gRPC what
// [Authorizer.Require] does for HTTP. The key comes from "authorization:
// Bearer <key>" metadata and the client address from the connection's peer,
// or from x-forwarded-for metadata with [WithTrustedProxies].
// scopes maps full method names ("/pkg.Service/Method") to the scopes they
// require; a method absent from it needs a valid key and no particular scope.
//
// Denials become UNAUTHENTICATED (missing or unusable key), PERMISSION_DENIED
// (missing scope, address not allowed) or RESOURCE_EXHAUSTED (rate limited,
// with a google.rpc.RetryInfo detail), each with a google.rpc.ErrorInfo whose
// reason is the deny reason in upper snake case; UNAVAILABLE
// (AUTHORIZATION_UNAVAILABLE) when Keygate cannot decide, unless
// [WithFailOpen] lets the call through because Keygate is unreachable.
// Rate-limit figures are sent as x-ratelimit-* header metadata.
func (a *Authorizer) UnaryServerInterceptor(scopes map[string][]string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var key string
		if values := metadata.ValueFromIncomingContext(ctx, "authorization"); len(values) > 0 {
			key = bearerKey(values[0])
		}
		clientIP := clientAddr(peerIP(ctx), metadata.ValueFromIncomingContext(ctx, "x-forwarded-for"), a.trustedProxies)
		out := a.decide(ctx, key, clientIP, scopes[info.FullMethod])
		if rl := out.resp.GetRateLimit(); rl != nil {
			// An error here means the headers were already sent; the
			// figures are advisory, so the call goes on.
			_ = grpc.SetHeader(ctx, metadata.Pairs(
				"x-ratelimit-limit", strconv.FormatUint(uint64(rl.GetLimit()), 10),
				"x-ratelimit-remaining", strconv.FormatUint(uint64(rl.GetRemaining()), 10),
				"x-ratelimit-reset", strconv.FormatInt(rl.GetResetAt().GetSeconds(), 10),
			))
		}
		if out.denial != nil {
			return nil, denialStatus(out.denial).Err()
		}
		if out.resp != nil {
			ctx = ContextWithIdentity(ctx, identityOf(out.resp))
		}
		return handler(ctx, req)
	}
}

func denialStatus(d *denial) *status.Status {
	var code codes.Code
	switch d.class {
	case unauthenticated:
		code = codes.Unauthenticated
	case forbidden:
		code = codes.PermissionDenied
	case rateLimited:
		code = codes.ResourceExhausted
	case unavailable:
		code = codes.Unavailable
	}
	st := status.New(code, d.message)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: strings.ToUpper(d.reason), Domain: ErrorDomain}}
	if d.class == rateLimited {
		delay := time.Duration(retryAfterSeconds(d.retryAfter)) * time.Second
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	}
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		// Unreachable: the details are plain messages that always marshal.
		return st
	}
	return withDetails
}

// peerIP returns the IP address of the calling peer, or "" if unknown.
func peerIP(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return ""
	}
	return host
}
