// Federation subcommands for the federation e2e suite (kind-tests/tests/federation.rs). They only
// talk to the pod's own Workload API socket and to 127.0.0.1 inside the pod; they print no key.
//
//	spiffe-probe watch-bundles
//	    streams X.509 contexts and prints one line whenever the set of X.509 bundles changes:
//	    x509bundles at_ms=<unix ms> <td>=<n>:<fp>,<fp>... <td>=...   (trust domains sorted; <fp> is
//	    the first 16 hex digits of an authority's SHA-256 over its DER, in bundle order)
//	spiffe-probe federated-mtls -svid F -key F -peer-bundle TD=F [-peer-bundle TD=F ...] -peer-id ID
//	    loads a peer's X509-SVID (e.g. minted by a SPIRE Server of another trust domain) and the
//	    bundles the peer trusts, verifies the SVID against the pod's Workload API bundles, then runs
//	    a TLS server with it on 127.0.0.1 and completes a mutual TLS handshake with it as a client
//	    using the pod's X509Source (tlsconfig.MTLSClientConfig, AuthorizeID(peer-id)); the server
//	    authorizes any client its bundles verify and reports the client's ID. Prints
//	    verify <peer id> ok authority=<fp>
//	    mtls ok client=<our id> server=<peer id> server_saw=<our id> version=<TLS version>
//	spiffe-probe validate-jwt -audience A (-token T | -token-file F)
//	    validates a JWT-SVID (e.g. minted by a SPIRE Server of another trust domain) through the
//	    Workload API's ValidateJWTSVID (workloadapi.ValidateJWTSVID), so against the JWT bundle the
//	    pod is served for the token's trust domain. Prints
//	    jwt-validated <spiffe id> aud=<audiences>
//	    and never the token.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// federation runs the federation subcommand `name` with `args`.
func federation(name string, args []string) error {
	switch name {
	case "watch-bundles":
		return watchBundles()
	case "federated-mtls":
		return federatedMTLS(args)
	case "validate-jwt":
		return validateJWT(args)
	case "bundles":
		return fetchBundles()
	}
	return fmt.Errorf("unknown federation command %q", name)
}

func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])[:16]
}

// summarizeBundles renders a bundle set as `<td>=<n>:<fp>,<fp> ...`, trust domains sorted.
func summarizeBundles(set *x509bundle.Set) string {
	items := map[string][]string{}
	for _, b := range set.Bundles() {
		fps := make([]string, 0, len(b.X509Authorities()))
		for _, a := range b.X509Authorities() {
			fps = append(fps, fingerprint(a))
		}
		items[b.TrustDomain().Name()] = fps
	}
	return summarize(items)
}

// summarize renders trust domain -> items as `<td>=<n>:<a>,<b> ...`, trust domains sorted.
func summarize(items map[string][]string) string {
	tds := make([]string, 0, len(items))
	for td := range items {
		tds = append(tds, td)
	}
	sort.Strings(tds)
	parts := make([]string, 0, len(tds))
	for _, td := range tds {
		parts = append(parts, fmt.Sprintf("%s=%d:%s", td, len(items[td]), strings.Join(items[td], ",")))
	}
	return strings.Join(parts, " ")
}

// fetchBundles asks the two bundle RPCs once each (FetchX509Bundles, FetchJWTBundles) and prints
// `x509-bundles <td>=<n>:<fp>,<fp> ...` and `jwt-bundles <td>=<n>:<kid>,<kid> ...`.
func fetchBundles() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	x509Bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("x509-bundles %s\n", summarizeBundles(x509Bundles))
	jwtBundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return err
	}
	kids := map[string][]string{}
	for _, b := range jwtBundles.Bundles() {
		ids := make([]string, 0, len(b.JWTAuthorities()))
		for kid := range b.JWTAuthorities() {
			ids = append(ids, kid)
		}
		sort.Strings(ids)
		kids[b.TrustDomain().Name()] = ids
	}
	fmt.Printf("jwt-bundles %s\n", summarize(kids))
	return nil
}

type bundleWatcher struct{ last string }

func (w *bundleWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	summary := summarizeBundles(c.Bundles)
	if summary == w.last {
		return
	}
	w.last = summary
	fmt.Printf("x509bundles at_ms=%d %s\n", time.Now().UnixMilli(), summary)
}

func (w *bundleWatcher) OnX509ContextWatchError(err error) {
	if status.Code(err) == codes.Canceled {
		return
	}
	fmt.Printf("error code=%s msg=%s\n", status.Code(err), oneLine(err))
}

func watchBundles() error {
	client, err := workloadapi.New(context.Background())
	if err != nil {
		return err
	}
	defer client.Close()
	err = client.WatchX509Context(context.Background(), &bundleWatcher{})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// bundleFlags collects repeated `-peer-bundle td=path` flags.
type bundleFlags []string

func (b *bundleFlags) String() string     { return strings.Join(*b, ",") }
func (b *bundleFlags) Set(v string) error { *b = append(*b, v); return nil }

func federatedMTLS(args []string) error {
	fs := flag.NewFlagSet("federated-mtls", flag.ExitOnError)
	svidFile := fs.String("svid", "", "the peer's X509-SVID chain (PEM)")
	keyFile := fs.String("key", "", "the peer's private key (PEM, PKCS#8)")
	peerID := fs.String("peer-id", "", "the SPIFFE ID the client authorizes")
	timeout := fs.Duration("timeout", 20*time.Second, "deadline of the whole exchange")
	var peerBundles bundleFlags
	fs.Var(&peerBundles, "peer-bundle", "td=path: an X.509 bundle (PEM) the peer (server) trusts; repeatable")
	_ = fs.Parse(args)
	if *svidFile == "" || *keyFile == "" || *peerID == "" || len(peerBundles) == 0 {
		return errors.New("federated-mtls needs -svid, -key, -peer-id and at least one -peer-bundle")
	}
	want, err := spiffeid.FromString(*peerID)
	if err != nil {
		return fmt.Errorf("-peer-id: %w", err)
	}
	peer, err := x509svid.Load(*svidFile, *keyFile)
	if err != nil {
		return fmt.Errorf("loading the peer SVID: %w", err)
	}
	serverTrust := x509bundle.NewSet()
	for _, spec := range peerBundles {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			return fmt.Errorf("-peer-bundle %q: want td=path", spec)
		}
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return fmt.Errorf("-peer-bundle %q: %w", spec, err)
		}
		b, err := x509bundle.Load(td, path)
		if err != nil {
			return fmt.Errorf("-peer-bundle %q: %w", spec, err)
		}
		serverTrust.Add(b)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return err
	}
	defer source.Close()
	own, err := source.GetX509SVID()
	if err != nil {
		return err
	}

	// The peer's SVID against the bundles the Workload API serves this pod.
	id, chains, err := x509svid.Verify(peer.Certificates, source)
	if err != nil {
		return fmt.Errorf("verify the peer SVID against the Workload API bundles: %w", err)
	}
	chain := chains[0]
	fmt.Printf("verify %s ok authority=%s\n", id, fingerprint(chain[len(chain)-1]))

	// The peer: a TLS server presenting its SVID, requiring a client SVID its own bundles verify.
	serverConfig := tlsconfig.MTLSServerConfig(peer, serverTrust, tlsconfig.AuthorizeAny())
	listener, err := tls.Listen("tcp", "127.0.0.1:0", serverConfig)
	if err != nil {
		return err
	}
	defer listener.Close()
	type served struct {
		client spiffeid.ID
		err    error
	}
	result := make(chan served, 1)
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			result <- served{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(*timeout))
		tlsConn := conn.(*tls.Conn)
		if err := tlsConn.Handshake(); err != nil {
			result <- served{err: fmt.Errorf("server handshake: %w", err)}
			return
		}
		client, err := spiffetls.PeerIDFromConnectionState(tlsConn.ConnectionState())
		if err != nil {
			result <- served{err: err}
			return
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || line != "ping\n" {
			result <- served{err: fmt.Errorf("server read %q: %v", line, err)}
			return
		}
		if _, err := fmt.Fprintf(conn, "pong %s\n", client); err != nil {
			result <- served{err: err}
			return
		}
		result <- served{client: client}
	}()

	// The client: this pod's identity and bundles from the Workload API.
	clientConfig := tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(want))
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: *timeout}, Config: clientConfig}
	conn, err := dialer.DialContext(ctx, "tcp", listener.Addr().String())
	if err != nil {
		// The server's side of a failed handshake says more when the client's error is generic.
		select {
		case s := <-result:
			if s.err != nil {
				return fmt.Errorf("client handshake: %w (server: %v)", err, s.err)
			}
		case <-time.After(time.Second):
		}
		return fmt.Errorf("client handshake: %w", err)
	}
	defer conn.Close()
	tlsConn := conn.(*tls.Conn)
	server, err := spiffetls.PeerIDFromConnectionState(tlsConn.ConnectionState())
	if err != nil {
		return err
	}
	if _, err := fmt.Fprint(conn, "ping\n"); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("client read: %w", err)
	}
	s := <-result
	if s.err != nil {
		return s.err
	}
	if reply != fmt.Sprintf("pong %s\n", own.ID) {
		return fmt.Errorf("server answered %q", reply)
	}
	fmt.Printf("mtls ok client=%s server=%s server_saw=%s version=%s\n", own.ID, server, s.client,
		tls.VersionName(tlsConn.ConnectionState().Version))
	return nil
}

func validateJWT(args []string) error {
	fs := flag.NewFlagSet("validate-jwt", flag.ExitOnError)
	audience := fs.String("audience", "", "the audience the token must carry")
	token := fs.String("token", "", "the JWT-SVID (compact JWS)")
	tokenFile := fs.String("token-file", "", "a file holding the JWT-SVID")
	timeout := fs.Duration("timeout", 20*time.Second, "deadline of the call")
	_ = fs.Parse(args)
	if *audience == "" || (*token == "") == (*tokenFile == "") {
		return errors.New("validate-jwt needs -audience and one of -token, -token-file")
	}
	if *tokenFile != "" {
		raw, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("-token-file: %w", err)
		}
		*token = strings.TrimSpace(string(raw))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	svid, err := workloadapi.ValidateJWTSVID(ctx, *token, *audience)
	if err != nil {
		return err
	}
	fmt.Printf("jwt-validated %s aud=%s\n", svid.ID, strings.Join(svid.Audience, ","))
	return nil
}
