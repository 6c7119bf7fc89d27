package keygate

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of Keygate's errors, and of
// those the [Authorizer]'s gRPC interceptor returns.
const ErrorDomain = "keygate.dev"

// Error is an error answered by Keygate (or by gRPC on the way there). It
// keeps the gRPC status: status.FromError and status.Code see through it.
// Branch on Reason rather than on Message:
//
//	var kerr *keygate.Error
//	if errors.As(err, &kerr) && kerr.Reason == "ETAG_MISMATCH" { ... }
type Error struct {
	// Code is the gRPC status code, such as codes.NotFound.
	Code codes.Code
	// Message is the status message, such as "key not found".
	Message string
	// Reason is the UPPER_SNAKE reason of the google.rpc.ErrorInfo detail,
	// such as "KEY_NOT_FOUND", "ETAG_MISMATCH" or "KEY_REVOKED"; "" when the
	// status carries none (an error raised by gRPC itself, for example).
	Reason string
	// Domain is the ErrorInfo domain, [ErrorDomain] for Keygate's errors.
	Domain string
	// Metadata is the ErrorInfo metadata, if any.
	Metadata map[string]string
	// FieldViolations lists the bad fields of an INVALID_ARGUMENT, from its
	// google.rpc.BadRequest detail.
	FieldViolations []FieldViolation

	status *status.Status
}

// FieldViolation names one bad field of a request and says what is wrong.
type FieldViolation struct {
	// Field is the field's path, such as "key_id".
	Field string
	// Description says what is wrong with it.
	Description string
}

func (e *Error) Error() string {
	return fmt.Sprintf("keygate: %s: %s", e.Code, e.Message)
}

// GRPCStatus returns the status the error was made from, details included.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Code returns the gRPC status code of err: its Code if err is or wraps an
// *Error or a gRPC status, codes.OK for nil and codes.Unknown otherwise.
func Code(err error) codes.Code {
	var kerr *Error
	if errors.As(err, &kerr) {
		return kerr.Code
	}
	return status.Code(err)
}

// Reason returns the ErrorInfo reason of err if it is or wraps an *Error,
// and "" otherwise.
func Reason(err error) string {
	var kerr *Error
	if errors.As(err, &kerr) {
		return kerr.Reason
	}
	return ""
}

// wrapError turns an RPC error into an *Error.
func wrapError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		// A context error raised before the call was made, for example.
		st = status.FromContextError(err)
	}
	kerr := &Error{Code: st.Code(), Message: st.Message(), status: st}
	infoSeen := false
	for _, detail := range st.Details() {
		switch detail := detail.(type) {
		case *errdetails.ErrorInfo:
			if !infoSeen {
				infoSeen = true
				kerr.Reason = detail.GetReason()
				kerr.Domain = detail.GetDomain()
				kerr.Metadata = detail.GetMetadata()
			}
		case *errdetails.BadRequest:
			for _, v := range detail.GetFieldViolations() {
				kerr.FieldViolations = append(kerr.FieldViolations, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return kerr
}
