package keygate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keygate/keygate/sdk/go/keygate"
)

// A real `keygate serve`, built from this repository, shared by the tests
// that need one. It starts on first use and stops in TestMain.
var (
	liveOnce   sync.Once
	liveServer *keygateServer
	liveErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if liveServer != nil {
		if err := liveServer.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping keygate:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// keygateServer is a running `keygate serve` on a free port with a temporary
// SQLite database and a bootstrapped management key.
type keygateServer struct {
	addr     string
	adminKey string
	creds    credentials.TransportCredentials // what waitServing connects with
	cmd      *exec.Cmd
	dir      string
	log      *bytes.Buffer
	exited   chan error
}

// live returns the shared Keygate server, starting it on first use. It
// fails the test, never skips it, when the server cannot be started.
func live(t testing.TB) *keygateServer {
	t.Helper()
	liveOnce.Do(func() { liveServer, liveErr = startKeygate(insecure.NewCredentials()) })
	if liveErr != nil {
		t.Fatalf("starting keygate: %v", liveErr)
	}
	return liveServer
}

// adminClient returns a client of the live server holding the management key.
func adminClient(t testing.TB) *keygate.Client {
	t.Helper()
	srv := live(t)
	client, err := keygate.NewClient(srv.addr, keygate.WithInsecure(), keygate.WithManagementKey(srv.adminKey))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// startKeygate starts `keygate serve` with serveArgs added (such as the TLS
// flags) and waits until its health service, reached with creds, answers
// SERVING.
func startKeygate(creds credentials.TransportCredentials, serveArgs ...string) (*keygateServer, error) {
	bin, err := keygateBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "keygate-go-sdk-")
	if err != nil {
		return nil, err
	}
	dbURL := "sqlite://" + filepath.Join(dir, "kg.db") + "?mode=rwc"

	out, err := exec.Command(bin, "bootstrap", "--owner", "acme", "--database-url", dbURL).Output()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("keygate bootstrap: %w: %s", err, stderrOf(err))
	}
	adminKey := strings.TrimSpace(string(out))
	if !strings.HasPrefix(adminKey, "kg_live_") || strings.ContainsAny(adminKey, " \n") {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("keygate bootstrap printed %q, want one kg_live_ key", out)
	}

	addr, err := freeAddr()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	srv := &keygateServer{addr: addr, adminKey: adminKey, creds: creds, dir: dir, log: &bytes.Buffer{}, exited: make(chan error, 1)}
	args := append([]string{"serve", "--listen", addr, "--database-url", dbURL}, serveArgs...)
	srv.cmd = exec.Command(bin, args...)
	srv.cmd.Stdout = srv.log
	srv.cmd.Stderr = srv.log
	if err := srv.cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	go func() { srv.exited <- srv.cmd.Wait() }()

	if err := srv.waitServing(30 * time.Second); err != nil {
		_ = srv.stop()
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, srv.log)
	}
	return srv, nil
}

// waitServing polls grpc.health.v1.Health/Check for the overall status.
func (s *keygateServer) waitServing(timeout time.Duration) error {
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(s.creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		select {
		case err := <-s.exited:
			s.exited <- err
			return fmt.Errorf("keygate serve exited early: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("keygate at %s not SERVING after %s (last: %v, %v)", s.addr, timeout, resp.GetStatus(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the server with SIGTERM, as an operator would, and removes its
// database.
func (s *keygateServer) stop() error {
	defer os.RemoveAll(s.dir)
	select {
	case err := <-s.exited:
		return fmt.Errorf("keygate serve had exited: %v\n%s", err, s.log)
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-s.exited:
		return nil
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("keygate serve did not stop within 10s of SIGTERM")
	}
}

// keygateBinary finds the server binary: $KEYGATE_BIN, or target/debug/keygate
// at the repository root, built with cargo if it is not there yet.
func keygateBinary() (string, error) {
	if bin := os.Getenv("KEYGATE_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("KEYGATE_BIN: %w", err)
		}
		return bin, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "target", "debug", "keygate")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	build := exec.Command("cargo", "build", "-p", "keygate-server")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("%s is missing and `cargo build -p keygate-server` failed: %w", bin, err)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("`cargo build -p keygate-server` did not produce %s: %w", bin, err)
	}
	return bin, nil
}

// repoRoot walks up from the working directory to the directory holding
// Cargo.toml and proto/.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		_, errCargo := os.Stat(filepath.Join(dir, "Cargo.toml"))
		_, errProto := os.Stat(filepath.Join(dir, "proto"))
		if errCargo == nil && errProto == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (Cargo.toml beside proto/) not found above the working directory")
		}
		dir = parent
	}
}

// freeAddr returns a 127.0.0.1 address with a port that was free just now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func stderrOf(err error) string {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return string(exitErr.Stderr)
	}
	return ""
}
