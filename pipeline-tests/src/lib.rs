//! wimsey's in-process tier. The crate has no code of its own: its tests (`tests/`) run the
//! operator's node API, the CSI plugin's node client, volume manager and Workload API server
//! together in one process, over real TLS on loopback and real Unix sockets, with the API server
//! replaced by fakes at the operator's two cluster seams (`ClusterView`, `Reviewer`).
