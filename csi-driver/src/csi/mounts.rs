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

/// Bind-mounts `source` at `target`, then remounts the bind read-only (a bind mount ignores
/// MS_RDONLY on the first call).
pub fn bind_mount_readonly(source: &Path, target: &Path) -> Result<(), CsiError> {
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
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(CsiError::mount("remount read-only", target));
    if remounted.is_err() {
        // Never leave a writable bind behind.
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
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(CsiError::mount("mount tmpfs on", target))
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
}
