//! `imgstore mount`: every image of a store as a read-only file (FUSE).
//!
//! The tree is in [`tree`], the filesystem in [`fs`]; this module mounts
//! it, serves until SIGINT, SIGTERM or SIGHUP (or an outside unmount), and
//! unmounts.

mod fs;
mod fusermount;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
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
    if a.daemon {
        return daemon(g, a);
    }
    // Before any thread starts (an object store's runtime, the reader's
    // pool): every thread inherits the mask, so only `wait_for_signal`
    // takes these signals.
    let signals = block_signals();
    for n in &a.names {
        imgstore_store::refs::check_name(n)?;
    }
    check_mountpoint(&a.mountpoint)?;
    check_dev_fuse()?;
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
    // SAFETY: a plain getter with no preconditions.
    let (session, mut unmounter) = if unsafe { libc::geteuid() } == 0 {
        let mut session = fuser::Session::new(fs, &a.mountpoint, &config).with_context(|| {
            format!(
                "cannot mount on {} (in a container this needs /dev/fuse and CAP_SYS_ADMIN)",
                a.mountpoint.display()
            )
        })?;
        let unmounter = Unmounter::Kernel(session.unmount_callable());
        (session, unmounter)
    } else {
        let tool = fusermount::tool()?;
        let dir = std::fs::canonicalize(&a.mountpoint)
            .map_err(|e| UsageError(format!("mount point {}: {e}", a.mountpoint.display())))?;
        let mut options: Vec<String> = ["ro", "nodev", "nosuid", "subtype=imgstore", "default_permissions"]
            .map(String::from)
            .into();
        options.push(format!(
            "fsname={}",
            fusermount::escape(&format!("imgstore:{location}"))
        ));
        if a.allow_other {
            options.push("allow_other".into());
        }
        let fd = fusermount::mount(&tool, &dir, &options)?;
        let acl = config.acl;
        let session = fuser::Session::from_fd(fs, fd, acl, config)
            .with_context(|| format!("starting the FUSE session on {}", dir.display()))?;
        (session, Unmounter::Helper { tool, dir })
    };
    let _pid_file = match &a.pid_file {
        Some(p) => Some(PidFile::write(p)?),
        None => None,
    };
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
            unmounter.unmount(&a.mountpoint);
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok(Event::Ended(r)) => {
                    let _ = serving.join();
                    r.context("serving the mount")
                }
                _ => Ok(()),
            }
        }
    }
}

/// Starts this command again without `--daemon` in its own session, and
/// returns once it has mounted (and written its pid file), or fails with
/// its exit code if it ended first.
fn daemon(g: &Global, a: &MountArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    check_mountpoint(&a.mountpoint)?;
    let dir = std::fs::canonicalize(&a.mountpoint)
        .map_err(|e| UsageError(format!("mount point {}: {e}", a.mountpoint.display())))?;
    let exe = std::env::current_exe().context("finding this program to start it again")?;
    let args = std::env::args_os().skip(1).filter(|x| x != "--daemon");
    let mut cmd = std::process::Command::new(exe);
    // Its "mounted" line would tell to press Ctrl-C: this process says what happened.
    cmd.arg("--quiet")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount process")?;
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(crate::cmd::Failed {
                code: status.code().unwrap_or(crate::exit::OTHER),
                message: format!("the mount process ended ({status}) before it mounted"),
            }
            .into());
        }
        let ready = is_mounted(&dir) && a.pid_file.as_ref().is_none_or(|p| p.exists());
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "the mount process (pid {}) has not mounted {} after 60 s",
                child.id(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !g.quiet {
        eprintln!("mounted on {} by process {}", dir.display(), child.id());
    }
    Ok(())
}

/// Whether `dir` (canonical) is a mount point, per /proc/self/mounts.
fn is_mounted(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    // /proc/self/mounts escapes spaces and the like as octal.
    let want = dir
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// This process's id in a file, removed when dropped.
struct PidFile(std::path::PathBuf);

impl PidFile {
    /// Written beside and renamed into place: whoever sees the file sees
    /// the whole number.
    fn write(p: &Path) -> Result<PidFile> {
        let mut tmp = p.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, p))
            .with_context(|| format!("writing the pid file {}", p.display()))?;
        Ok(PidFile(p.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How to unmount what this process mounted.
enum Unmounter {
    /// Mounted by `mount(2)` (as root).
    Kernel(fuser::SessionUnmounter),
    /// Mounted by a setuid helper (as a user), which unmounts it too.
    Helper { tool: PathBuf, dir: PathBuf },
}

impl Unmounter {
    /// Unmounts; with files open on it, detaches it (no new opens) instead:
    /// readers still on it get errors once this process exits.
    fn unmount(&mut self, shown: &Path) {
        match self {
            Unmounter::Kernel(u) => {
                if let Err(e) = u.unmount() {
                    tracing::warn!(
                        "unmounting {}: {e}; detaching it while files are open",
                        shown.display()
                    );
                    detach(shown);
                }
            }
            Unmounter::Helper { tool, dir } => {
                if !fusermount::unmount(tool, dir) {
                    tracing::warn!(
                        "could not unmount {}: unmount it with `{} -u -z {0}`",
                        dir.display(),
                        tool.display()
                    );
                }
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

/// A clear error where FUSE is missing, before the store is opened.
fn check_dev_fuse() -> Result<()> {
    if Path::new("/dev/fuse").exists() {
        return Ok(());
    }
    Err(crate::cmd::Failed {
        code: crate::exit::OTHER,
        message: "/dev/fuse is absent: load the fuse module (`modprobe fuse`), or give the \
                  container the device (`docker run --device /dev/fuse --cap-add SYS_ADMIN`)"
            .into(),
    }
    .into())
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
