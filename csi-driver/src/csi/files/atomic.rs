//! The atomic writer (kubelet's scheme: a fresh `..<generation>` directory, then the `..data`
//! symlink renamed over, so a reader sees either the old set or the new one, never a mix), relative
//! to the volume root's opened handle and never following a symlink.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::content::VolumeFile;
use crate::csi::error::CsiError;

const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// Distinguishes generations written within the same nanosecond.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Deepest nesting the cleanup descends below the root: the writer makes at most
/// `..<generation>/<dir>/<file>`, so anything deeper was not made by it and is refused rather than
/// walked without bound.
const MAX_REMOVE_DEPTH: usize = 3;

/// The volume's root directory, opened once with `O_NOFOLLOW`. Every write below goes through this
/// handle (`openat`, `mkdirat`, `symlinkat`, `renameat`, `unlinkat`) and never follows a symlink,
/// so nothing planted in the volume can redirect a write onto the host.
#[derive(Debug)]
pub struct VolumeRoot {
    dir: OwnedFd,
    path: PathBuf,
}

impl VolumeRoot {
    /// Opens `path`, which must be a directory and not a symlink.
    pub fn open(path: &Path) -> Result<Self, CsiError> {
        let dir = open_dir(CWD, path).map_err(|errno| {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let name = path.file_name().unwrap_or(path.as_os_str());
            match open_dir(CWD, parent) {
                Ok(parent) => refused(parent.as_fd(), name, path, "open", errno),
                Err(_) => io_error("open", path, errno),
            }
        })?;
        Ok(Self {
            dir,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// Replaces the visible file set under `root` with `files`, atomically. Each top-level name is a
/// symlink into `..data`, created in the order of `files` (a name that does not exist yet appears
/// only after the ones before it); names no longer present disappear; old generations are removed. A
/// symlink met where the writer expects its own directory or a new file is an error
/// ([`CsiError::Symlink`]), never followed.
pub fn write_atomically(
    root: &VolumeRoot,
    files: &[VolumeFile],
    fs_group: Option<u32>,
) -> Result<(), CsiError> {
    let dir_mode = if fs_group.is_some() { 0o750 } else { 0o755 };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let generation = format!("..{nanos}.{}", GENERATION.fetch_add(1, Ordering::Relaxed));
    let generation_path = root.path.join(&generation);
    let generation_dir = make_dir(root.fd(), &generation, &generation_path, dir_mode, fs_group)?;

    let mut subdirs: BTreeMap<&str, OwnedFd> = BTreeMap::new();
    let mut top_level = BTreeSet::new();
    let mut link_order = Vec::new();
    for entry in files {
        let path = generation_path.join(&entry.path);
        let (dir, name) = match entry.path.split_once('/') {
            None => (generation_dir.as_fd(), entry.path.as_str()),
            Some((sub, name)) if !name.contains('/') => {
                let dir: &OwnedFd = match subdirs.entry(sub) {
                    Entry::Occupied(opened) => opened.into_mut(),
                    Entry::Vacant(vacant) => {
                        let sub_path = generation_path.join(sub);
                        let fd =
                            make_dir(generation_dir.as_fd(), sub, &sub_path, dir_mode, fs_group)?;
                        vacant.insert(fd)
                    }
                };
                (dir.as_fd(), name)
            }
            Some(_) => {
                return Err(CsiError::Render(format!(
                    "{}: more than one directory level",
                    entry.path
                )));
            }
        };
        write_file(dir, name, &path, &entry.contents, entry.mode, fs_group)?;
        let first = entry.path.split('/').next().unwrap_or(&entry.path);
        if top_level.insert(first.to_owned()) {
            link_order.push(first.to_owned());
        }
    }
    drop(subdirs);
    drop(generation_dir);

    // The switch: a new `..data` link renamed over the old one.
    replace_with_symlink(root, &generation, DATA_LINK_TMP, DATA_LINK)?;
    for name in &link_order {
        let wanted = format!("{DATA_LINK}/{name}");
        let current = rustix::fs::readlinkat(root.fd(), name.as_str(), Vec::new());
        if current.is_ok_and(|target| target.as_bytes() == wanted.as_bytes()) {
            continue;
        }
        // Missing, or something else under our name: our link goes over it.
        replace_with_symlink(root, &wanted, &format!("..{name}.tmp"), name)?;
    }
    remove_stale(root, &generation, &top_level)
}

/// Clean up: visible links whose name is no longer written, and old generations.
fn remove_stale(
    root: &VolumeRoot,
    generation: &str,
    top_level: &BTreeSet<String>,
) -> Result<(), CsiError> {
    for (name, kind) in list(root.fd(), &root.path)? {
        let bytes = name.as_bytes();
        if bytes.starts_with(b"..") {
            let old_generation = kind == FileType::Directory
                && bytes != generation.as_bytes()
                && bytes != DATA_LINK.as_bytes();
            if old_generation {
                remove_tree(root.fd(), &name, &root.path.join(&name), 0)?;
            }
        } else if kind == FileType::Symlink && !name.to_str().is_some_and(|n| top_level.contains(n))
        {
            let path = root.path.join(&name);
            rustix::fs::unlinkat(root.fd(), name.as_os_str(), AtFlags::empty())
                .map_err(|e| io_error("remove", &path, e))?;
        }
    }
    Ok(())
}

/// `staged` -> `target`, renamed over `name`: `rename` replaces a symlink or file at `name`
/// itself and never follows it.
fn replace_with_symlink(
    root: &VolumeRoot,
    target: &str,
    staged: &str,
    name: &str,
) -> Result<(), CsiError> {
    let staged_path = root.path.join(staged);
    match rustix::fs::unlinkat(root.fd(), staged, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(io_error("remove", &staged_path, e)),
    }
    rustix::fs::symlinkat(target, root.fd(), staged)
        .map_err(|e| io_error("symlink", &staged_path, e))?;
    let path = root.path.join(name);
    rustix::fs::renameat(root.fd(), staged, root.fd(), name)
        .map_err(|e| io_error("rename into", &path, e))
}

/// Creates directory `name` in `parent` and opens it without following a symlink.
fn make_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    mode: u32,
    fs_group: Option<u32>,
) -> Result<OwnedFd, CsiError> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode))
        .map_err(|e| refused(parent, name.as_ref(), path, "create", e))?;
    let dir =
        open_dir(parent, name).map_err(|e| refused(parent, name.as_ref(), path, "open", e))?;
    // The umask may have narrowed the mode.
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(|e| io_error("chmod", path, e))?;
    if let Some(gid) = fs_group {
        std::os::unix::fs::fchown(&dir, None, Some(gid)).map_err(CsiError::io("chown", path))?;
    }
    Ok(dir)
}

/// Creates file `name` in `dir`: `O_CREAT|O_EXCL` fails on anything already there, a symlink
/// included, so a write never lands outside the volume.
fn write_file(
    dir: BorrowedFd<'_>,
    name: &str,
    path: &Path,
    contents: &[u8],
    mode: u32,
    fs_group: Option<u32>,
) -> Result<(), CsiError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))
        .map_err(|e| refused(dir, name.as_ref(), path, "create", e))?;
    let mut file = File::from(fd);
    if let Some(gid) = fs_group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(CsiError::io("chown", path))?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(CsiError::io("chmod", path))?;
    file.write_all(contents)
        .map_err(CsiError::io("write", path))
}

/// Removes directory `name` in `parent` and everything in it, relative to opened handles: a
/// symlink inside is unlinked, never followed.
fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    depth: usize,
) -> Result<(), CsiError> {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(CsiError::Io {
            action: "remove",
            path: path.to_owned(),
            source: std::io::Error::other("nested deeper than the writer makes"),
        });
    }
    let dir = open_dir(parent, name).map_err(|e| refused(parent, name, path, "open", e))?;
    for (child, kind) in list(dir.as_fd(), path)? {
        let child_path = path.join(&child);
        if kind == FileType::Directory {
            remove_tree(dir.as_fd(), &child, &child_path, depth + 1)?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_os_str(), AtFlags::empty())
                .map_err(|e| io_error("remove", &child_path, e))?;
        }
    }
    drop(dir);
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(|e| io_error("remove", path, e))
}

/// The entries of `dir` (without `.` and `..`) and their types, as `lstat` would give them.
fn list(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<(OsString, FileType)>, CsiError> {
    let entries = Dir::read_from(dir).map_err(|e| io_error("list", path, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", path, e))?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name = OsStr::from_bytes(bytes).to_owned();
        let kind = match entry.file_type() {
            FileType::Unknown => {
                rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|stat| FileType::from_raw_mode(stat.st_mode))
                    .map_err(|e| io_error("inspect", &path.join(&name), e))?
            }
            known => known,
        };
        out.push((name, kind));
    }
    Ok(out)
}

fn open_dir<Fd: AsFd, P: rustix::path::Arg>(parent: Fd, name: P) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The error for a failed `*at` call on `name` in `parent`: a symlink in the way (the kernel says
/// ELOOP, ENOTDIR or EEXIST depending on the call) gets [`CsiError::Symlink`].
fn refused(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    action: &'static str,
    errno: Errno,
) -> CsiError {
    let symlink = matches!(errno, Errno::LOOP | Errno::NOTDIR | Errno::EXIST)
        && rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
    if symlink {
        CsiError::Symlink(path.to_owned())
    } else {
        io_error(action, path, errno)
    }
}

fn io_error(action: &'static str, path: &Path, errno: Errno) -> CsiError {
    CsiError::Io {
        action,
        path: path.to_owned(),
        source: errno.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::files::content::file;

    fn files(names: &[(&str, &str)]) -> Vec<VolumeFile> {
        names
            .iter()
            .map(|(p, c)| file(p, c.as_bytes().to_vec(), 0o644))
            .collect()
    }

    fn generations(root: &Path) -> usize {
        fs::read_dir(root)
            .expect("list")
            .filter(|e| {
                let e = e.as_ref().expect("entry");
                e.file_name().to_string_lossy().starts_with("..")
                    && e.file_type().expect("type").is_dir()
            })
            .count()
    }

    #[test]
    fn swaps_the_whole_set_and_drops_stale_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let handle = VolumeRoot::open(root).expect("open");
        write_atomically(
            &handle,
            &files(&[("a.pem", "1"), ("fed/x.pem", "x1")]),
            None,
        )
        .expect("first");
        assert_eq!(fs::read_to_string(root.join("a.pem")).expect("a"), "1");
        assert_eq!(fs::read_to_string(root.join("fed/x.pem")).expect("x"), "x1");
        write_atomically(&handle, &files(&[("a.pem", "2"), ("b.pem", "b")]), None).expect("second");
        assert_eq!(fs::read_to_string(root.join("a.pem")).expect("a"), "2");
        assert_eq!(fs::read_to_string(root.join("b.pem")).expect("b"), "b");
        assert!(
            fs::symlink_metadata(root.join("fed")).is_err(),
            "stale link removed"
        );
        assert_eq!(generations(root), 1, "old generation removed");
        assert!(
            fs::symlink_metadata(root.join("a.pem"))
                .expect("a")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn the_root_itself_must_not_be_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("real");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        assert!(matches!(VolumeRoot::open(&link), Err(CsiError::Symlink(p)) if p == link));
    }

    #[test]
    fn planted_links_are_replaced_or_refused_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("volume");
        fs::create_dir(&root).expect("root");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("outside");
        let victim = outside.join("victim");
        fs::write(&victim, "host file").expect("victim");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("plant");
        };
        // Visible names and the writer's own staging names, pointing out of the volume.
        link(&victim, "a.pem");
        link(&outside, "fed");
        link(&victim, "..data_tmp");
        link(&victim, "..a.pem.tmp");
        link(&outside, "..data");
        let handle = VolumeRoot::open(&root).expect("open");
        let set = files(&[("a.pem", "mine"), ("fed/x.pem", "x")]);
        write_atomically(&handle, &set, None).expect("write over planted links");
        assert_eq!(fs::read_to_string(root.join("a.pem")).expect("a"), "mine");
        assert_eq!(fs::read_to_string(root.join("fed/x.pem")).expect("x"), "x");
        assert_eq!(
            fs::read_link(root.join("fed")).expect("fed"),
            Path::new("..data/fed")
        );
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "host file");
        assert_eq!(
            fs::read_dir(&outside).expect("outside").count(),
            1,
            "nothing new outside"
        );

        // A directory where a visible link goes cannot be renamed over: a clear error.
        fs::remove_file(root.join("a.pem")).expect("unlink");
        fs::create_dir(root.join("a.pem")).expect("planted dir");
        let error = write_atomically(&handle, &set, None).expect_err("a directory in the way");
        assert!(error.to_string().contains("a.pem"), "{error}");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "host file");
    }

    #[test]
    fn a_symlink_where_a_new_file_or_directory_goes_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("outside");
        let victim = outside.join("victim");
        fs::write(&victim, "host file").expect("victim");
        let root = dir.path().join("volume");
        fs::create_dir(&root).expect("root");
        std::os::unix::fs::symlink(&victim, root.join("svid.pem")).expect("plant file link");
        std::os::unix::fs::symlink(&outside, root.join("federated")).expect("plant dir link");
        let handle = VolumeRoot::open(&root).expect("open");

        let written = write_file(
            handle.fd(),
            "svid.pem",
            &root.join("svid.pem"),
            b"x",
            0o644,
            None,
        );
        assert!(matches!(written, Err(CsiError::Symlink(_))), "{written:?}");
        let made = make_dir(
            handle.fd(),
            "federated",
            &root.join("federated"),
            0o755,
            None,
        );
        assert!(matches!(made, Err(CsiError::Symlink(_))), "{made:?}");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "host file");

        // Removing a tree unlinks a link inside it and leaves what it points at alone.
        fs::create_dir(root.join("..old")).expect("old generation");
        std::os::unix::fs::symlink(&outside, root.join("..old/fed")).expect("plant");
        remove_tree(handle.fd(), OsStr::new("..old"), &root.join("..old"), 0).expect("remove");
        assert!(!root.join("..old").exists());
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "host file");
    }
}
