#!/usr/bin/env bash
# `make bench-operator-idle`: is an idle operator idle? (issue 10, item 4)
#
# Runs the release wimsey-operator on this host against the cluster that is up (`make cluster-up`;
# KUBECONFIG from the environment, else the local provider's /var/lib/wimsey-cluster/kubeconfig),
# with every API
# request going through a counting proxy: `kubectl proxy` (which authenticates with the kubeconfig)
# behind a small Python proxy that records each request's method, path and whether it is a watch.
# After the operator is ready and a warm-up, it leaves everything alone for IDLE_SECONDS (300) and
# reports:
#   - the operator's CPU time over the idle window (utime+stime from /proc), target < 1 s;
#   - the API requests it sent in that window, by kind: Lease (renewals, allowed), watch
#     (re-established watches: kube's watcher restarts each watch after the server's timeout,
#     bookmarks arrive inside a watch and are not requests), and anything else (target: none).
# Needs: python3, kubectl, a cluster with the CRDs installed (kubectl apply -f crds/), and the
# namespace the operator uses (POD_NAMESPACE, default wimsey-system). It does not start, stop or
# change the cluster, apart from what the operator itself writes (its Lease, its CA Secret,
# statuses).
set -euo pipefail

IDLE_SECONDS=${IDLE_SECONDS:-300}
WARMUP_SECONDS=${WARMUP_SECONDS:-30}
NAMESPACE=${POD_NAMESPACE:-wimsey-system}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release/wimsey-operator"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

export KUBECONFIG=${KUBECONFIG:-${CLUSTER_KUBECONFIG:-${WIMSEY_CLUSTER_DIR:-/var/lib/wimsey-cluster}/kubeconfig}}
[ -r "$KUBECONFIG" ] || { echo "no cluster: run make cluster-up (or set KUBECONFIG)" >&2; exit 1; }
# kubectl from PATH, else the one the local provider built.
if ! command -v kubectl >/dev/null; then
	kubectl_bin=$(ls -d "${WIMSEY_CACHE:-/var/cache/wimsey}"/k8s-*/bin/kubectl 2>/dev/null | tail -1)
	[ -n "$kubectl_bin" ] || { echo "kubectl not found" >&2; exit 1; }
	kubectl() { "$kubectl_bin" "$@"; }
fi
kubectl get --raw /readyz >/dev/null || { echo "the API server is not ready" >&2; exit 1; }
kubectl get crd clusterspiffeids.spire.spiffe.io >/dev/null || { echo "install the CRDs: kubectl apply -f crds/" >&2; exit 1; }
kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >/dev/null

[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p wimsey-operator --bin wimsey-operator)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPSTREAM=$(free_port)
PROXY=$(free_port)
ADMIN=$(free_port)
DEBUG=$(free_port)
NODE_API=$(free_port)

kubectl proxy --port="$UPSTREAM" --address=127.0.0.1 >"$WORK/kubectl-proxy.log" 2>&1 &
PIDS+=($!)

# The counting proxy: streams responses (watches are long), logs one line per request.
cat >"$WORK/count.py" <<'PY'
import http.client, http.server, sys, threading, time
upstream = int(sys.argv[2]); log = open(sys.argv[3], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        log.write(f"{time.time():.3f} {self.command} {self.path}\n")
        conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=3600)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)); self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$WORK/count.py" "$PROXY" "$UPSTREAM" "$WORK/requests.log" &
PIDS+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$UPSTREAM/version" >/dev/null && break; sleep 0.2; done

cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: counted, cluster: {server: "http://127.0.0.1:$PROXY"}}]
users: [{name: proxy, user: {}}]
contexts: [{name: counted, context: {cluster: counted, user: proxy}}]
current-context: counted
EOF

KUBECONFIG="$WORK/kubeconfig" POD_NAMESPACE="$NAMESPACE" POD_NAME=wimsey-idle-bench \
	WIMSEY_TRUST_DOMAIN=${WIMSEY_TRUST_DOMAIN:-example.org} WIMSEY_CLUSTER_NAME=${WIMSEY_CLUSTER_NAME:-local} \
	WIMSEY_ADMIN_ADDR="127.0.0.1:$ADMIN" WIMSEY_DEBUG_ADDR="127.0.0.1:$DEBUG" WIMSEY_NODE_API_ADDR="127.0.0.1:$NODE_API" \
	"$BIN" run >"$WORK/operator.log" 2>&1 &
OPERATOR=$!
PIDS+=("$OPERATOR")

for _ in $(seq 300); do
	curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break
	kill -0 "$OPERATOR" 2>/dev/null || { cat "$WORK/operator.log" >&2; echo "the operator exited" >&2; exit 1; }
	sleep 1
done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { tail -50 "$WORK/operator.log" >&2; echo "not ready after 300 s" >&2; exit 1; }
echo "operator ready; warming up ${WARMUP_SECONDS}s, then idle for ${IDLE_SECONDS}s"
sleep "$WARMUP_SECONDS"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$OPERATOR/stat"; }
TICKS=$(getconf CLK_TCK)
start_ticks=$(cpu_ticks)
start_time=$(date +%s.%N)
sleep "$IDLE_SECONDS"
end_ticks=$(cpu_ticks)
end_time=$(date +%s.%N)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$OPERATOR/status")

python3 - "$WORK/requests.log" "$start_time" "$end_time" "$start_ticks" "$end_ticks" "$TICKS" "$rss_kib" <<'PY'
import sys, collections, re
log, start, end, t0, t1, hz, rss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
kinds = collections.Counter(); other = collections.Counter()
for line in open(log):
    ts, method, path = line.split(" ", 2)
    if not (start <= float(ts) <= end):
        continue
    path = path.strip()
    if "/leases/" in path or path.endswith("/leases"):
        kinds["lease"] += 1
    elif "watch=true" in path or "watch=1" in path:
        kinds["watch (re-established)"] += 1
    else:
        kinds["other"] += 1
        other[f"{method} {re.sub(r'[?].*', '', path)}"] += 1
cpu = (t1 - t0) / hz
print(f"idle window: {end - start:.0f} s")
print(f"operator CPU time: {cpu:.2f} s (target < 1 s): {'met' if cpu < 1 else 'MISSED'}")
print(f"operator resident memory: {rss / 1024:.1f} MiB")
for k in ("lease", "watch (re-established)", "other"):
    print(f"API requests, {k}: {kinds[k]}")
for what, n in other.most_common():
    print(f"  {n:5d} {what}")
print(f"no requests beyond Lease renewals and watches: {'met' if kinds['other'] == 0 else 'MISSED'}")
PY
