//! End-to-end benchmark: put and get real image files with the release
//! `imgstore` binary, next to `cp` of the same files in the same run.
//!
//! ```text
//! cargo bench --bench e2e -- [--synthetic SIZE] [--work DIR] [IMAGE...]
//! ```
//! Images are put in the order given (one commit after another); the first
//! and the last are got back and checked. With `--synthetic 2GiB`, two
//! similar images are generated (the second a small edit of the first).
//! As root, the page cache is dropped before every timed command; otherwise
//! the table says so. Peak RSS and CPU time come from wait4(2) on each child.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Run {
    wall: f64,
    cpu: f64,
    max_rss_kib: i64,
    stdout: String,
}

/// Runs a command and measures it with wait4: wall, user+sys CPU, peak RSS.
fn run(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let out = child.wait_with_output_rusage(pid);
    Run {
        wall: start.elapsed().as_secs_f64(),
        ..out
    }
}

trait WaitRusage {
    fn wait_with_output_rusage(self, pid: libc::pid_t) -> Run;
}

impl WaitRusage for std::process::Child {
    #[allow(unsafe_code)]
    fn wait_with_output_rusage(mut self, pid: libc::pid_t) -> Run {
        use std::io::Read;
        let mut stdout = String::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_string(&mut stdout).expect("read stdout");
        }
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        assert_eq!(rc, pid, "wait4 failed");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "command failed: status {status}"
        );
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Run {
            wall: 0.0,
            cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
            max_rss_kib: ru.ru_maxrss,
            stdout,
        }
    }
}

fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    unsafe {
        libc::geteuid() == 0
    }
}

fn drop_caches() {
    if is_root() {
        let _ = Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut images: Vec<PathBuf> = Vec::new();
    let mut work: Option<PathBuf> = None;
    let mut synthetic: Option<u64> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = args.next().map(PathBuf::from),
            "--synthetic" => {
                let s: bytesize::ByteSize = args
                    .next()
                    .expect("--synthetic SIZE")
                    .parse()
                    .expect("a size like 2GiB");
                synthetic = Some(s.as_u64());
            }
            other => images.push(PathBuf::from(other)),
        }
    }
    let tmp = tempfile::tempdir_in(work.clone().unwrap_or_else(std::env::temp_dir)).expect("work dir");
    let dir = tmp.path();
    if let Some(size) = synthetic {
        for (i, edit) in [false, true].into_iter().enumerate() {
            let p = dir.join(format!("synthetic-{i}.img"));
            imgstore_store::testdata::write_image(&p, size, 42, edit).expect("generate image");
            images.push(p);
        }
    }
    assert!(!images.is_empty(), "give image files or --synthetic SIZE");
    let bin = env!("CARGO_BIN_EXE_imgstore");
    let store = dir.join("store");
    let imgstore = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.env("IMGSTORE_STORE", &store)
            .env("IMGSTORE_INDEX_DIR", dir.join("index"))
            .args(args);
        c
    };
    run(&mut imgstore(&["init"]));
    println!(
        "imgstore e2e bench: {} images, page cache {}",
        images.len(),
        if is_root() {
            "dropped before each timed command"
        } else {
            "NOT dropped (not root)"
        }
    );
    println!("| # | image | size | cp+sync MB/s | put MB/s | put/cp | added | added % | put CPU/wall | put peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut put_ratios_known = Vec::new();
    let mut sizes = Vec::new();
    let mut cp_speed = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let size = std::fs::metadata(img).expect("image exists").len();
        sizes.push(size);
        let copy = dir.join("cp-copy");
        drop_caches();
        let cp = run(Command::new("sh").arg("-c").arg(format!(
            "cp '{}' '{}' && sync '{}'",
            img.display(),
            copy.display(),
            copy.display()
        )));
        std::fs::remove_file(&copy).ok();
        drop_caches();
        let put = run(&mut imgstore(&[
            "--json",
            "put",
            &format!("bench/img:c{i}"),
            img.to_str().unwrap(),
        ]));
        let report: serde_json::Value = serde_json::from_str(&put.stdout).expect("put --json");
        let added = report["added"]["stored_bytes"].as_u64().unwrap();
        let ratio = mbps(size, put.wall) / mbps(size, cp.wall);
        if i > 0 {
            put_ratios_known.push(ratio);
        }
        cp_speed.push(mbps(size, cp.wall));
        println!(
            "| {i} | {} | {:.0} MiB | {:.0} | {:.0} | {:.2}x | {:.1} MiB | {:.2}% | {:.2} | {:.0} MiB |",
            img.file_name().unwrap().to_string_lossy(),
            size as f64 / 1048576.0,
            mbps(size, cp.wall),
            mbps(size, put.wall),
            ratio,
            added as f64 / 1048576.0,
            100.0 * added as f64 / size as f64,
            put.cpu / put.wall,
            put.max_rss_kib as f64 / 1024.0
        );
    }
    println!();
    println!("| get | size | get MB/s | get/cp | get CPU/wall | get peak RSS | identical |");
    println!("|---|---|---|---|---|---|---|");
    let last = images.len() - 1;
    for i in if last == 0 { vec![0] } else { vec![0, last] } {
        let out = dir.join("got.img");
        drop_caches();
        let get = run(&mut imgstore(&[
            "get",
            &format!("bench/img:c{i}"),
            "-o",
            out.to_str().unwrap(),
        ]));
        let same = file_hash(&out) == file_hash(&images[i]);
        std::fs::remove_file(&out).ok();
        println!(
            "| c{i} | {:.0} MiB | {:.0} | {:.2}x | {:.2} | {:.0} MiB | {} |",
            sizes[i] as f64 / 1048576.0,
            mbps(sizes[i], get.wall),
            mbps(sizes[i], get.wall) / cp_speed[i],
            get.cpu / get.wall,
            get.max_rss_kib as f64 / 1024.0,
            if same { "yes" } else { "NO" }
        );
        assert!(same, "get returned different bytes");
    }
    let stored = dir_bytes(&store);
    let logical: u64 = sizes.iter().sum();
    println!();
    println!(
        "store: {:.1} MiB on disk for {:.1} MiB of images (dedup+compression {:.2}x); median put/cp of mostly-known images {:.2}x",
        stored as f64 / 1048576.0,
        logical as f64 / 1048576.0,
        logical as f64 / stored.max(1) as f64,
        median(put_ratios_known)
    );
}

fn file_hash(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).expect("open"))
        .expect("read");
    h.finalize()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}
