package keygate

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is an error answered by Keygate (or by gRPC on the way there). It
// keeps the gRPC status: status.FromError and status.Code see through it.
//
//	var kerr *keygate.Error
//	if errors.As(err, &kerr) && kerr.Code == codes.NotFound { ... }
type Error struct {
	// Code is the gRPC status code, such as codes.NotFound.
	Code codes.Code
	// Message is the status message, such as "key not found".
	Message string
	// Reason is the UPPER_SNAKE reason of a google.rpc.ErrorInfo detail, if
	// the server attached one.
	Reason string

	status *status.Status
}

func (e *Error) Error() string {
	return fmt.Sprintf("keygate: %s: %s", e.Code, e.Message)
}

// GRPCStatus returns the status the error was made from.
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

// wrapError turns an RPC error into an *Error.
func wrapError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		// A context error raised before the call was made, for example.
		st = status.FromContextError(err)
	}
	kerr := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			kerr.Reason = info.GetReason()
			break
		}
	}
	return kerr
}
