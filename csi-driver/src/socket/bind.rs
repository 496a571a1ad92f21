//! Binding a Unix socket: with its final mode before anyone can connect, and a stale socket from
//! an earlier run replaced (never anything that is not a socket).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The socket mode when none is configured: only the owner (the pod runs as the same user as
/// the plugin, or is given access by a group-mode choice) may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket path {0} has no parent directory or file name")]
    BadPath(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl SocketError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SocketError::BadPath(_) => "bad_path",
            SocketError::NotASocket(_) => "not_a_socket",
            SocketError::Io { .. } => "io",
        }
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Binds a Unix socket at `path` with permission bits `mode`.
///
/// The socket is bound inside a private (0700) directory next to `path`, given `mode`, and only
/// then renamed into place, so it is never reachable with looser permissions. An existing
/// socket at `path` (left by a crash) is replaced; anything else there is an error.
/// Must be called within a Tokio runtime.
pub fn bind_unix_socket(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SocketError::BadPath(path.to_owned()));
    };
    remove_stale_socket(path)?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".{}.bind", std::process::id()));
    let staging_dir = parent.join(staging_name);
    if staging_dir.exists() {
        fs::remove_dir_all(&staging_dir).map_err(io_error("remove", &staging_dir))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging_dir)
        .map_err(io_error("create", &staging_dir))?;
    let staged = staging_dir.join("socket");
    let result = bind_staged(&staged, path, mode);
    let _ = fs::remove_dir_all(&staging_dir);
    result
}

/// Binds a Unix socket at `path` in place, for a directory that was created just now and that
/// nobody else can reach yet (not mounted anywhere, parent not writable by others): no stale
/// socket to replace and no one to connect before the mode is set, so the staging directory of
/// [`bind_unix_socket`] (seven more syscalls on NodePublishVolume's path) buys nothing.
/// Must be called within a Tokio runtime.
pub fn bind_unix_socket_in_new_dir(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let listener = bind_with_mode(path, mode)?;
    register(listener, path)
}

fn bind_staged(staged: &Path, path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let listener = bind_with_mode(staged, mode)?;
    fs::rename(staged, path).map_err(io_error("rename into", path))?;
    register(listener, path)
}

fn bind_with_mode(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_error("bind", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error("chmod", path))?;
    Ok(listener)
}

fn register(
    listener: std::os::unix::net::UnixListener,
    path: &Path,
) -> Result<UnixListener, SocketError> {
    listener
        .set_nonblocking(true)
        .map_err(io_error("set non-blocking", path))?;
    UnixListener::from_std(listener).map_err(io_error("register", path))
}

/// Removes a socket left at `path`; refuses to remove anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), SocketError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(io_error("remove stale socket", path))
        }
        Ok(_) => Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("inspect", path)(e)),
    }
}
