//! Mounting as a user: the setuid `fusermount3` mounts and hands back the
//! open /dev/fuse over a socket (libfuse's protocol), and unmounts.
//!
//! fuser would try `mount(2)` first, and it needs /dev/fuse open for that:
//! where /dev/fuse is root's only (mode 0600, as in some containers), a
//! user's mount fails there with EACCES before fusermount3 is tried. A user
//! always goes through fusermount3 here, as `mount(2)` of FUSE needs root.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::cmd::{Failed, UsageError};

/// The mount helpers, newest first (Debian's `fuse3` has the first; `fuse`,
/// libfuse 2, the second).
const TOOLS: [&str; 2] = ["fusermount3", "fusermount"];

/// The first mount helper on `PATH`.
pub fn tool() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in TOOLS {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Failed {
        code: crate::exit::OTHER,
        message: "mounting as a user needs fusermount3 on PATH (Debian and Ubuntu: \
                  `apt install fuse3`); or mount as root"
            .into(),
    }
    .into())
}

/// Mounts a FUSE filesystem on `dir` (canonical) with `options` (as for
/// `mount -o`) and returns the /dev/fuse it is served through.
pub fn mount(tool: &Path, dir: &Path, options: &[String]) -> Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(tool);
    cmd.arg("-o")
        .arg(options.join(","))
        .arg("--")
        .arg(dir)
        .env("_FUSE_COMMFD", fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: fcntl is async-signal-safe, as pre_exec requires; `fd` stays
    // open in the parent until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", tool.display()))?;
    // Ours alone must be open, so a helper that exits without sending
    // ends the wait below with end-of-file.
    drop(theirs);
    let received = receive_fd(&ours);
    let out = child.wait_with_output()?;
    match received {
        Ok(Some(fd)) => {
            // SAFETY: sets close-on-exec on a descriptor this process owns.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            Ok(fd)
        }
        Ok(None) | Err(_) => Err(refused(tool, dir, &String::from_utf8_lossy(&out.stderr))),
    }
}

/// Unmounts `dir`; if it is busy (files open on it), detaches it instead:
/// no new opens, and it goes once the last file on it is closed.
pub fn unmount(tool: &Path, dir: &Path) -> bool {
    let run = |lazy: bool| {
        let mut cmd = Command::new(tool);
        cmd.arg("-u").arg("-q");
        if lazy {
            cmd.arg("-z");
        }
        cmd.arg("--")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    run(false) || run(true)
}

/// The helper's complaint as one line that says what to do.
fn refused(tool: &Path, dir: &Path, stderr: &str) -> anyhow::Error {
    let said = stderr.trim().lines().last().unwrap_or("").trim().to_string();
    if said.contains("user_allow_other") {
        return UsageError(format!(
            "--allow-other as a user needs the line `user_allow_other` in /etc/fuse.conf \
             (an administrator adds it); {} said: {said}",
            tool.display()
        ))
        .into();
    }
    let hint = if said.contains("/dev/fuse") && said.contains("Permission denied") {
        " (a user needs /dev/fuse read-write for all, mode 0666, as udev makes it on a host: \
         an administrator runs `chmod 0666 /dev/fuse`)"
    } else if said.contains("Permission denied") || said.contains("not permitted") {
        " (in a container: it needs /dev/fuse and CAP_SYS_ADMIN, and fusermount3 setuid root)"
    } else {
        ""
    };
    anyhow::anyhow!(
        "cannot mount on {}: {} said: {}{hint}",
        dir.display(),
        tool.display(),
        if said.is_empty() { "nothing" } else { &said }
    )
}

/// The descriptor fusermount sends (SCM_RIGHTS with one byte), or `None`
/// if it closed the socket first.
fn receive_fd(sock: &UnixStream) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors in this
            // process; each is owned once.
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if !owned.is_empty() {
                return Ok(Some(owned.swap_remove(0)));
            }
        }
    }
    Ok(None)
}

/// `fsname=...` for the helper's option list: commas and backslashes escaped.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace(',', "\\,")
}
