// workload-fetch is a tiny go-spiffe Workload API client: it connects to SPIFFE_ENDPOINT_SOCKET,
// fetches the default X.509-SVID and a JWT-SVID, checks both against the bundles the same server
// streams, and prints what it got. It never prints a private key or a token.
//
// Output, one line each:
//
//	x509 <spiffe-id> hint=<hint> chain=<n> expires=<RFC3339>
//	jwt <spiffe-id> aud=<audience>
//	ok
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	audience := flag.String("audience", "wimsey-test", "JWT-SVID audience")
	timeout := flag.Duration("timeout", 30*time.Second, "overall deadline")
	flag.Parse()
	if err := run(*audience, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(audience string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	// With no address option the client reads SPIFFE_ENDPOINT_SOCKET, as a workload would.
	client, err := workloadapi.New(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer client.Close()

	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		return fmt.Errorf("fetch X.509-SVID: %w", err)
	}
	x509Bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return fmt.Errorf("fetch X.509 bundles: %w", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509Bundles); err != nil {
		return fmt.Errorf("verify X.509-SVID against the streamed bundle: %w", err)
	}
	fmt.Printf("x509 %s hint=%s chain=%d expires=%s\n", svid.ID, svid.Hint,
		len(svid.Certificates), svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))

	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return fmt.Errorf("fetch JWT-SVID: %w", err)
	}
	jwtBundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("fetch JWT bundles: %w", err)
	}
	if _, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtBundles, []string{audience}); err != nil {
		return fmt.Errorf("validate JWT-SVID offline: %w", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), audience); err != nil {
		return fmt.Errorf("validate JWT-SVID via the Workload API: %w", err)
	}
	fmt.Printf("jwt %s aud=%s\n", jwt.ID, strings.Join(jwt.Audience, ","))
	fmt.Println("ok")
	return nil
}
