//! The volume manager: turns validated publish/unpublish requests into mounts, per-pod sockets
//! and file writers, keeps a record of every volume, and brings them all back after a restart.
//!
//! Nothing here waits on the network: publishing attaches the pod to the [`IdentitySource`]
//! (which fills the identity in the background) and returns.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::CsiError;
use super::files::{VolumeRoot, run_files_writer};
use super::mounts;
use super::records::{RecordStore, VolumeRecord};
use super::request::{FilesConfig, PublishSpec};
use crate::identity::{IdentitySource, PodInfo};
use crate::metrics::Metrics;
use crate::socket::{bind_unix_socket, bind_unix_socket_in_new_dir};
use crate::volume_mode::VolumeMode;
use crate::workload_api::{WorkloadApiLimits, serve_workload_api};

/// The socket's name inside the per-volume directory (`SPIFFE_ENDPOINT_SOCKET=unix:///<mount>/socket`).
pub const SOCKET_NAME: &str = "socket";
/// Anyone inside the pod may connect: the socket is reachable only through that pod's mount.
const POD_SOCKET_MODE: u32 = 0o666;
/// The state directory and `volumes/`: root only, so no host user reaches a pod's socket (or the
/// files writer's view of a tmpfs) through the host path.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// A per-volume directory is the root of what the pod sees (bind-mounted at the target), so the
/// pod's non-root user must traverse it; its 0700 parents are not on the pod's path.
const VOLUME_DIR_MODE: u32 = 0o755;
/// Default inode cap of a `files` tmpfs (`nr_inodes=`): two generations of a few dozen files.
pub const DEFAULT_FILES_TMPFS_INODES: u64 = 1024;

/// Where the manager keeps its state and what it mounts.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// `<state_dir>/volumes/<volume dir>/` (a socket, or a files volume's writable tmpfs) and
    /// `<state_dir>/records/` (records); all but the per-volume directories are 0700.
    pub state_dir: PathBuf,
    /// Source directory for `spire-agent` volumes; `None` refuses that mode.
    pub spire_agent_socket_dir: Option<PathBuf>,
    /// tmpfs size for `files` volumes (mount option `size=`, see [`mounts::parse_tmpfs_size`]).
    pub files_tmpfs_size: String,
    /// Inode cap for `files` volumes (mount option `nr_inodes=`, at least 1).
    pub files_tmpfs_inodes: u64,
    /// Bounds on each pod's Workload API server.
    pub workload_api: WorkloadApiLimits,
}

struct ActiveVolume {
    record: VolumeRecord,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Publishes and unpublishes volumes for pods, with identities from `S`.
pub struct VolumeManager<S: IdentitySource> {
    source: Arc<S>,
    config: ManagerConfig,
    records: RecordStore,
    volumes_dir: PathBuf,
    // One lock for all volumes: each operation is a few local syscalls, and it makes concurrent
    // calls for the same volume trivially safe.
    volumes: Mutex<BTreeMap<String, ActiveVolume>>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl<S: IdentitySource> std::fmt::Debug for VolumeManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: IdentitySource> VolumeManager<S> {
    /// Opens the state directory. Call [`VolumeManager::restore`] to bring recorded volumes back.
    pub fn new(source: Arc<S>, config: ManagerConfig) -> Result<Self, CsiError> {
        create_private_dir(&config.state_dir)?;
        let records = RecordStore::open(config.state_dir.join("records"))?;
        let volumes_dir = config.state_dir.join("volumes");
        create_private_dir(&volumes_dir)?;
        Ok(Self {
            source,
            config,
            records,
            volumes_dir,
            volumes: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Records into `metrics` (each pod's Workload API calls, the active volumes) instead of a
    /// private instance.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The mode of a published volume.
    pub async fn mode_of(&self, volume_id: &str) -> Option<VolumeMode> {
        let volumes = self.volumes.lock().await;
        volumes.get(volume_id).map(|v| v.record.mode)
    }

    /// Sets the active volume gauge from the volumes served now.
    pub async fn record_active_volumes(&self) {
        let volumes = self.volumes.lock().await;
        let mut counts = BTreeMap::new();
        for volume in volumes.values() {
            *counts.entry(volume.record.mode).or_insert(0) += 1;
        }
        self.metrics.set_active_volumes(&counts);
    }

    /// The per-volume directory of a `workload-api` volume: named by a hash of the volume ID,
    /// because kubelet's IDs (`csi-<64 hex>`) would push the socket's path past the 108 bytes a
    /// Unix socket address holds.
    pub fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.volumes_dir.join(volume_dir_name(volume_id))
    }

    /// Re-activates every recorded volume: re-attaches its pod, re-serves its socket or resumes
    /// writing its files, and re-mounts a target that lost its mount. Returns how many came back;
    /// a volume that fails is logged and its record kept for kubelet's next call.
    pub async fn restore(&self) -> Result<usize, CsiError> {
        let mut restored = 0;
        for (path, record) in self.records.load_all()? {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    warn!(path = %path.display(), error = %error, "skipping unreadable volume record");
                    continue;
                }
            };
            // kubelet creates the target's parent for the pod and removes it with the pod: if it is
            // gone, the pod went away while we were down and no unpublish will come.
            if record
                .target_path
                .parent()
                .is_some_and(|parent| !parent.exists())
            {
                info!(volume_id = %record.volume_id, target = %record.target_path.display(), "pod gone while the plugin was down; dropping its volume");
                if let Err(error) = self.teardown(&record.volume_id, &record.target_path) {
                    warn!(volume_id = %record.volume_id, error = %error, label = error.label(), "could not drop the volume of a gone pod");
                }
                continue;
            }
            let token = self
                .records
                .read_token(&record.volume_id, SystemTime::now());
            let spec = PublishSpec {
                volume_id: record.volume_id.clone(),
                target: record.target_path.clone(),
                mode: record.mode,
                pod: record.pod_info().map(|pod| PodInfo { token, ..pod }),
                attributes: record.attributes.clone(),
                fs_group: record.fs_group,
            };
            let mut volumes = self.volumes.lock().await;
            match self.activate(&spec) {
                Ok(active) => {
                    volumes.insert(spec.volume_id.clone(), active);
                    restored += 1;
                }
                Err(error) => {
                    warn!(volume_id = %spec.volume_id, error = %error, label = error.label(), "could not restore volume");
                }
            }
        }
        Ok(restored)
    }

    /// NodePublishVolume for a validated request. Idempotent: the same volume at the same
    /// target with the same arguments is OK (and refreshes the pod's token).
    pub async fn publish(&self, spec: PublishSpec) -> Result<(), CsiError> {
        let mut volumes = self.volumes.lock().await;
        if let Some(existing) = volumes.get(&spec.volume_id) {
            let wanted = VolumeRecord::from_spec(&spec);
            if existing.record.target_path != wanted.target_path {
                return Err(CsiError::FailedPrecondition(format!(
                    "volume_id {} is already published at {}",
                    spec.volume_id,
                    existing.record.target_path.display()
                )));
            }
            if existing.record != wanted {
                return Err(CsiError::AlreadyExists(format!(
                    "volume_id {} is already published at {} with different volume_context or capability",
                    spec.volume_id,
                    spec.target.display()
                )));
            }
            // A republish (requiresRepublish) brings a fresh pod token.
            if let Some(pod) = spec.pod.clone().filter(|p| p.token.is_some()) {
                self.record_token(&spec.volume_id, &pod);
                drop(self.source.attach(pod));
            }
            if !mounts::is_mount_point(&spec.target)? {
                // The mount went away under us (e.g. unmounted by hand): set the volume up
                // again, so a fresh tmpfs is filled at once rather than at the next rotation.
                if let Some(mut stale) = volumes.remove(&spec.volume_id) {
                    stale.stop.cancel();
                    if let Some(task) = stale.task.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                    }
                }
                let active = self.activate(&spec)?;
                volumes.insert(spec.volume_id.clone(), active);
            }
            return Ok(());
        }
        self.records.write(&VolumeRecord::from_spec(&spec))?;
        if let Some(pod) = &spec.pod {
            self.record_token(&spec.volume_id, pod);
        }
        match self.activate(&spec) {
            Ok(active) => {
                volumes.insert(spec.volume_id.clone(), active);
                info!(volume_id = %spec.volume_id, mode = spec.mode.as_str(), target = %spec.target.display(), "published");
                Ok(())
            }
            Err(error) => {
                // kubelet may never call unpublish after a failed publish: undo everything.
                let _ = self.teardown(&spec.volume_id, &spec.target);
                if let Some(pod) = &spec.pod
                    && !pod_in_use(&volumes, &pod.uid)
                {
                    self.source.detach(&pod.uid);
                }
                Err(error)
            }
        }
    }

    /// NodeUnpublishVolume: stops serving, unmounts, removes the target, the per-volume state and
    /// the record. Idempotent: an unknown volume or a missing target is OK.
    pub async fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), CsiError> {
        let mut volumes = self.volumes.lock().await;
        let active = volumes.remove(volume_id);
        if let Some(active) = &active {
            active.stop.cancel();
        }
        // The files writer must be done with the tmpfs before it can be unmounted.
        let active = match active {
            Some(mut active) => {
                if let Some(task) = active.task.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                }
                Some(active)
            }
            None => None,
        };
        self.teardown(volume_id, target)?;
        if let Some(active) = active {
            if let Some(pod) = &active.record.pod
                && !pod_in_use(&volumes, &pod.uid)
            {
                self.source.detach(&pod.uid);
            }
            info!(volume_id, target = %target.display(), "unpublished");
        }
        Ok(())
    }

    /// Keeps the pod's token for a restart. Failing to is not fatal: the volume works now, and
    /// after a restart the token comes back with kubelet's next republish.
    fn record_token(&self, volume_id: &str, pod: &PodInfo) {
        if let Some(token) = &pod.token
            && let Err(error) = self.records.write_token(volume_id, token)
        {
            warn!(volume_id, error = %error, label = error.label(), "could not record the pod token");
        }
    }

    /// Unmounts and removes the target, the per-volume directory and the record.
    fn teardown(&self, volume_id: &str, target: &Path) -> Result<(), CsiError> {
        mounts::unmount_all(target)?;
        match fs::remove_dir(target) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(CsiError::io("remove", target)(e));
            }
            _ => {}
        }
        let volume_dir = self.volume_dir(volume_id);
        // A files volume's writable view of its tmpfs.
        mounts::unmount_stack(&volume_dir)?;
        match fs::remove_dir_all(&volume_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(CsiError::io("remove", &volume_dir)(e));
            }
            _ => {}
        }
        self.records.remove(volume_id)
    }

    /// The recorded target of a published volume.
    pub async fn target_of(&self, volume_id: &str) -> Option<PathBuf> {
        let volumes = self.volumes.lock().await;
        volumes.get(volume_id).map(|v| v.record.target_path.clone())
    }

    /// Stops every socket server and file writer. Mounts, sockets' directories and records stay,
    /// so the next plugin process picks every volume up again.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let mut volumes = self.volumes.lock().await;
        for active in volumes.values_mut() {
            if let Some(task) = active.task.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
        }
    }

    /// Sets a volume up: target directory, the mode's server or writer, the mount.
    fn activate(&self, spec: &PublishSpec) -> Result<ActiveVolume, CsiError> {
        let stop = self.shutdown.child_token();
        let task = self.start(spec, &stop).inspect_err(|_| stop.cancel())?;
        Ok(ActiveVolume {
            record: VolumeRecord::from_spec(spec),
            stop,
            task,
        })
    }

    fn start(
        &self,
        spec: &PublishSpec,
        stop: &CancellationToken,
    ) -> Result<Option<JoinHandle<()>>, CsiError> {
        // A target we have just created cannot be a mount point: no need to read mountinfo.
        let new_target = create_dir(&spec.target, 0o750)?;
        let task = match spec.mode {
            VolumeMode::WorkloadApi => {
                let dir = self.volume_dir(&spec.volume_id);
                let socket = dir.join(SOCKET_NAME);
                let listener = if create_dir(&dir, VOLUME_DIR_MODE)? {
                    bind_unix_socket_in_new_dir(&socket, POD_SOCKET_MODE)?
                } else {
                    // A restart or a lost mount: a socket from before may be there to replace.
                    bind_unix_socket(&socket, POD_SOCKET_MODE)?
                };
                let pod = Arc::new(self.attach(spec)?);
                let volume_id = spec.volume_id.clone();
                let (stop, limits) = (stop.clone(), self.config.workload_api.clone());
                let metrics = Arc::clone(&self.metrics);
                Some(tokio::spawn(async move {
                    if let Err(error) =
                        serve_workload_api(listener, pod, limits, metrics, stop).await
                    {
                        warn!(volume_id, error = %error, label = error.label(), "Workload API server ended");
                    }
                }))
            }
            VolumeMode::Files => {
                // The tmpfs is mounted writable only at the per-volume directory, under the
                // plugin's 0700 state directory, and the pod gets a read-only bind of it: the
                // pod can read its files but never plant anything for the writer to trip on.
                let config = FilesConfig::from_attributes(&spec.attributes, spec.fs_group)?;
                let dir = self.volume_dir(&spec.volume_id);
                self.mount_files_tmpfs(spec, &dir, new_target)?;
                let root = VolumeRoot::open(&dir)?;
                let pod = self.attach(spec)?;
                let volume_id = spec.volume_id.clone();
                let stop = stop.clone();
                Some(tokio::spawn(async move {
                    run_files_writer(volume_id, pod, root, config, stop).await;
                }))
            }
            VolumeMode::SpireAgent => None,
        };
        // On error the caller cancels `stop`, which ends the task spawned above.
        if new_target || !mounts::is_mount_point(&spec.target)? {
            self.mount(spec)?;
        }
        Ok(task)
    }

    fn attach(&self, spec: &PublishSpec) -> Result<S::Pod, CsiError> {
        let pod = spec.pod.clone().ok_or_else(|| {
            CsiError::invalid(format!(
                "mode {} needs the pod's info in volume_context",
                spec.mode.as_str()
            ))
        })?;
        Ok(self.source.attach(pod))
    }

    /// The pod's read-only view at the target.
    fn mount(&self, spec: &PublishSpec) -> Result<(), CsiError> {
        match spec.mode {
            VolumeMode::WorkloadApi | VolumeMode::Files => {
                mounts::bind_mount_readonly(&self.volume_dir(&spec.volume_id), &spec.target)
            }
            VolumeMode::SpireAgent => {
                let source = self.config.spire_agent_socket_dir.as_ref().ok_or_else(|| {
                    CsiError::FailedPrecondition(
                        "mode spire-agent: this plugin was started without --spire-agent-socket-dir"
                            .to_owned(),
                    )
                })?;
                mounts::bind_mount_readonly(source, &spec.target)
            }
        }
    }

    /// Makes sure the per-volume directory `dir` holds the volume's writable tmpfs: kept if it is
    /// mounted there; taken back from the target if the plugin restarted in a new mount
    /// namespace (the pod's tmpfs then lives on only at its target); else a fresh one.
    fn mount_files_tmpfs(
        &self,
        spec: &PublishSpec,
        dir: &Path,
        new_target: bool,
    ) -> Result<(), CsiError> {
        if !create_dir(dir, VOLUME_DIR_MODE)? && mounts::is_mount_point(dir)? {
            return Ok(());
        }
        if !new_target && mounts::is_mount_point(&spec.target)? {
            return mounts::bind_mount_writable(&spec.target, dir);
        }
        let options = mounts::files_tmpfs_options(
            &self.config.files_tmpfs_size,
            self.config.files_tmpfs_inodes,
            spec.fs_group,
        );
        mounts::mount_tmpfs(dir, &options)
    }
}

fn pod_in_use(volumes: &BTreeMap<String, ActiveVolume>, pod_uid: &str) -> bool {
    volumes
        .values()
        .any(|v| v.record.pod.as_ref().is_some_and(|p| p.uid == pod_uid))
}

/// Creates the directory `path` (its parent must exist); whether it is new (false: it was there).
fn create_dir(path: &Path, mode: u32) -> Result<bool, CsiError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CsiError::io("create", path)(e)),
    }
}

/// Creates `path` and any missing parents as 0700, and narrows an existing `path` to 0700: a
/// state directory made by an older version or by a `DirectoryOrCreate` hostPath is 0755. A
/// directory another user owns could be opened up again by them, so it is refused.
fn create_private_dir(path: &Path) -> Result<(), CsiError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .map_err(CsiError::io("create", path))?;
    let meta = fs::symlink_metadata(path).map_err(CsiError::io("inspect", path))?;
    let owner = rustix::process::geteuid().as_raw();
    let wrong = if !meta.is_dir() {
        Some("is not a directory (a symlink is not followed)".to_owned())
    } else if meta.uid() != owner {
        Some(format!("is owned by uid {}, not {owner}", meta.uid()))
    } else {
        None
    };
    if let Some(wrong) = wrong {
        return Err(CsiError::Io {
            action: "use as a private state directory",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, wrong),
        });
    }
    if meta.mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(CsiError::io("chmod", path))?;
    }
    Ok(())
}

/// 22 base64url characters (132 bits) of SHA-256: stable across versions, short, and unique
/// among the volumes of a node.
pub fn volume_dir_name(volume_id: &str) -> String {
    let mut name = wimsey_core::jose::sha256_b64url(volume_id.as_bytes());
    name.truncate(22);
    name
}

#[cfg(test)]
mod volume_dir_tests {
    use super::*;

    #[test]
    fn a_kubelet_volume_socket_path_fits_a_unix_socket_address() {
        // kubelet's ephemeral volume IDs: "csi-" + 64 hex digits.
        let volume_id = format!("csi-{}", "ab".repeat(32));
        let name = volume_dir_name(&volume_id);
        assert_eq!(name.len(), 22);
        assert_eq!(name, volume_dir_name(&volume_id), "stable");
        assert_ne!(name, volume_dir_name("csi-other"));
        // The longest path bind_unix_socket uses: the staging directory, with the largest pid.
        let staged =
            format!("/var/lib/wimsey/volumes/{name}/.{SOCKET_NAME}.4194304.bind/{SOCKET_NAME}");
        assert!(staged.len() < 108, "{} bytes: {staged}", staged.len());
    }
}
