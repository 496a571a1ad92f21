// gospiffe-check verifies SVIDs and bundles produced by wimsey with go-spiffe, the reference Go
// SPIFFE library. It is a test tool: it exits 0 when go-spiffe accepts the input and 1 (printing
// go-spiffe's error) when it rejects it, so tests can assert both outcomes.
//
//	gospiffe-check x509 -td example.org -svid svid.pem -key key.pem -bundle bundle.pem
//	gospiffe-check jwt -td example.org -token token.jwt -bundle jwks.json -audience aud
//	gospiffe-check spiffe-bundle -td example.org -bundle bundle.json
package main

import (
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: gospiffe-check x509|jwt|spiffe-bundle [flags]")
	}
	var err error
	switch os.Args[1] {
	case "x509":
		err = checkX509(os.Args[2:])
	case "jwt":
		err = checkJWT(os.Args[2:])
	case "spiffe-bundle":
		err = checkSpiffeBundle(os.Args[2:])
	default:
		fail("unknown command " + os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

// checkX509 parses the SVID with its key (x509svid.Parse enforces the SVID rules on leaf and
// signing certificates) and verifies the chain against the trust domain's bundle.
func checkX509(args []string) error {
	fs := flag.NewFlagSet("x509", flag.ExitOnError)
	tdName := fs.String("td", "", "trust domain of the bundle")
	svidPath := fs.String("svid", "", "PEM chain, leaf first")
	keyPath := fs.String("key", "", "PEM PKCS#8 private key of the leaf")
	bundlePath := fs.String("bundle", "", "PEM X.509 roots")
	_ = fs.Parse(args)
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Load(td, *bundlePath)
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	svid, err := x509svid.Load(*svidPath, *keyPath)
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if id != svid.ID {
		return fmt.Errorf("verified ID %s differs from parsed ID %s", id, svid.ID)
	}
	fmt.Printf("ok x509 %s chains=%d expires=%s\n", id, len(chains), svid.Certificates[0].NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
	return nil
}

func checkJWT(args []string) error {
	fs := flag.NewFlagSet("jwt", flag.ExitOnError)
	tdName := fs.String("td", "", "trust domain of the bundle")
	tokenPath := fs.String("token", "", "file holding the compact JWT-SVID")
	bundlePath := fs.String("bundle", "", "JWKS (JWT bundle) file")
	audience := fs.String("audience", "", "expected audience")
	_ = fs.Parse(args)
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return err
	}
	bundle, err := jwtbundle.Load(td, *bundlePath)
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	token, err := os.ReadFile(*tokenPath)
	if err != nil {
		return err
	}
	svid, err := jwtsvid.ParseAndValidate(strings.TrimSpace(string(token)), bundle, []string{*audience})
	if err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	claims, _ := json.Marshal(svid.Claims)
	fmt.Printf("ok jwt %s aud=%v claims=%s\n", svid.ID, svid.Audience, claims)
	return nil
}

func checkSpiffeBundle(args []string) error {
	fs := flag.NewFlagSet("spiffe-bundle", flag.ExitOnError)
	tdName := fs.String("td", "", "trust domain")
	bundlePath := fs.String("bundle", "", "SPIFFE bundle (JWKS) file")
	_ = fs.Parse(args)
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return err
	}
	bundle, err := spiffebundle.Load(td, *bundlePath)
	if err != nil {
		return err
	}
	var roots []*x509.Certificate = bundle.X509Authorities()
	seq, _ := bundle.SequenceNumber()
	hint, _ := bundle.RefreshHint()
	fmt.Printf("ok spiffe-bundle %s x509=%d jwt=%d sequence=%d refresh_hint=%s\n", td, len(roots), len(bundle.JWTAuthorities()), seq, hint)
	return nil
}
