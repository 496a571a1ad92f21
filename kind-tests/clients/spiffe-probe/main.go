// spiffe-probe is the workload of wimsey's cluster tests and demo: a go-spiffe v2 client that talks
// to the Workload API at SPIFFE_ENDPOINT_SOCKET (on the pod's csi.wimsey.dev volume). It never prints
// a private key or a token. Every line starts with a keyword so tests can parse the output:
//
//	spiffe-probe watch          streams X.509 contexts; per update: x509 <id> serial=<hex> not_after=<RFC3339> at_ms=<unix ms> start_ms=<unix ms>
//	spiffe-probe fetch          one X.509-SVID, verified against the served bundles: x509 <id> serial=<hex> not_after=<RFC3339>
//	spiffe-probe jwt -audience A   a JWT-SVID, validated offline and by ValidateJWTSVID: jwt <id> aud=<A> validated=true
//	spiffe-probe no-header      FetchX509SVID without the workload.spiffe.io header: status code=<gRPC code>
//	spiffe-probe idle           does nothing until the pod stops (a files-mode pod to exec into)
//	spiffe-probe attack NAME    a hostile pod's attack for the attack suite: attack <name> <outcome...> (attacks.go)
//	spiffe-probe watch-bundles  streams the X.509 bundle set, one line per change (federation.go)
//	spiffe-probe bundles        FetchX509Bundles and FetchJWTBundles once: x509-bundles <td>=<n>:<fp>,.. / jwt-bundles <td>=<n>:<kid>,.. (federation.go)
//	spiffe-probe federated-mtls ...   verifies another trust domain's SVID and completes mTLS with it (federation.go)
//	spiffe-probe validate-jwt -audience A -token T   ValidateJWTSVID on a given token: jwt-validated <id> aud=<A> (federation.go)
//
// A failed call prints `error code=<gRPC code> msg=<message>` and exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

var start = time.Now()

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: spiffe-probe watch|fetch|jwt|no-header|idle|attack|watch-bundles|bundles|federated-mtls|validate-jwt [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "attack":
		if err := attack(os.Args[2:]); err != nil {
			fmt.Printf("error code=%s msg=%s\n", status.Code(err), oneLine(err))
			os.Exit(1)
		}
		return
	case "watch-bundles", "federated-mtls", "validate-jwt", "bundles":
		if err := federation(os.Args[1], os.Args[2:]); err != nil {
			fmt.Printf("error code=%s msg=%s\n", status.Code(err), oneLine(err))
			os.Exit(1)
		}
		return
	case "idle":
		// keeps a files-mode pod running so tests can exec into it, until it is told to stop
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		<-stop
		return
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	audience := fs.String("audience", "wimsey-e2e", "JWT-SVID audience (jwt)")
	timeout := fs.Duration("timeout", 20*time.Second, "deadline of a one-shot call")
	_ = fs.Parse(os.Args[2:])

	var err error
	switch os.Args[1] {
	case "watch":
		err = watch()
	case "fetch":
		err = oneShot(*timeout, fetch)
	case "jwt":
		err = oneShot(*timeout, func(ctx context.Context) error { return fetchJWT(ctx, *audience) })
	case "no-header":
		err = oneShot(*timeout, noHeader)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Printf("error code=%s msg=%s\n", status.Code(err), oneLine(err))
		os.Exit(1)
	}
}

func oneShot(timeout time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return f(ctx)
}

func oneLine(err error) string {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return strings.ReplaceAll(s.Message(), "\n", " ")
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

func describe(svid *x509svid.SVID) string {
	leaf := svid.Certificates[0]
	return fmt.Sprintf("x509 %s serial=%s not_after=%s", svid.ID, leaf.SerialNumber.Text(16),
		leaf.NotAfter.UTC().Format(time.RFC3339))
}

// watch runs until the pod stops, printing every X.509 context the server streams, so the pod log
// shows the first SVID (and when it arrived) and every rotation.
type watcher struct{}

func (watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid := c.DefaultSVID()
	if _, _, err := x509svid.Verify(svid.Certificates, c.Bundles); err != nil {
		fmt.Printf("error code=%s msg=verify streamed SVID: %s\n", codes.Unknown, oneLine(err))
		return
	}
	fmt.Printf("%s at_ms=%d start_ms=%d\n", describe(svid), time.Now().UnixMilli(), start.UnixMilli())
}

func (watcher) OnX509ContextWatchError(err error) {
	if status.Code(err) == codes.Canceled {
		return
	}
	fmt.Printf("error code=%s msg=%s\n", status.Code(err), oneLine(err))
}

func watch() error {
	client, err := workloadapi.New(context.Background())
	if err != nil {
		return err
	}
	defer client.Close()
	err = client.WatchX509Context(context.Background(), watcher{})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func fetch(ctx context.Context) error {
	client, err := workloadapi.New(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		return err
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return err
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil {
		return fmt.Errorf("verify against the served bundle: %w", err)
	}
	fmt.Println(describe(svid))
	return nil
}

func fetchJWT(ctx context.Context, audience string) error {
	client, err := workloadapi.New(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return err
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return err
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{audience}); err != nil {
		return fmt.Errorf("validate offline: %w", err)
	}
	validated, err := client.ValidateJWTSVID(ctx, svid.Marshal(), audience)
	if err != nil {
		return err
	}
	if validated.ID != svid.ID {
		return fmt.Errorf("ValidateJWTSVID returned %s for a token of %s", validated.ID, svid.ID)
	}
	fmt.Printf("jwt %s aud=%s validated=true\n", svid.ID, strings.Join(svid.Audience, ","))
	return nil
}

// noHeader calls the Workload API directly, leaving out the security header every conforming client
// sends; the server must answer InvalidArgument.
func noHeader(ctx context.Context) error {
	addr, ok := os.LookupEnv("SPIFFE_ENDPOINT_SOCKET")
	if !ok {
		return errors.New("SPIFFE_ENDPOINT_SOCKET is not set")
	}
	target, err := workloadapi.TargetFromAddress(addr)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if err == nil {
		return errors.New("the server answered a request without the security header")
	}
	fmt.Printf("status code=%s msg=%s\n", status.Code(err), oneLine(err))
	return nil
}
