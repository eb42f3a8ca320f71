//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tempfile::TempDir;

/// A fresh store, with its own local index directory, in a temp dir.
pub struct Env {
    pub dir: TempDir,
}

impl Env {
    /// Creates and initializes a store.
    pub fn new() -> Env {
        Self::with_init(&[])
    }

    /// Creates a store with extra `init` arguments.
    pub fn with_init(args: &[&str]) -> Env {
        let env = Env::uninit();
        env.cmd().arg("init").args(args).assert().success();
        env
    }

    /// A temp dir with no store in it yet.
    pub fn uninit() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `imgstore` with this env's store and index ("host a").
    pub fn cmd(&self) -> Command {
        self.cmd_host("a")
    }

    /// `imgstore` as if on another host: its own local index directory.
    pub fn cmd_host(&self, host: &str) -> Command {
        let mut c = Command::cargo_bin("imgstore").expect("binary built");
        c.env("IMGSTORE_STORE", self.store())
            .env(
                "IMGSTORE_INDEX_DIR",
                self.dir.path().join(format!("index-{host}")),
            )
            .env("IMGSTORE_HOSTNAME", format!("host-{host}"))
            .env_remove("IMGSTORE_TEST_HOLD")
            .env_remove("IMGSTORE_TEST_CRASH")
            .env_remove("IMGSTORE_TEST_EIO")
            .env_remove("IMGSTORE_TEST_CODEC")
            .env_remove("IMGSTORE_LEASE_SECS");
        c
    }

    /// Writes `data` to a file in the env and returns its path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write input");
        p
    }

    /// `put` that must succeed; returns the parsed JSON report.
    pub fn put(&self, reference: &str, file: &Path) -> serde_json::Value {
        let file = file.to_str().expect("test paths are UTF-8");
        json_of(self.cmd(), &["put", reference, file])
    }

    /// `imgstore --json ARGS` that must succeed; returns the parsed document.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.json_host("a", args)
    }

    /// [`Env::json`] as another host (its own local index).
    pub fn json_host(&self, host: &str, args: &[&str]) -> serde_json::Value {
        json_of(self.cmd_host(host), args)
    }

    /// `get` to a file that must succeed; returns the bytes.
    pub fn get(&self, reference: &str) -> Vec<u8> {
        let out = self.path("got.img");
        let _ = std::fs::remove_file(&out);
        self.cmd()
            .args(["get", reference, "-o"])
            .arg(&out)
            .assert()
            .success();
        std::fs::read(&out).expect("output exists")
    }

    /// Total bytes of all files under the store's packs/.
    pub fn pack_bytes(&self) -> u64 {
        dir_bytes(&self.store().join("packs"))
    }
}

/// `cmd --json ARGS`, which must succeed; returns the parsed document.
pub fn json_of(mut cmd: Command, args: &[&str]) -> serde_json::Value {
    let out = cmd
        .arg("--json")
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).expect("--json prints JSON")
}

/// Sum of file sizes below `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
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

/// Every file below `dir`, relative, sorted.
pub fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// `n` seeded random (incompressible) bytes.
pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `n` seeded compressible bytes: words drawn at random, like text or
/// code (zstd stores them in about a third; groups form).
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "cuda", "lib", "init", "blas", "fft", "dnn", "0x7f", "rand", "import", "def", "return", "self", "np",
        "torch", "float", "int",
    ];
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        v.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        v.push(if rng.random_range(0..8) == 0 { b'\n' } else { b' ' });
    }
    v.truncate(n);
    v
}

/// Every pack of the store at `store`: its bytes and footer entries.
pub fn packs(store: &Path) -> Vec<(PathBuf, Vec<u8>, Vec<imgstore_store::pack::PackEntry>)> {
    let dir = store.join("packs");
    list_files(&dir)
        .into_iter()
        .map(|p| {
            let path = dir.join(&p);
            let bytes = std::fs::read(&path).expect("read pack");
            let entries = imgstore_store::pack::read_footer(&imgstore_store::backend::InMemory(&bytes), &p)
                .expect("pack footer reads");
            (path, bytes, entries)
        })
        .collect()
}

/// An image-like buffer: random, text-like and zero regions, seeded.
pub fn image(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    let mut pos = 0;
    while pos < n {
        let len = rng.random_range(4096..200_000).min(n - pos);
        match rng.random_range(0..10) {
            0..=4 => rng.fill_bytes(&mut v[pos..pos + len]),
            5..=8 => {
                for b in &mut v[pos..pos + len] {
                    *b = b"abcdefgh ijklmnop\n"[rng.random_range(0..18)];
                }
            }
            _ => {}
        }
        pos += len;
    }
    v
}

/// `base` as the next commit would change it: `edits` small rewrites and
/// one insertion that shifts everything after it.
pub fn edit(base: &[u8], edits: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v = base.to_vec();
    for _ in 0..edits {
        let at = rng.random_range(0..v.len().saturating_sub(4096).max(1));
        let end = (at + 4096).min(v.len());
        rng.fill_bytes(&mut v[at..end]);
    }
    let at = rng.random_range(0..v.len().max(1));
    let mut ins = vec![0u8; 10_000];
    rng.fill_bytes(&mut ins);
    v.splice(at..at, ins);
    v
}

/// The exit code of a finished command.
pub fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Spawns `imgstore ARGS` on host a, held at the named test step; returns
/// once it waits there (see store/src/hold.rs).
pub fn spawn_held(env: &Env, step: &str, args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("imgstore"));
    cmd.env("IMGSTORE_STORE", env.store())
        .env("IMGSTORE_INDEX_DIR", env.path("index-a"))
        .env("IMGSTORE_TEST_HOLD", step)
        .env("IMGSTORE_TEST_HOLD_DIR", env.dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn imgstore");
    let flag = env.dir.path().join(format!("{step}.held"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !flag.exists() {
        assert!(Instant::now() < deadline, "never reached {step}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Lets a process held by [`spawn_held`] go on.
pub fn release(env: &Env, step: &str) {
    std::fs::remove_file(env.dir.path().join(format!("{step}.held"))).expect("held flag exists");
}
