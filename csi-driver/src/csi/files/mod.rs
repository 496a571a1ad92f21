//! The `files` mode: what goes in the volume ([`content`], a plain function of the snapshot) and
//! the atomic writer ([`atomic`]: kubelet's scheme, a fresh `..<generation>` directory, then the
//! `..data` symlink renamed over, so a reader sees either the old set or the new one, never a mix).
//!
//! The pod sees the volume read-only, so it cannot plant anything in it; the writer still never
//! trusts a name in it: every call is relative to the root's opened handle and never follows a
//! symlink, so even a planted link can only make a write fail, not land on the host.
//!
//! [`writer`] keeps a volume's files current: it rewrites them on every snapshot change, re-mints
//! JWT-SVIDs at half-life and retries a failed write with backoff.

pub mod atomic;
pub mod content;
pub mod writer;

pub use atomic::{VolumeRoot, write_atomically};
pub use content::{VolumeFile, render_files};
pub use writer::run_files_writer;
