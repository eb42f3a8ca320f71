//! `imgstore mount`: every image of a store as a read-only file (FUSE).
//!
//! The tree is in [`tree`], the filesystem in [`fs`]; this module mounts
//! it, serves until SIGINT, SIGTERM or SIGHUP (or an outside unmount), and
//! unmounts.

mod fs;
mod tree;

use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fuser::{MountOption, SessionACL};

use crate::args::{Global, MountArgs};
use crate::cmd::UsageError;

/// What ends the serving loop.
enum Event {
    Signal(i32),
    Ended(io::Result<()>),
}

pub fn run(g: &Global, a: &MountArgs) -> Result<()> {
    // Before any thread starts (an object store's runtime, the reader's
    // pool): every thread inherits the mask, so only `wait_for_signal`
    // takes these signals.
    let signals = block_signals();
    for n in &a.names {
        imgstore_store::refs::check_name(n)?;
    }
    check_mountpoint(&a.mountpoint)?;
    let store = Arc::new(crate::cmd::open(g)?);
    let location = store.location();
    let fs = fs::ImageFs::new(store, a.names.clone())?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(format!("imgstore:{location}")),
        MountOption::Subtype("imgstore".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = if a.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(4);
    let mut session = fuser::Session::new(fs, &a.mountpoint, &config).with_context(|| {
        format!(
            "cannot mount on {} (as a user this needs fusermount3 from the fuse3 package, \
             and /dev/fuse in a container)",
            a.mountpoint.display()
        )
    })?;
    let mut unmounter = session.unmount_callable();
    let (tx, rx) = mpsc::channel();
    let ended = tx.clone();
    let serving = std::thread::Builder::new()
        .name("imgstore-mount".into())
        .spawn(move || {
            let _ = ended.send(Event::Ended(session.run()));
        })?;
    std::thread::Builder::new()
        .name("imgstore-signals".into())
        .spawn(move || {
            let _ = tx.send(Event::Signal(wait_for_signal(&signals)));
        })?;
    if !g.quiet {
        eprintln!(
            "mounted {location} on {} (read-only); Ctrl-C or SIGTERM unmounts",
            a.mountpoint.display()
        );
    }
    match rx.recv().expect("a sender lives") {
        Event::Ended(r) => {
            let _ = serving.join();
            r.context("serving the mount")
        }
        Event::Signal(sig) => {
            tracing::info!("signal {sig}: unmounting {}", a.mountpoint.display());
            if let Err(e) = unmounter.unmount() {
                // Files are open on it: detach it now (no new opens) and end;
                // readers still on it get errors once this process exits.
                tracing::warn!(
                    "unmounting {}: {e}; detaching it while files are open",
                    a.mountpoint.display()
                );
                detach(&a.mountpoint);
            }
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Event::Ended(r)) => {
                    let _ = serving.join();
                    r.context("serving the mount")
                }
                _ => Ok(()),
            }
        }
    }
}

/// A clear error for a mount point that is not a directory, or is a dead
/// FUSE mount left by a killed process.
fn check_mountpoint(p: &Path) -> Result<()> {
    // The kernel may answer a stat of a dead mount from its cache; listing
    // it reaches the dead connection.
    match std::fs::metadata(p).and_then(|m| std::fs::read_dir(p).map(|_| m)) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(UsageError(format!("{} is not a directory", p.display())).into()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(UsageError(format!(
            "{} is a dead FUSE mount (its process ended without unmounting): run \
             `fusermount3 -u -z {0}` (or `umount -l {0}` as root), then mount again",
            p.display()
        ))
        .into()),
        Err(e) => Err(UsageError(format!("mount point {}: {e}", p.display())).into()),
    }
}

/// Lazily unmounts `p`: directly as root, else through fusermount3 or fusermount.
fn detach(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    for tool in ["fusermount3", "fusermount"] {
        let done = std::process::Command::new(tool)
            .args(["-u", "-z"])
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        if done {
            return;
        }
    }
    tracing::warn!(
        "could not detach {}: unmount it with `fusermount3 -u -z`",
        p.display()
    );
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialized signal set; `sig` a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
