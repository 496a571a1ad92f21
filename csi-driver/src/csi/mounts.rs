//! Mount operations through nix's safe wrappers, and mount-point detection from
//! `/proc/self/mountinfo` (exact path match, as spiffe-csi does after its duplicate-mount bug).

use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::error::CsiError;

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mount_point(path: &Path) -> Result<bool, CsiError> {
    let mountinfo = "/proc/self/mountinfo";
    let text =
        std::fs::read_to_string(mountinfo).map_err(CsiError::io("read", Path::new(mountinfo)))?;
    Ok(mountinfo_has(&text, path))
}

/// Whether the mountinfo `text` lists `path` as a mount point (field 5, octal-unescaped).
pub fn mountinfo_has(text: &str, path: &Path) -> bool {
    let wanted = path.as_os_str().as_encoded_bytes();
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| unescape_octal(field) == wanted)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// What every mount the plugin makes for a pod carries: nothing in an identity volume is a
/// program or a device.
const POD_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Bind-mounts `source` at `target`, then remounts the bind read-only (a bind mount ignores
/// MS_RDONLY on the first call, and the remount sets every per-mount flag, so nosuid, nodev and
/// noexec are given again).
pub fn bind_mount_readonly(source: &Path, target: &Path) -> Result<(), CsiError> {
    bind_mount(source, target, MsFlags::MS_RDONLY)
}

/// Bind-mounts `source` at `target` writable: the files writer's own view of a tmpfs that the pod
/// only sees read-only.
pub fn bind_mount_writable(source: &Path, target: &Path) -> Result<(), CsiError> {
    bind_mount(source, target, MsFlags::empty())
}

fn bind_mount(source: &Path, target: &Path, extra: MsFlags) -> Result<(), CsiError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(CsiError::mount("bind mount onto", target))?;
    let remounted = mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | POD_MOUNT_FLAGS | extra,
        None::<&str>,
    )
    .map_err(CsiError::mount("remount", target));
    if remounted.is_err() {
        // Never leave a bind with other flags than asked for behind.
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
    remounted
}

/// Mounts a tmpfs at `target` with `options` (e.g. `size=1m,mode=0755`).
pub fn mount_tmpfs(target: &Path, options: &str) -> Result<(), CsiError> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        POD_MOUNT_FLAGS,
        Some(options),
    )
    .map_err(CsiError::mount("mount tmpfs on", target))
}

/// tmpfs options for a files volume: its size and inode caps, and the root's mode and group.
pub fn files_tmpfs_options(size: &str, inodes: u64, fs_group: Option<u32>) -> String {
    match fs_group {
        Some(gid) => format!("size={size},nr_inodes={inodes},mode=0750,gid={gid}"),
        None => format!("size={size},nr_inodes={inodes},mode=0755"),
    }
}

/// Validates a tmpfs `size=` value for the command line: digits with an optional `k`, `m` or `g`,
/// not zero (tmpfs reads 0 as unlimited). Nothing else reaches the mount options.
pub fn parse_tmpfs_size(value: &str) -> Result<String, String> {
    let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    let suffixes = value.len() - digits.len();
    let number = digits.parse::<u64>().ok().filter(|_| {
        suffixes <= 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    match number {
        Some(0) => Err(format!(
            "{value:?}: a zero size would leave the tmpfs unbounded"
        )),
        Some(_) => Ok(value.to_owned()),
        None => Err(format!(
            "{value:?} is not a tmpfs size (digits with an optional k, m or g, e.g. 1m)"
        )),
    }
}

/// Unmounts every mount stacked on `path` without reading mountinfo: `umount` until the kernel
/// says it is not a mount point. For the plugin's own directories, which are never symlinks.
pub fn unmount_stack(path: &Path) -> Result<(), CsiError> {
    for _ in 0..64 {
        match umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(CsiError::mount("detach", path))?;
            }
            Err(e) => return Err(CsiError::mount("unmount", path)(e)),
        }
    }
    Err(CsiError::Io {
        action: "unmount (still mounted after 64 unmounts)",
        path: path.to_owned(),
        source: io::Error::other("stacked mounts"),
    })
}

/// Unmounts every mount stacked on `target`; a path that is not mounted is fine.
pub fn unmount_all(target: &Path) -> Result<(), CsiError> {
    // Bounded: a target stacked by some earlier bug must not loop forever.
    for _ in 0..64 {
        if !is_mount_point(target)? {
            return Ok(());
        }
        match umount2(target, MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            // Something on the host still has a file open: detach now, the kernel frees the
            // mount when the last user goes, and the pod is gone already.
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH).map_err(CsiError::mount("detach", target))?
            }
            Err(e) => return Err(CsiError::mount("unmount", target)(e)),
        }
    }
    Err(CsiError::Io {
        action: "unmount (still mounted after 64 unmounts)",
        path: target.to_owned(),
        source: io::Error::other("stacked mounts"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_escaped_mount_points_exactly() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /mnt/a rw - tmpfs tmpfs rw\n";
        assert!(mountinfo_has(text, Path::new("/mnt/with space")));
        assert!(mountinfo_has(text, Path::new("/mnt/a")));
        assert!(!mountinfo_has(text, Path::new("/mnt")));
        assert!(!mountinfo_has(text, Path::new("/mnt/a/b")));
    }

    #[test]
    fn tmpfs_sizes_are_bounded_and_cannot_add_options() {
        for good in ["1m", "512k", "2G", "1048576"] {
            assert_eq!(parse_tmpfs_size(good).as_deref(), Ok(good));
        }
        for bad in [
            "0",
            "0m",
            "",
            "m",
            "1mm",
            "1m,nr_inodes=0",
            "-1m",
            "1.5m",
            "10%",
        ] {
            assert!(parse_tmpfs_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            files_tmpfs_options("1m", 1024, Some(4321)),
            "size=1m,nr_inodes=1024,mode=0750,gid=4321"
        );
        assert_eq!(
            files_tmpfs_options("2m", 64, None),
            "size=2m,nr_inodes=64,mode=0755"
        );
    }
}
