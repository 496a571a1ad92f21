//! wimsey's pause image: the process that holds a pod sandbox's namespaces.
//!
//! It blocks SIGTERM, SIGINT and SIGCHLD and waits for them with `sigwait` (so it works as PID 1, where
//! the kernel drops signals that have the default action): it reaps children on SIGCHLD (pods that share
//! a PID namespace make it their init) and exits 0 on SIGTERM or SIGINT.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("wimsey-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(sig);
    }
    if let Err(err) = set.thread_block() {
        eprintln!("wimsey-pause: cannot block signals: {err}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap_children(),
            Ok(sig) => {
                eprintln!("wimsey-pause: shutting down, got {sig}");
                std::process::exit(0);
            }
            Err(err) => {
                eprintln!("wimsey-pause: sigwait: {err}");
                std::process::exit(1);
            }
        }
    }
}

fn reap_children() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
