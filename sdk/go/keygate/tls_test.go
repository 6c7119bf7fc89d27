package keygate_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/keygate/keygate/sdk/go/keygate"
	keygatev1 "github.com/keygate/keygate/sdk/go/keygate/v1"
)

// testCA is a certificate authority made at test time.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keygate test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// writeCert writes the CA's certificate to dir/name.pem and returns its path.
func (ca *testCA) writeCert(t *testing.T, dir, name string) string {
	t.Helper()
	return writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", ca.cert.Raw)
}

// issue signs a certificate for commonName with the extended key usage,
// valid for localhost and 127.0.0.1, and writes it and its PKCS#8 key to
// dir/name.pem and dir/name.key.
func (ca *testCA) issue(t *testing.T, dir, name, commonName string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der),
		writePEM(t, filepath.Join(dir, name+".key"), "PRIVATE KEY", keyDER)
}

func writePEM(t *testing.T, path, blockType string, der []byte) string {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLiveMutualTLS runs a `keygate serve` that requires client certificates
// and connects to it with WithTLSFiles; clients without a certificate, or
// without TLS, are refused.
func TestLiveMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := ca.writeCert(t, dir, "ca")
	serverCert, serverKey := ca.issue(t, dir, "server", "localhost", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, dir, "client", "keygate-sdk-test", x509.ExtKeyUsageClientAuth)

	// The health check that waits for the server uses the same files.
	pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	waitCreds := credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})

	srv, err := startKeygate(waitCreds, "--tls-cert", serverCert, "--tls-key", serverKey, "--tls-client-ca", caFile)
	if err != nil {
		t.Fatalf("starting keygate with mutual TLS: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.stop(); err != nil {
			t.Errorf("stopping keygate: %v", err)
		}
	})

	newClient := func(opts ...keygate.Option) *keygate.Client {
		t.Helper()
		client, err := keygate.NewClient(srv.addr, append(opts, keygate.WithManagementKey(srv.adminKey))...)
		if err != nil {
			t.Fatalf("NewClient: %v", err)
		}
		t.Cleanup(func() { _ = client.Close() })
		return client
	}

	client := newClient(keygate.WithTLSFiles(caFile, clientCert, clientKey))
	created := createKey(t, client, &keygatev1.CreateKeyRequest{Scopes: []string{"dns:read"}})
	allowed := authorize(t, client, created.GetSecret(), "dns:read")
	if allowed.GetDecision() != keygatev1.Decision_DECISION_ALLOW || allowed.GetKeyId() != created.GetKey().GetKeyId() {
		t.Fatalf("Authorize over mutual TLS = %v, want ALLOW for %s", allowed, created.GetKey().GetKeyId())
	}

	refused := map[string]*keygate.Client{
		"TLS without a client certificate": newClient(keygate.WithTLSFiles(caFile, "", "")),
		"plaintext":                        newClient(keygate.WithInsecure()),
	}
	for name, client := range refused {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := client.ListKeys(ctx, &keygatev1.ListKeysRequest{OwnerId: "acme"})
		cancel()
		if code := keygate.Code(err); code != codes.Unavailable {
			t.Errorf("%s: ListKeys error = %v (code %v), want Unavailable", name, err, code)
		}
	}
}

// TestWithTLSFilesErrors checks that NewClient reports unusable files by name.
func TestWithTLSFilesErrors(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	caFile := ca.writeCert(t, dir, "ca")
	certFile, keyFile := ca.issue(t, dir, "client", "client", x509.ExtKeyUsageClientAuth)
	otherCert, _ := ca.issue(t, dir, "other", "other", x509.ExtKeyUsageClientAuth)
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name string
		opts []keygate.Option
		want string
	}{
		{"missing CA file", []keygate.Option{keygate.WithTLSFiles(missing, "", "")}, missing},
		{"CA file without a certificate", []keygate.Option{keygate.WithTLSFiles(keyFile, "", "")}, keyFile + " holds no PEM certificate"},
		{"missing client certificate", []keygate.Option{keygate.WithTLSFiles(caFile, missing, keyFile)}, missing},
		{"missing client key", []keygate.Option{keygate.WithTLSFiles(caFile, certFile, missing)}, missing},
		{"key of another certificate", []keygate.Option{keygate.WithTLSFiles(caFile, otherCert, keyFile)}, otherCert},
		{"certificate without key", []keygate.Option{keygate.WithTLSFiles(caFile, certFile, "")}, "both a client certificate file and its key file"},
		{"with WithInsecure", []keygate.Option{keygate.WithTLSFiles(caFile, "", ""), keygate.WithInsecure()}, "WithTLSFiles excludes"},
		{"with WithTLSConfig", []keygate.Option{keygate.WithTLSConfig(&tls.Config{}), keygate.WithTLSFiles(caFile, "", "")}, "WithTLSFiles excludes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, err := keygate.NewClient("localhost:50051", tc.opts...)
			if err == nil {
				_ = client.Close()
				t.Fatalf("NewClient succeeded, want an error mentioning %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewClient error = %q, want it to mention %q", err, tc.want)
			}
		})
	}

	client, err := keygate.NewClient("localhost:50051", keygate.WithTLSFiles(caFile, certFile, keyFile))
	if err != nil {
		t.Fatalf("NewClient with usable files: %v", err)
	}
	_ = client.Close()
}
