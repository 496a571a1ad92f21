// oidc-verify checks a JWT-SVID the way a relying party that knows only OpenID Connect does, with
// go-oidc (the common Go OIDC client, not our code): given the issuer URL it fetches
// <issuer>/.well-known/openid-configuration, checks that the document names the same issuer,
// fetches the JWKS at its jwks_uri and verifies the token's signature, iss, aud and exp.
//
//	oidc-verify -issuer https://oidc.example.org -audience sts.example -token-file token.jwt [-ca ca.pem]
//
// It prints the verified `sub` and exits 0; on any failure it prints the error to stderr and
// exits 1 (2 for bad usage), so tests can assert both outcomes.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func main() {
	issuer := flag.String("issuer", "", "OIDC issuer URL, exactly as the tokens' iss claim")
	audience := flag.String("audience", "", "audience the token must be issued for")
	token := flag.String("token", "", "the JWT-SVID (or use -token-file)")
	tokenFile := flag.String("token-file", "", "file holding the JWT-SVID, - for stdin")
	caFile := flag.String("ca", "", "PEM CA certificates to trust for HTTPS instead of the system roots")
	timeout := flag.Duration("timeout", 30*time.Second, "limit for discovery, JWKS fetch and verification together")
	flag.Parse()
	if *issuer == "" || *audience == "" || (*token == "") == (*tokenFile == "") {
		fmt.Fprintln(os.Stderr, "usage: oidc-verify -issuer URL -audience AUD (-token JWT | -token-file FILE) [-ca FILE]")
		os.Exit(2)
	}
	sub, err := verify(*issuer, *audience, *token, *tokenFile, *caFile, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(sub)
}

func verify(issuer, audience, token, tokenFile, caFile string, timeout time.Duration) (string, error) {
	if tokenFile != "" {
		raw, err := readTokenFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("token: %w", err)
		}
		token = raw
	}
	client, err := httpClient(caFile)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// go-oidc fetches both the discovery document and the JWKS with the client in the context.
	ctx = oidc.ClientContext(ctx, client)
	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	verified, err := provider.Verifier(&oidc.Config{ClientID: audience}).Verify(ctx, token)
	if err != nil {
		return "", fmt.Errorf("verify: %w", err)
	}
	if verified.Subject == "" {
		return "", errors.New("verify: token has no sub")
	}
	return verified.Subject, nil
}

func readTokenFile(path string) (string, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	return strings.TrimSpace(string(raw)), err
}

// httpClient trusts only caFile's certificates when it is given (a test endpoint's own CA), the
// system roots otherwise (a publicly trusted endpoint, as clouds require).
func httpClient(caFile string) (*http.Client, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: transport}, nil
}
