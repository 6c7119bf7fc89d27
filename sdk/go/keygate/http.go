package keygate

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Require returns net/http middleware that lets a request through only if
// its "Authorization: Bearer <key>" header holds a key Keygate allows with
// all of scopes (none: any valid key). Allowed requests carry an [Identity]
// in their context.
//
// Denied requests are answered with a JSON body {"error": "<reason>",
// "message": "..."} ("missing_scopes" added for scope_missing): 401 with
// WWW-Authenticate for a missing, invalid, expired, revoked or disabled key
// or one of another environment; 403 for a missing scope or a client address
// outside the key's allowlist; 429 with Retry-After when rate limited; 503
// (authorization_unavailable) when Keygate cannot decide. X-RateLimit-Limit,
// -Remaining and -Reset are set whenever Keygate returned rate-limit figures.
func (a *Authorizer) Require(scopes ...string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			out := a.decide(r.Context(), bearerKey(r.Header.Get("Authorization")), a.httpClientIP(r), scopes)
			if rl := out.resp.GetRateLimit(); rl != nil {
				h := w.Header()
				h.Set("X-RateLimit-Limit", strconv.FormatUint(uint64(rl.GetLimit()), 10))
				h.Set("X-RateLimit-Remaining", strconv.FormatUint(uint64(rl.GetRemaining()), 10))
				h.Set("X-RateLimit-Reset", strconv.FormatInt(rl.GetResetAt().GetSeconds(), 10))
			}
			if out.denial != nil {
				writeDenial(w, out.denial)
				return
			}
			if out.resp != nil {
				r = r.WithContext(ContextWithIdentity(r.Context(), identityOf(out.resp)))
			}
			next.ServeHTTP(w, r)
		})
	}
}

// errorBody is the JSON body of a refused request.
type errorBody struct {
	Error         string   `json:"error"`
	Message       string   `json:"message"`
	MissingScopes []string `json:"missing_scopes,omitempty"`
}

func writeDenial(w http.ResponseWriter, d *denial) {
	h := w.Header()
	var code int
	switch d.class {
	case unauthenticated:
		code = http.StatusUnauthorized
		h.Set("WWW-Authenticate", `Bearer`)
	case forbidden:
		code = http.StatusForbidden
	case rateLimited:
		code = http.StatusTooManyRequests
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(d.retryAfter), 10))
	case unavailable:
		code = http.StatusServiceUnavailable
	}
	body, err := json.Marshal(errorBody{Error: d.reason, Message: d.message, MissingScopes: d.missingScopes})
	if err != nil {
		// Unreachable: the body is strings only.
		http.Error(w, d.reason, code)
		return
	}
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

// bearerKey returns the credentials of an "Authorization: Bearer <key>"
// header value, or "" when it is missing or uses another scheme.
func bearerKey(header string) string {
	scheme, key, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(key)
}
