#!/usr/bin/env bash
# Local provider: a real single-node Kubernetes cluster from upstream binaries, as background processes
# with pid files. Idempotent: what already runs is kept, what is missing is started.
#   CLUSTER_LEVEL=control-plane  etcd + kube-apiserver (seconds)
#   CLUSTER_LEVEL=node (default) + kube-controller-manager, kube-scheduler, containerd, kubelet, CNI bridge
# See shared/reference/local-cluster.md for why each setting is what it is.
. "$(dirname "$0")/common.sh"
[ "$(id -u)" = 0 ] || die "the local provider needs root (mounts, cgroups, network)"
case $LEVEL in control-plane | node) ;; *) die "CLUSTER_LEVEL must be control-plane or node, not $LEVEL" ;; esac
t0=$(date +%s)

# 1. binaries (no-op when the version-keyed cache is warm)
# (helm and kubeconform too: chart tests use them, and the cache makes this free after the first run)
"$LOCAL_DIR/build.sh" all

mkdir -p "$D" "$RUN" "$D/logs"
echo local >"$D/provider"

# 2. PKI: one CA for client certs and serving certs, the service-account signing key.
P=$D/pki
gen_cert() { # NAME CN ORG EXTKEYUSAGE [SANS]
	local name=$1 cn=$2 org=$3 eku=$4 sans=${5:-} subj
	[ -s "$P/$name.crt" ] && return 0
	subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org$subj"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$P/$name.key" \
		-out "$P/$name.csr" -subj "$subj" 2>/dev/null
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		[ -n "$sans" ] && echo "subjectAltName=$sans"
	} >"$P/$name.ext"
	openssl x509 -req -in "$P/$name.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 365 \
		-extfile "$P/$name.ext" -out "$P/$name.crt" 2>/dev/null
	rm -f "$P/$name.csr" "$P/$name.ext"
}
if [ ! -s "$P/ca.crt" ]; then
	log "pki: generating in $P"
	mkdir -p "$P" && chmod 700 "$P"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$P/ca.key" \
		-out "$P/ca.crt" -days 3650 -subj "/CN=wimsey-e2e-ca" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$P/sa.key"
	openssl ec -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
fi
gen_cert apiserver kube-apiserver "" serverAuth \
	"IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
gen_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
gen_cert admin wimsey-e2e-admin system:masters clientAuth
gen_cert kcm system:kube-controller-manager "" clientAuth
gen_cert scheduler system:kube-scheduler "" clientAuth
gen_cert kubelet "system:node:$NODE_NAME" system:nodes clientAuth
gen_cert kube-proxy system:kube-proxy "" clientAuth

write_kubeconfig() { # FILE USER SERVER
	write_if_changed "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: wimsey-local
  cluster:
    server: $3
    certificate-authority: $P/ca.crt
users:
- name: $2
  user:
    client-certificate: $P/$2.crt
    client-key: $P/$2.key
contexts:
- name: wimsey-local
  context: { cluster: wimsey-local, user: $2 }
current-context: wimsey-local
KC
}
API_LOCAL=https://127.0.0.1:$APISERVER_PORT
mkdir -p "$(dirname "$KUBECONFIG_OUT")"
write_kubeconfig "$KUBECONFIG_OUT" admin "$API_LOCAL"
for u in kcm scheduler kubelet kube-proxy; do write_kubeconfig "$D/$u.kubeconfig" "$u" "$API_LOCAL"; done
# kubelet talks to the API through the node address, as a kubelet on a real node does.
write_kubeconfig "$D/kubelet.kubeconfig" kubelet "https://$NODE_IP:$APISERVER_PORT"

# 3. the node address, ours alone, on lo
ip addr replace "$NODE_IP/32" dev "$NODE_IF"

# 4. etcd + kube-apiserver
start_proc etcd "$ETCD_BIN/etcd" --name wimsey --data-dir "$D/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster "wimsey=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_until "etcd healthy" 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health" || die "etcd did not become healthy; see $D/logs/etcd.log"

start_proc kube-apiserver "$K8S_BIN/kube-apiserver" \
	--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
	--bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
	--tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
	--client-ca-file="$P/ca.crt" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
	--kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types=InternalIP --profiling=false --v=1
apiserver_ready() {
	curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" "$API_LOCAL/readyz" 
}
wait_until "kube-apiserver ready" 90 apiserver_ready || die "kube-apiserver not ready; see $D/logs/kube-apiserver.log"
log "kube-apiserver ready at $API_LOCAL ($(( $(date +%s) - t0 )) s)"

if [ "$LEVEL" = control-plane ]; then
	# asking for less than what runs keeps what runs
	if [ "$(cat "$D/level" 2>/dev/null)" = node ] && pid_alive kubelet; then
		log "a node is up already; keeping it"
	else
		echo control-plane >"$D/level"
	fi
	log "control plane up in $(( $(date +%s) - t0 )) s"
	echo "KUBECONFIG=$KUBECONFIG_OUT"
	exit 0
fi

# 5. node prerequisites: packages, mount propagation, cgroup controllers, sysctls
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# CSI needs Bidirectional mount propagation on the kubelet dir: make every mount shared.
mount --make-rshared /
for ctl in hugetlb net_cls net_prio perf_event; do
	if grep -qw "$ctl" /proc/cgroups && ! awk '$3 == "cgroup"' /proc/self/mounts | grep -w "$ctl" >/dev/null; then
		mkdir -p "/sys/fs/cgroup/$ctl"
		mount -t cgroup -o "$ctl" cgroup "/sys/fs/cgroup/$ctl" || log "warning: cannot mount cgroup $ctl"
	fi
done
# Remember the kernel settings kubelet and the bridge change, to restore them on cluster-down.
if [ ! -s "$D/sysctl.saved" ]; then
	for k in net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops \
		net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables; do
		v=$(sysctl -n "$k" 2>/dev/null) && echo "$k=$v"
	done >"$D/sysctl.saved"
fi

# 6. network: our bridge's traffic stays on this machine. No masquerade; the FORWARD chain drops
# anything from or to the pod subnet that is not bridge-local (pods reach the node address via INPUT).
iptables -N "$FW_CHAIN" 2>/dev/null || iptables -F "$FW_CHAIN"
iptables -A "$FW_CHAIN" -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT
iptables -A "$FW_CHAIN" -s "$POD_CIDR" -j DROP
iptables -A "$FW_CHAIN" -d "$POD_CIDR" -j DROP
iptables -C FORWARD -j "$FW_CHAIN" 2>/dev/null || iptables -I FORWARD 1 -j "$FW_CHAIN"

mkdir -p "$D/cni/net.d" "$D/cni/ipam"
write_if_changed "$D/cni/net.d/10-wimsey.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "wimsey",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$D/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR" }]], "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
CNI

# 7. containerd (Debian's), with its own socket, root and state so it never meets another containerd.
mkdir -p "$D/containerd" "$RUN/containerd"
write_if_changed "$D/containerd/config.toml" <<TOML
version = 2
root = "$D/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/wimsey/pause:sandbox"
  enable_selinux = false
  # This VM withholds CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj (kubelet asks -998 for
  # sandboxes): clamp to containerd's own value instead of failing every pod.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
TOML
start_proc containerd "$(command -v containerd)" --config "$D/containerd/config.toml" --log-level warn
wait_until "containerd" 30 ctr_ version || die "containerd not answering; see $D/logs/containerd.log"

# 8. the pause image (sandbox_image above) must exist before kubelet runs a pod
if ! ctr_ images ls -q | grep -x localhost/wimsey/pause:sandbox >/dev/null; then
	[ -n "${WIMSEY_IMAGES_DIR:-}" ] && [ -s "$WIMSEY_IMAGES_DIR/pause.tar" ] ||
		die "no pause image: run 'make images' (make cluster-up does) or set WIMSEY_IMAGES_DIR"
fi
if [ -n "${WIMSEY_IMAGES_DIR:-}" ] && [ -d "$WIMSEY_IMAGES_DIR" ]; then
	for tar in "$WIMSEY_IMAGES_DIR"/*.tar; do
		[ -e "$tar" ] || continue
		ctr_ images import "$tar" >/dev/null
	done
	log "images imported from $WIMSEY_IMAGES_DIR"
fi

# 9. controller-manager, scheduler, kubelet
start_proc kube-controller-manager "$K8S_BIN/kube-controller-manager" \
	--kubeconfig="$D/kcm.kubeconfig" --authentication-kubeconfig="$D/kcm.kubeconfig" \
	--authorization-kubeconfig="$D/kcm.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false \
	--service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
	--use-service-account-credentials --controllers='*,-nodeipam' \
	--cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
	--service-cluster-ip-range="$SERVICE_CIDR" --v=1
start_proc kube-scheduler "$K8S_BIN/kube-scheduler" \
	--kubeconfig="$D/scheduler.kubeconfig" --authentication-kubeconfig="$D/scheduler.kubeconfig" \
	--authorization-kubeconfig="$D/scheduler.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false --v=1

mkdir -p "$D/manifests" "$D/kubelet-pki" "$KUBELET_DIR"
write_if_changed "$D/kubelet.yaml" <<KCFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failSwapOn: false
staticPodPath: $D/manifests
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $P/ca.crt }
authorization: { mode: Webhook }
readOnlyPort: 0
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%" }
serializeImagePulls: false
KCFG
start_proc kubelet "$K8S_BIN/kubelet" --config="$D/kubelet.yaml" --kubeconfig="$D/kubelet.kubeconfig" \
	--hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$KUBELET_DIR" \
	--cert-dir="$D/kubelet-pki" --v=1

# kube-proxy (iptables mode) makes ClusterIP Services work, including `kubernetes` for in-cluster clients.
# Every Service endpoint is on this machine (pods or the node address); NodePorts only on the node address.
write_if_changed "$D/kube-proxy.yaml" <<KPCFG
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: $D/kube-proxy.kubeconfig }
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack: { maxPerCore: 0 }
KPCFG
start_proc kube-proxy "$K8S_BIN/kube-proxy" --config="$D/kube-proxy.yaml" --v=1

node_ready() {
	[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_until "node Ready" 120 node_ready || die "node $NODE_NAME not Ready; see $D/logs/kubelet.log"
default_sa() { kubectl_ -n default get serviceaccount default; }
wait_until "default service account" 60 default_sa || die "no default service account; see $D/logs/kube-controller-manager.log"
kube_proxy_synced() { curl -sf http://127.0.0.1:10256/healthz; }
wait_until "kube-proxy synced" 60 kube_proxy_synced || die "kube-proxy not healthy; see $D/logs/kube-proxy.log"
echo node >"$D/level"
log "node $NODE_NAME Ready; cluster up in $(( $(date +%s) - t0 )) s"
echo "KUBECONFIG=$KUBECONFIG_OUT"
