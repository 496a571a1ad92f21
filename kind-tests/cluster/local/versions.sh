# Versions of everything the local cluster builds from the Go module proxy. Overridable from the environment.
# k8s 1.34: cgroup v1 works without failCgroupV1 (see shared/reference/local-cluster.md §1.6).
K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.8.0}
SPIRE_VERSION=${SPIRE_VERSION:-v1.13.3}
