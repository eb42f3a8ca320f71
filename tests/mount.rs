//! The real binary mounted with FUSE (needs /dev/fuse; CI runs as root):
//! every image byte-identical through the mount, random reads from four
//! threads, a flipped byte in a pack, a killed mount process, gc racing reads.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use imgstore_store::manifest::Entry;
use imgstore_store::{index, pack, sif, Digest, ImageId, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::{self, Env};

/// Whether FUSE can be used here; prints why not.
fn fuse() -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipped: /dev/fuse is absent (FUSE is not available here)");
    }
    ok
}

/// A running `imgstore mount`; unmounted (or its dead mount cleared) on drop.
struct Mounted {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Mounted {
    /// Mounts `env`'s store on `env/<dir>` and waits until it answers.
    fn start(env: &Env, dir: &str, args: &[&str]) -> Mounted {
        let path = env.path(dir);
        std::fs::create_dir_all(&path).unwrap();
        let log = env.path(&format!("{dir}.log"));
        let child = env
            .process("a")
            .arg("mount")
            .arg(&path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let m = Mounted {
            child,
            dir: path,
            log,
        };
        m.wait_for(|| m.dir.join("by-id").is_dir(), "the mount to answer");
        m
    }

    fn wait_for(&self, ok: impl Fn() -> bool, what: &str) {
        let started = Instant::now();
        while !ok() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waited 20 s for {what}; mount log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// SIGTERM, then the process must exit (having unmounted) in seconds.
    fn stop(mut self) {
        signal(&self.child, libc::SIGTERM);
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mount did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "mount exited {status}; log: {}", self.log());
        assert!(
            !mounted(&self.dir),
            "{} still mounted after SIGTERM",
            self.dir.display()
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if mounted(&self.dir) {
            lazy_unmount(&self.dir);
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Whether `dir` is a mount point now (per /proc/self/mounts).
fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = dir.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(dir))
}

/// What clears a dead FUSE mount: `umount -l` as root, else fusermount.
fn lazy_unmount(dir: &Path) {
    for (tool, args) in [
        ("umount", &["-l"][..]),
        ("fusermount3", &["-u", "-z"]),
        ("fusermount", &["-u", "-z"]),
    ] {
        let ok = std::process::Command::new(tool)
            .args(args)
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
    }
}

fn image_id(report: &serde_json::Value) -> ImageId {
    let hex = report["image"].as_str().unwrap().trim_start_matches("blake3:");
    ImageId(Digest::from_hex(hex).unwrap())
}

/// Reads `len` bytes at `offset` (fewer at the end of the file), the way
/// `read(2)` callers loop over short reads.
fn read_range(f: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Drops the kernel's cached pages of `f`, so the next reads reach the mount.
fn drop_cache(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: an advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

#[test]
fn every_image_is_byte_identical_through_the_mount_and_new_puts_show() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let plain = common::image(6 << 20, 1);
    let edited = common::edit(&plain, 8, 2);
    let sif_bytes = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", b"Bootstrap: docker\nFrom: debian\n"),
        (sif::DATA_PARTITION, "", &common::image(3 << 20, 3)),
    ]);
    let empty: Vec<u8> = Vec::new();
    let images: [(&str, &str, &Vec<u8>); 4] = [
        ("lab/app:v1", "lab/app/v1.img", &plain),
        ("lab/app:v2", "lab/app/v2.img", &edited),
        ("lab/sif:3f2c1e", "lab/sif/3f2c1e.sif", &sif_bytes),
        ("top:empty", "top/empty.img", &empty),
    ];
    let mut ids = Vec::new();
    for (i, (r, _, data)) in images.iter().enumerate() {
        ids.push(image_id(&env.put(r, &env.file(&format!("{i}.img"), data))));
    }
    let listed = env.json(&["ls"]);
    let m = Mounted::start(&env, "m", &[]);
    for ((r, path, data), id) in images.iter().zip(&ids) {
        for p in [m.path(path), m.path(&format!("by-id/{id}"))] {
            let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(meta.len(), data.len() as u64, "{}", p.display());
            assert_eq!(meta.mode() & 0o7777, 0o444);
            assert!(std::fs::read(&p).unwrap() == **data, "{} differs", p.display());
        }
        let created = listed["refs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["ref"] == *r)
            .unwrap()["created"]
            .as_i64()
            .unwrap();
        assert_eq!(std::fs::metadata(m.path(path)).unwrap().mtime(), created, "{r}");
    }
    // `cmp` agrees.
    let cmp = std::process::Command::new("cmp")
        .arg(env.path("0.img"))
        .arg(m.path("lab/app/v1.img"))
        .status()
        .unwrap();
    assert!(cmp.success());
    // Extended attributes: none listed, and reading one is "not supported"
    // (answered by the kernel after the mount's first ENOSYS).
    let c = std::ffi::CString::new(m.path("lab/app/v1.img").into_os_string().into_encoded_bytes()).unwrap();
    let name = c"user.x";
    for _ in 0..2 {
        // SAFETY: valid C strings; a null buffer of size 0 asks for the size.
        let r = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(
            (r, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EOPNOTSUPP))
        );
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) }, 0);
    // Writes are refused.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("lab/app/v1.img"));
    assert!(w.is_err());

    // A put and a removal show without a remount.
    env.put("lab/app:v3", &env.file("v3.img", &plain));
    env.cmd().args(["rm", "lab/app:v1"]).assert().success();
    m.wait_for(|| m.path("lab/app/v3.img").exists(), "the new tag to show");
    m.wait_for(|| !m.path("lab/app/v1.img").exists(), "the removed tag to go");
    assert!(std::fs::read(m.path("lab/app/v3.img")).unwrap() == plain);

    // Only the names asked for.
    let names = Mounted::start(&env, "n", &["lab/sif"]);
    let top: Vec<String> = std::fs::read_dir(&names.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top.len(), 2, "{top:?}");
    assert!(names.path("lab/sif/3f2c1e.sif").exists());
    assert!(!names.path("lab/app").exists());
    names.stop();
    m.stop();
}

#[test]
fn random_reads_from_four_threads_match_the_image() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let data = common::image(8 << 20, 11);
    env.put("lab/app:v1", &env.file("a.img", &data));
    let m = Mounted::start(&env, "m", &[]);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (data, path) = (&data, m.path("lab/app/v1.img"));
            s.spawn(move || {
                let f = File::open(path).unwrap();
                let mut rng = SmallRng::seed_from_u64(t);
                for i in 0..2500 {
                    if i % 500 == 0 {
                        drop_cache(&f);
                    }
                    let offset = rng.random_range(0..data.len() as u64 + 100);
                    let len = match rng.random_range(0..10) {
                        0 => rng.random_range(0..400_000),
                        1..=3 => 4096,
                        _ => rng.random_range(1..9000),
                    };
                    let got = read_range(&f, offset, len).unwrap();
                    let start = (offset as usize).min(data.len());
                    let want = &data[start..(start + len).min(data.len())];
                    assert!(got == want, "thread {t} read {i}: {len} bytes at {offset} differ");
                }
            });
        }
    });
    eprintln!("10,000 random reads through the mount in {:?}", started.elapsed());
    m.stop();
}

#[test]
fn a_flipped_byte_in_a_pack_is_eio_on_its_pages_and_right_bytes_elsewhere() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let data = common::random(4 << 20, 7);
    let id = image_id(&env.put("lab/rand:v1", &env.file("r.img", &data)));
    // Chunk 40 of the image: where it starts and where it is stored.
    let store = Store::open(&env.store(), Some(env.path("index-x"))).unwrap();
    let entries = store.manifest(&id).unwrap().entries;
    let start: u64 = entries[..40].iter().map(Entry::len).sum();
    let Entry::Chunk { id: chunk, len } = entries[40] else {
        panic!("entry 40 is a zero run")
    };
    let len = u64::from(len);
    store.index_catch_up().unwrap();
    let loc = index::Reader::open(store.index_dir())
        .unwrap()
        .lookup(&[chunk])
        .unwrap()[0]
        .unwrap();
    drop(store);
    let pack_file = std::fs::OpenOptions::new()
        .write(true)
        .open(env.store().join(pack::key(&loc.pack)))
        .unwrap();
    let at = loc.offset + pack::FRAME_HEADER_LEN as u64 + len / 2;
    pack_file
        .write_at(&[!data[(start + len / 2) as usize]], at)
        .unwrap();

    let m = Mounted::start(&env, "m", &[]);
    let f = File::open(m.path("lab/rand/v1.img")).unwrap();
    // The kernel reads whole pages: a read fails when a page it needs holds
    // a byte of the damaged chunk.
    let page = 4096;
    let (bad_from, bad_to) = (start / page * page, (start + len).div_ceil(page) * page);
    let mut rng = SmallRng::seed_from_u64(9);
    let (mut failed, mut good) = (0, 0);
    for i in 0..2000 {
        if i % 100 == 0 {
            drop_cache(&f);
        }
        let offset = rng.random_range(0..data.len() as u64);
        let n = rng.random_range(1..70_000);
        let touches = offset < bad_to && offset + n as u64 > bad_from;
        match read_range(&f, offset, n) {
            Err(e) => {
                assert!(touches, "read of {n} at {offset} failed: {e}");
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                failed += 1;
            }
            Ok(got) => {
                assert!(!touches, "read of {n} at {offset} returned the damaged chunk");
                assert!(got == data[offset as usize..(offset as usize + n).min(data.len())]);
                good += 1;
            }
        }
    }
    assert!(failed > 10 && good > 500, "{failed} failed, {good} good");
    // One byte from the middle of the chunk fails.
    drop_cache(&f);
    assert!(read_range(&f, start + len / 2, 1).is_err());
    drop(f);
    m.stop();
    let log = std::fs::read_to_string(env.path("m.log")).unwrap();
    for name in [id.to_string(), chunk.to_string(), loc.pack.to_string()] {
        assert!(log.contains(&name), "the mount's log does not name {name}: {log}");
    }
}

#[test]
fn a_mount_killed_with_sigkill_fails_reads_and_mounts_again() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let data = common::image(3 << 20, 4);
    env.put("lab/app:v1", &env.file("a.img", &data));
    let mut m = Mounted::start(&env, "m", &[]);
    let f = File::open(m.path("lab/app/v1.img")).unwrap();
    assert!(read_range(&f, 0, 1 << 20).unwrap() == data[..1 << 20]);
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    // Readers get an error, not a hang.
    drop_cache(&f);
    let started = Instant::now();
    assert!(read_range(&f, 2 << 20, 4096).is_err());
    assert!(std::fs::read_dir(&m.dir).is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(f);
    // Mounting on the dead mount says what to do.
    let out = env.cmd().arg("mount").arg(&m.dir).output().unwrap();
    assert_eq!(common::code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dead FUSE mount") && err.contains("-u -z"), "{err}");
    lazy_unmount(&m.dir);
    assert!(!mounted(&m.dir));
    drop(m);
    let again = Mounted::start(&env, "m", &[]);
    assert!(std::fs::read(again.path("lab/app/v1.img")).unwrap() == data);
    again.stop();
}

#[test]
fn gc_in_a_loop_during_reads_loses_nothing() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    // y shares x's first 2 MiB: removing x makes gc repack them.
    let x = common::random(8 << 20, 3);
    let mut y = x[..2 << 20].to_vec();
    y.extend(common::image(6 << 20, 4));
    env.put("lab/x:v1", &env.file("x.img", &x));
    env.put("lab/y:v1", &env.file("y.img", &y));
    let m = Mounted::start(&env, "m", &[]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (y, path, stop, reads) = (&y, m.path("lab/y/v1.img"), &stop, &reads);
            s.spawn(move || {
                let f = File::open(path).unwrap();
                let mut rng = SmallRng::seed_from_u64(t);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop_cache(&f);
                    let offset = rng.random_range(0..y.len() as u64);
                    let got = read_range(&f, offset, 300_000).unwrap();
                    let want = &y[offset as usize..(offset as usize + 300_000).min(y.len())];
                    assert!(got == want, "thread {t}: read at {offset} differs");
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        env.cmd().args(["rm", "lab/x:v1"]).assert().success();
        let (mut repacked, mut deleted) = (0, 0);
        for round in 0..4 {
            // The mount's lease lapses (as for a process paused past it), so
            // gc deletes packs under it; reads must find the moved chunks.
            if round > 0 {
                for e in std::fs::read_dir(env.store().join("sessions")).unwrap() {
                    let _ = std::fs::remove_file(e.unwrap().path());
                }
            }
            let gc = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
            repacked += gc["packs_repacked"].as_u64().unwrap();
            deleted += gc["packs_deleted"].as_u64().unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            repacked >= 1 && deleted >= 1,
            "{repacked} packs repacked, {deleted} deleted"
        );
    });
    assert!(reads.into_inner() > 10);
    assert!(std::fs::read(m.path("lab/y/v1.img")).unwrap() == y);
    assert!(!m.path("lab/x").exists());
    m.stop();
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

/// Runs `cmd` and returns its output; panics with its stderr if it fails.
fn run(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (CI installs it: see .ci/run)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A small tree of files: some text, some random, one empty, one nested.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let list = vec![
        (PathBuf::from("etc/os-release"), b"NAME=test\n".to_vec()),
        (PathBuf::from("opt/app/model.bin"), common::random(700_000, 8)),
        (PathBuf::from("opt/app/notes.txt"), common::text(90_000, 9)),
        (PathBuf::from("empty"), Vec::new()),
    ];
    for (p, data) in &list {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    list
}

#[test]
fn squashfuse_reads_the_squashfs_of_a_sif_through_the_mount() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    let want = files(&tree);
    let squash = env.path("root.sqfs");
    run(std::process::Command::new("mksquashfs")
        .arg(&tree)
        .arg(&squash)
        .args(["-noappend", "-quiet", "-comp", "gzip"]));
    let squash_bytes = std::fs::read(&squash).unwrap();
    let sif_bytes = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", b"Bootstrap: docker\nFrom: debian\n"),
        (sif::DATA_PARTITION, "", &squash_bytes),
    ]);
    let offset = sif_bytes
        .windows(64)
        .position(|w| w == &squash_bytes[..64])
        .expect("the partition is in the SIF");
    let report = env.put("lab/app:v1", &env.file("app.sif", &sif_bytes));
    assert_eq!(report["sif"], true);
    // Only the store holds the SIF from here on.
    std::fs::remove_file(env.path("app.sif")).unwrap();
    std::fs::remove_file(&squash).unwrap();

    let m = Mounted::start(&env, "m", &[]);
    let inner = env.path("inner");
    std::fs::create_dir(&inner).unwrap();
    run(std::process::Command::new("squashfuse")
        .arg("-o")
        .arg(format!("offset={offset}"))
        .arg(m.path("lab/app/v1.sif"))
        .arg(&inner));
    let result = std::panic::catch_unwind(|| {
        for (p, data) in &want {
            let got = std::fs::read(inner.join(p)).unwrap();
            assert!(got == *data, "{} differs inside the SIF", p.display());
        }
    });
    lazy_unmount(&inner);
    result.unwrap();
    m.stop();
}

#[test]
fn e2fsck_finds_an_ext3_image_clean_through_the_mount() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let tree = env.path("tree");
    files(&tree);
    let img = env.path("fs.img");
    run(std::process::Command::new("mkfs.ext3")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M"));
    env.put("lab/fs:v1", &img);
    std::fs::remove_file(&img).unwrap();
    let m = Mounted::start(&env, "m", &[]);
    let out = run(std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(m.path("lab/fs/v1.img")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("files"), "{text}");
    m.stop();
}

#[test]
fn daemon_mode_returns_once_mounted_and_sigterm_to_its_pid_unmounts() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let data = common::image(2 << 20, 6);
    env.put("lab/app:v1", &env.file("a.img", &data));
    let dir = env.path("m");
    std::fs::create_dir(&dir).unwrap();
    let pid_file = env.path("mount.pid");
    // The serving process keeps the stderr it was given: a file, not a pipe
    // this test would wait on.
    let log = env.path("daemon.log");
    let status = env
        .process("a")
        .args(["mount", "--daemon", "--pid-file"])
        .arg(&pid_file)
        .arg(&dir)
        .stderr(File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(mounted(&dir));
        assert!(std::fs::read(dir.join("lab/app/v1.img")).unwrap() == data);
        // SAFETY: signals the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        while pid_file.exists() || mounted(&dir) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still mounted 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    if result.is_err() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        lazy_unmount(&dir);
    }
    result.unwrap();
    // A store that is not there: the error, and the child's exit code.
    let status = env
        .process("a")
        .env("IMGSTORE_STORE", env.path("nothing"))
        .args(["mount", "--daemon"])
        .arg(&dir)
        .stderr(File::create(&log).unwrap())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "{text}");
    assert!(
        text.contains("ended (exit status: 3) before it mounted"),
        "{text}"
    );
    assert!(!mounted(&dir));
}

#[test]
fn a_long_running_mount_does_not_hold_gc_back() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let x = common::random(3 << 20, 12);
    let y = common::image(3 << 20, 13);
    env.put("lab/x:v1", &env.file("x.img", &x));
    env.put("lab/y:v1", &env.file("y.img", &y));
    let mut cmd = env.process("a");
    cmd.env("IMGSTORE_LEASE_SECS", "2");
    let dir = env.path("m");
    std::fs::create_dir(&dir).unwrap();
    let log = env.path("m.log");
    let child = cmd
        .arg("mount")
        .arg(&dir)
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let m = Mounted { child, dir, log };
    m.wait_for(|| m.path("by-id").is_dir(), "the mount to answer");
    assert!(std::fs::read(m.path("lab/x/v1.img")).unwrap() == x);
    // A file kept open all along does not hold gc back either.
    let held = File::open(m.path("lab/y/v1.img")).unwrap();
    env.cmd().args(["rm", "lab/x:v1"]).assert().success();
    let first = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert_eq!(first["packs_condemned"], 1, "{first}");
    // The mount's session at condemnation ends once a new one replaces it.
    let started = Instant::now();
    loop {
        let gc = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
        if gc["packs_deleted"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gc still held back: {gc}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut back).unwrap();
    assert!(back == y);
    drop(held);
    assert!(std::fs::read(m.path("lab/y/v1.img")).unwrap() == y);
    m.stop();
}

#[test]
fn sigterm_while_reads_are_in_flight_unmounts_and_readers_get_right_bytes_or_errors() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    let data = common::image(8 << 20, 14);
    env.put("lab/app:v1", &env.file("a.img", &data));
    let m = Mounted::start(&env, "m", &[]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (good, failed) = (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    );
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (data, path, stop, good, failed) = (&data, m.path("lab/app/v1.img"), &stop, &good, &failed);
            s.spawn(move || {
                let f = File::open(path).unwrap();
                let mut rng = SmallRng::seed_from_u64(t);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop_cache(&f);
                    let offset = rng.random_range(0..data.len() as u64);
                    match read_range(&f, offset, 256 << 10) {
                        Ok(got) => {
                            let want =
                                &data[offset as usize..(offset as usize + (256 << 10)).min(data.len())];
                            assert!(got == want, "thread {t}: read at {offset} differs");
                            good.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        // Files are open: the mount detaches, exits, and the readers fail.
        m.stop();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let (good, failed) = (good.into_inner(), failed.into_inner());
    assert!(good > 5, "{good} reads before the unmount");
    assert_eq!(failed, 2, "both readers end with an error once the mount is gone");
}

/// The user the unprivileged mount test runs as (made if missing).
const MOUNT_USER: &str = "imgmount-u";

/// A command run as [`MOUNT_USER`] (setpriv execs it: its pid is the
/// command's), with only the environment given.
fn as_user(dir: &Path, program: &Path) -> std::process::Command {
    let gid =
        String::from_utf8(run(std::process::Command::new("id").args(["-g", MOUNT_USER])).stdout).unwrap();
    // By its path: the child's PATH may be one without it.
    let setpriv = run(std::process::Command::new("sh").args(["-c", "command -v setpriv"])).stdout;
    let mut c = std::process::Command::new(String::from_utf8(setpriv).unwrap().trim());
    c.arg(format!("--reuid={MOUNT_USER}"))
        .arg(format!("--regid={}", gid.trim()))
        .arg("--clear-groups")
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("IMGSTORE_STORE", dir.join("store"))
        .env("IMGSTORE_INDEX_DIR", dir.join("index"));
    c
}

#[test]
fn a_user_mounts_through_fusermount3_and_sigterm_unmounts() {
    let is_root = unsafe { libc::geteuid() } == 0;
    let have = |tool: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let world_rw = std::fs::metadata("/dev/fuse").is_ok_and(|m| m.mode() & 0o006 == 0o006);
    if !fuse() || !is_root || !["setpriv", "useradd", "fusermount3"].iter().all(|t| have(t)) || !world_rw {
        eprintln!(
            "SKIPPED user mount test: needs root (to add a user), setpriv, useradd, \
             fusermount3 and /dev/fuse mode 0666 (.ci/run provides them)"
        );
        return;
    }
    run(std::process::Command::new("sh").arg("-c").arg(format!(
        "id -u {MOUNT_USER} >/dev/null 2>&1 || useradd -M -N {MOUNT_USER}"
    )));
    // A world-traversable work dir (the test's own is under root's home)
    // with the binary and an image the user can read; the store is the user's.
    let dir = tempfile::Builder::new()
        .prefix("imgmount")
        .tempdir_in("/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(dir.path(), 0o777);
    let bin = dir.path().join("imgstore");
    std::fs::copy(assert_cmd::cargo::cargo_bin("imgstore"), &bin).unwrap();
    mode(&bin, 0o755);
    let data = common::image(3 << 20, 21);
    let img = dir.path().join("a.img");
    std::fs::write(&img, &data).unwrap();
    mode(&img, 0o644);
    run(as_user(dir.path(), &bin).args(["init", "-q"]));
    run(as_user(dir.path(), &bin)
        .args(["put", "-q", "lab/app:v1"])
        .arg(&img));
    let mnt = dir.path().join("m");
    run(as_user(dir.path(), Path::new("mkdir")).arg(&mnt));

    // Without fusermount3 on its PATH: one line that says what to install.
    let out = as_user(dir.path(), &bin)
        .env("PATH", "/nonexistent")
        .arg("mount")
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("apt install fuse3"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let log = dir.path().join("mount.log");
    let child = as_user(dir.path(), &bin)
        .arg("mount")
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let m = Mounted {
        child,
        dir: mnt.clone(),
        log,
    };
    m.wait_for(|| mounted(&mnt), "the user's mount");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .unwrap();
    let uid =
        String::from_utf8(run(std::process::Command::new("id").args(["-u", MOUNT_USER])).stdout).unwrap();
    assert!(line.contains(&format!("user_id={}", uid.trim())), "{line}");
    // The tree lists and the image reads byte-identically, for the user.
    let ls = run(as_user(dir.path(), Path::new("ls")).arg("-lR").arg(&mnt));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("v1.img") && ls.contains(&data.len().to_string()),
        "{ls}"
    );
    run(as_user(dir.path(), Path::new("cmp"))
        .arg(&img)
        .arg(mnt.join("lab/app/v1.img")));
    // Without --allow-other the mount is its owner's alone, even for root.
    let e = std::fs::metadata(mnt.join("lab")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    // --allow-other needs user_allow_other in /etc/fuse.conf: said in one line.
    let allowed = std::fs::read_to_string("/etc/fuse.conf")
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "user_allow_other");
    if !allowed {
        let other = dir.path().join("o");
        run(as_user(dir.path(), Path::new("mkdir")).arg(&other));
        let out = as_user(dir.path(), &bin)
            .args(["mount", "--allow-other"])
            .arg(&other)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(common::code(&out), 2, "{err}");
        assert!(
            err.contains("user_allow_other") && err.contains("/etc/fuse.conf"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!mounted(&other));
    }
    m.stop();
}
