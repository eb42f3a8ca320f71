//! Leases of in-flight puts and gets, kept in `sessions/`.
//!
//! A session file says "this process may still reference chunks it found in
//! the index". GC (a later stage) deletes nothing condemned while a session
//! that was live at condemnation is still live. A session renews its file
//! from a background thread; a put checks, just before publishing its ref,
//! that it renewed within its lease — a process paused past its lease (SIGSTOP,
//! a hung NFS mount) gives up instead of publishing a ref that GC may already
//! have broken.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::unique_suffix;

/// Store directory of sessions.
pub const SESSIONS_DIR: &str = "sessions";
/// Default lease; `IMGSTORE_LEASE_SECS` overrides it (tests use short ones).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(600);

/// The contents of a session file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// `put` or `get`.
    pub kind: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// User name.
    pub user: String,
    /// Start, seconds since the epoch (host clock; informational).
    pub started: u64,
    /// Lease length in seconds.
    pub lease_secs: u64,
}

/// The lease length in force for this process.
pub fn lease() -> Duration {
    std::env::var("IMGSTORE_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LEASE)
}

/// Seconds since the epoch by this host's clock.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This host's name.
pub fn hostname() -> String {
    std::env::var("IMGSTORE_HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The user running this process: the password database's name for the
/// effective uid (cron jobs and systemd units often set no `$USER`), else
/// `$USER`, else `uid <n>`.
pub fn username() -> String {
    // SAFETY: geteuid cannot fail; getpwuid_r writes only into `pwd` and
    // `buf`, whose sizes it is given, and `pw_name` points into `buf`.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0u8; 16 << 10];
    #[allow(unsafe_code)]
    let name = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found);
        (rc == 0 && !found.is_null() && !pwd.pw_name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned()
        })
    };
    name.filter(|n| !n.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// A live session; ends (and removes its file) on [`Session::end`] or drop.
pub struct Session {
    backend: Arc<dyn Backend>,
    key: String,
    lease: Duration,
    last_renewal: Arc<Mutex<Instant>>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl Session {
    /// Writes a session file and starts renewing it.
    pub fn start(backend: Arc<dyn Backend>, kind: &str) -> Result<Session> {
        let lease = lease();
        let record = SessionRecord {
            kind: kind.into(),
            host: hostname(),
            pid: std::process::id(),
            user: username(),
            started: now_unix(),
            lease_secs: lease.as_secs(),
        };
        let key = format!("{SESSIONS_DIR}/{}-{}.json", kind, unique_suffix());
        let bytes = serde_json::to_vec_pretty(&record).expect("session serializes");
        backend.put(&key, &bytes)?;
        let last_renewal = Arc::new(Mutex::new(Instant::now()));
        let (stop, stopped) = mpsc::channel();
        let renewer = {
            let (to, name, last) = (backend.clone(), key.clone(), last_renewal.clone());
            let spawned = std::thread::Builder::new()
                .name("imgstore-lease".into())
                .spawn(move || loop {
                    match stopped.recv_timeout(lease / 4) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let mut last = last.lock().expect("lease mutex");
                    // Woken too late (the process was stopped, the machine
                    // stalled): the lease already lapsed and GC may have acted
                    // on that. Renewing now would hide it from check().
                    if last.elapsed() > lease {
                        return;
                    }
                    // A failed renewal is not fatal here: check() notices the
                    // stale lease before anything is published. A renewal
                    // counts from when it was sent: one that a pause (SIGSTOP,
                    // a hung mount) held up landed late in the store, where gc
                    // may already have judged the session dead, and timed from
                    // its end it hid that pause from check() (found by
                    // gc::gc_paused_past_its_lease_aborts under load: the
                    // process stopped inside the renewal's put).
                    let sent = Instant::now();
                    if to.put(&name, &bytes).is_ok() {
                        *last = sent;
                    }
                });
            match spawned {
                Ok(h) => h,
                Err(e) => {
                    let _ = backend.delete(&key);
                    return Err(Error::threads("the session's lease renewal", e));
                }
            }
        };
        Ok(Session {
            backend,
            key,
            lease,
            last_renewal,
            stop: Some(stop),
            renewer: Some(renewer),
        })
    }

    /// Fails if the lease was not renewed within its length, or if the
    /// session file is gone (a GC judged this session dead).
    pub fn check(&self) -> Result<()> {
        let since = self.last_renewal.lock().expect("lease mutex").elapsed();
        if since > self.lease {
            return Err(Error::LeaseExpired {
                detail: format!(
                    "last renewed {}s ago, lease is {}s",
                    since.as_secs(),
                    self.lease.as_secs()
                ),
            });
        }
        if self.backend.head(&self.key)?.is_none() {
            return Err(Error::LeaseExpired {
                detail: format!("session file {} was removed", self.key),
            });
        }
        Ok(())
    }

    /// Stops renewing and removes the session file.
    pub fn end(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            if let Some(h) = self.renewer.take() {
                let _ = h.join();
            }
            self.backend.delete(&self.key)?;
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_comes_from_the_password_database() {
        // This process's uid has a passwd entry on any sane test machine;
        // its name is what `id -un` prints, whatever $USER says.
        let id = std::process::Command::new("id").arg("-un").output().unwrap();
        assert_eq!(username(), String::from_utf8_lossy(&id.stdout).trim());
    }
}
