// Attacks a hostile pod can make on its own Workload API socket and on the node API, for the attack
// suite (kind-tests/tests/attacks.rs). Each prints one `attack <name> ...` line that the test parses;
// none of them prints a key or a token. They only ever talk to the pod's own socket or to an address
// the test passes in (a ClusterIP on this machine).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// attack runs `spiffe-probe attack <name> [flags]`.
func attack(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: spiffe-probe attack hpack-bomb|h2-garbage|stream-flood|huge-audience|node-api|plant-symlink [flags]")
	}
	fs := flag.NewFlagSet("attack "+args[0], flag.ExitOnError)
	n := fs.Int("n", 20, "connections (hpack-bomb) or streams per connection (stream-flood)")
	conns := fs.Int("conns", 4, "connections (stream-flood)")
	size := fs.Int("size", 1<<20, "total audience bytes (huge-audience)")
	count := fs.Int("count", 1, "number of audiences (huge-audience)")
	addr := fs.String("addr", "", "host:port of the node API (node-api)")
	dir := fs.String("dir", "/var/run/spiffe", "files-mode volume (node-api, plant-symlink)")
	_ = fs.Parse(args[1:])

	switch args[0] {
	case "hpack-bomb":
		return hpackBomb(*n)
	case "h2-garbage":
		return h2Garbage()
	case "stream-flood":
		return streamFlood(*conns, *n)
	case "huge-audience":
		return hugeAudience(*size, *count)
	case "node-api":
		return nodeAPIWithWorkloadSVID(*addr, *dir)
	case "plant-symlink":
		return plantSymlink(*dir)
	}
	return fmt.Errorf("unknown attack %q", args[0])
}

func socketPath() (string, error) {
	addr, ok := os.LookupEnv("SPIFFE_ENDPOINT_SOCKET")
	if !ok {
		return "", errors.New("SPIFFE_ENDPOINT_SOCKET is not set")
	}
	return strings.TrimPrefix(addr, "unix://"), nil
}

// bombBlock is the HPACK block of the report: one 4,000-byte header added to the dynamic table,
// then 60,000 one-byte references to it (about 240 MB once decoded, 64 KB on the wire).
func bombBlock() []byte {
	var b bytes.Buffer
	b.WriteByte(0x40) // literal with incremental indexing, new name
	b.WriteByte(6)
	b.WriteString("x-bomb")
	b.Write([]byte{0x7f, 0xa1, 0x1e}) // value length 4000 as a 7-bit prefix integer
	b.Write(bytes.Repeat([]byte{'a'}, 4000))
	b.Write(bytes.Repeat([]byte{0xbe}, 60000)) // indexed field 62: the first dynamic entry
	return b.Bytes()
}

// ending says how the server ended a hostile connection: "goaway", "closed" (EOF/reset) or
// "open" (still open after the deadline: the attack was not refused).
func ending(conn net.Conn, deadline time.Duration) string {
	_ = conn.SetReadDeadline(time.Now().Add(deadline))
	fr := http2.NewFramer(io.Discard, conn)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return "open"
			}
			return "closed"
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			return "goaway"
		}
	}
}

// writeBlock sends a header block on stream 1 as HEADERS plus CONTINUATION frames.
func writeBlock(conn net.Conn, block []byte, maxFrame int) error {
	fr := http2.NewFramer(conn, nil)
	first := block
	if len(first) > maxFrame {
		first = block[:maxFrame]
	}
	rest := block[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(rest) == 0}); err != nil {
		return err
	}
	for len(rest) > 0 {
		chunk := rest
		if len(chunk) > maxFrame {
			chunk = rest[:maxFrame]
		}
		rest = rest[len(chunk):]
		if err := fr.WriteContinuation(1, len(rest) == 0, chunk); err != nil {
			return err
		}
	}
	return nil
}

func dialH2(path string) (net.Conn, error) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(clientPreface)); err != nil {
		conn.Close()
		return nil, err
	}
	if err := http2.NewFramer(conn, nil).WriteSettings(); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// hpackBomb sends the bomb on n connections, one after another, and counts how each ended. A write
// error counts as closed: the server may close before it has read the whole block.
func hpackBomb(n int) error {
	path, err := socketPath()
	if err != nil {
		return err
	}
	block := bombBlock()
	endings := map[string]int{}
	for i := 0; i < n; i++ {
		conn, err := dialH2(path)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if err := writeBlock(conn, block, 16384); err != nil {
			endings["closed"]++
		} else {
			endings[ending(conn, 5*time.Second)]++
		}
		conn.Close()
	}
	fmt.Printf("attack hpack-bomb connections=%d goaway=%d closed=%d open=%d\n", n,
		endings["goaway"], endings["closed"], endings["open"])
	return nil
}

// h2Garbage sends malformed HTTP/2 on separate connections: no preface, an oversized frame, a
// header block cut in the middle of a literal, a table-size update far above 4096, an endless
// CONTINUATION chain. Each must end with the connection closed or a GOAWAY, never hang open.
func h2Garbage() error {
	path, err := socketPath()
	if err != nil {
		return err
	}
	cases := []struct {
		name string
		send func(net.Conn) error
	}{
		{"no-preface", func(c net.Conn) error {
			_, err := c.Write(bytes.Repeat([]byte{0xff}, 4096))
			return err
		}},
		{"oversized-frame", func(c net.Conn) error {
			// a HEADERS frame header that announces 16 MiB - 1 bytes
			_, err := c.Write([]byte{0xff, 0xff, 0xff, 0x01, 0x04, 0, 0, 0, 1})
			return err
		}},
		{"truncated-literal", func(c net.Conn) error {
			return writeBlock(c, []byte{0x40, 6, 'x', '-', 'c', 'u', 't', 0x7f, 0xa1}, 16384)
		}},
		{"table-size-update", func(c net.Conn) error {
			return writeBlock(c, []byte{0x3f, 0xe1, 0xff, 0xff, 0x0f}, 16384) // size update to ~32 MB
		}},
		{"endless-continuation", func(c net.Conn) error {
			fr := http2.NewFramer(c, nil)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}}); err != nil {
				return err
			}
			chunk := bytes.Repeat([]byte{0x82}, 16000)
			for i := 0; i < 200; i++ { // 3.2 MB of header block, never ended
				if err := fr.WriteContinuation(1, false, chunk); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	var results []string
	for _, tc := range cases {
		conn, err := dialH2(path)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		end := "closed"
		if err := tc.send(conn); err == nil {
			end = ending(conn, 5*time.Second)
		}
		conn.Close()
		results = append(results, tc.name+"="+end)
	}
	fmt.Printf("attack h2-garbage %s\n", strings.Join(results, " "))
	return nil
}

func workloadConn(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

// streamFlood opens `perConn` FetchX509SVID streams on each of `conns` connections at once and
// counts how many got an SVID and which codes the rest got.
func streamFlood(conns, perConn int) error {
	path, err := socketPath()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), 15*time.Second)
	defer cancel()
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	var wg sync.WaitGroup
	var clients []*grpc.ClientConn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for c := 0; c < conns; c++ {
		conn, err := workloadConn(path)
		if err != nil {
			return err
		}
		clients = append(clients, conn)
		client := workload.NewSpiffeWorkloadAPIClient(conn)
		for s := 0; s < perConn; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
				if err == nil {
					_, err = stream.Recv()
				}
				mu.Lock()
				codesSeen[status.Code(err)]++
				mu.Unlock()
				if err == nil {
					<-ctx.Done() // hold the stream open until the end
				}
			}()
		}
	}
	wg.Wait()
	var parts []string
	for code, n := range codesSeen {
		parts = append(parts, fmt.Sprintf("%s:%d", code, n))
	}
	fmt.Printf("attack stream-flood streams=%d ok=%d codes=%s\n", conns*perConn, codesSeen[codes.OK], strings.Join(parts, ","))
	return nil
}

// hugeAudience asks for a JWT-SVID with `count` audiences of `size/count` bytes each.
func hugeAudience(size, count int) error {
	path, err := socketPath()
	if err != nil {
		return err
	}
	conn, err := workloadConn(path)
	if err != nil {
		return err
	}
	defer conn.Close()
	aud := make([]string, count)
	for i := range aud {
		aud[i] = fmt.Sprintf("%d-%s", i, strings.Repeat("a", size/count))
	}
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), 15*time.Second)
	defer cancel()
	_, err = workload.NewSpiffeWorkloadAPIClient(conn).FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: aud})
	fmt.Printf("attack huge-audience bytes=%d count=%d code=%s\n", size, count, status.Code(err))
	return nil
}

// rawCodec sends and receives message bytes as they are, so we need no generated node API client.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

// nodeAPIWithWorkloadSVID presents the pod's own X.509-SVID (files mode) as a client certificate to
// the node API and asks it to sign: a workload must not pass for a node.
func nodeAPIWithWorkloadSVID(addr, dir string) error {
	cert, err := tls.LoadX509KeyPair(dir+"/svid.pem", dir+"/svid_key.pem")
	if err != nil {
		return fmt.Errorf("load the pod's SVID: %w", err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		// the attacker does not care who the server is; the server must care who the client is
		InsecureSkipVerify: true, //nolint:gosec
		NextProtos:         []string{"h2"},
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, method := range []string{"SignX509Svids", "MintJwtSvid", "WatchPod"} {
		in, out := []byte{}, []byte{}
		var err error
		if method == "WatchPod" {
			var stream grpc.ClientStream
			stream, err = conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/wimsey.node.v1.Node/"+method, grpc.ForceCodec(rawCodec{}))
			if err == nil {
				err = stream.SendMsg(&in)
			}
			if err == nil {
				err = stream.RecvMsg(&out)
			}
		} else {
			err = conn.Invoke(ctx, "/wimsey.node.v1.Node/"+method, &in, &out, grpc.ForceCodec(rawCodec{}))
		}
		fmt.Printf("attack node-api method=%s code=%s msg=%s\n", method, status.Code(err), oneLine(errOrOK(err)))
	}
	return nil
}

func errOrOK(err error) error {
	if err == nil {
		return errors.New("ok")
	}
	return err
}

// plantSymlink tries to plant symlinks in the files-mode volume, as a pod that wants the plugin to
// write through them would.
func plantSymlink(dir string) error {
	var results []string
	for _, name := range []string{"svid.pem", ".svid.pem.tmp", "federated", "planted"} {
		_ = os.Remove(dir + "/" + name)
		err := os.Symlink("/etc/passwd", dir+"/"+name)
		result := "planted"
		if err != nil {
			result = "refused"
			if errors.Is(err, os.ErrPermission) {
				result = "refused(permission)"
			} else if strings.Contains(err.Error(), "read-only") {
				result = "refused(read-only)"
			}
		}
		results = append(results, name+"="+result)
	}
	fmt.Printf("attack plant-symlink %s\n", strings.Join(results, " "))
	return nil
}
