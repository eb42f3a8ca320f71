//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tempfile::TempDir;

pub mod proxy;

/// Where a test's store lives: the same tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Local,
    /// A bucket prefix on an S3 server (s3s-fs on loopback).
    S3,
    /// A container prefix on an Azure Blob emulator (Azurite on loopback).
    /// Its objects are no files: tests that read `Env::store()` skip it.
    Azure,
}

/// Registers each named `fn(Kind)` as two tests, `NAME::local` and
/// `NAME::s3`: one suite, run on a directory and on object storage.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn local() {
                super::$name($crate::common::Kind::Local)
            }
            #[test]
            fn s3() {
                super::$name($crate::common::Kind::S3)
            }
        }
    )*};
}

/// Registers each named `fn(Kind)` as a test `azure::NAME` on Azurite
/// (once per file: it makes one `mod azure`). It skips, saying why, when
/// Azurite is not installed.
#[macro_export]
macro_rules! on_azure {
    ($($name:ident),* $(,)?) => {
        mod azure {$(
            #[test]
            fn $name() {
                if $crate::common::azure::server().is_some() {
                    super::$name($crate::common::Kind::Azure)
                }
            }
        )*}
    };
}

/// A fresh store, with its own local index directory, in a temp dir.
pub struct Env {
    pub dir: TempDir,
    /// The URL of the store, for a store in object storage.
    url: Option<String>,
    /// The S3 server it is on: the shared one, or a test's own.
    server: Option<&'static s3::Server>,
    /// The Azurite it is on.
    azure: Option<&'static azure::Server>,
}

impl Env {
    /// Creates and initializes a store.
    pub fn new() -> Env {
        Self::with_init(&[])
    }

    /// Creates and initializes a store of `kind`.
    pub fn on(kind: Kind) -> Env {
        let env = Env::uninit_on(kind);
        env.cmd().arg("init").assert().success();
        env
    }

    /// Creates a store with extra `init` arguments.
    pub fn with_init(args: &[&str]) -> Env {
        let env = Env::uninit();
        env.cmd().arg("init").args(args).assert().success();
        env
    }

    /// A temp dir with no store in it yet.
    pub fn uninit() -> Env {
        Self::uninit_on(Kind::Local)
    }

    /// A temp dir (for inputs and local indexes) and, on S3, a fresh
    /// prefix in the test server's bucket, with no store in it yet.
    pub fn uninit_on(kind: Kind) -> Env {
        match kind {
            Kind::Local => Env {
                dir: tempfile::tempdir().expect("tempdir"),
                url: None,
                server: None,
                azure: None,
            },
            Kind::S3 => Self::uninit_at(s3::server()),
            Kind::Azure => {
                let server = azure::server().expect("Azurite is installed (on_azure! checks)");
                let dir = tempfile::tempdir().expect("tempdir");
                let name = dir.path().file_name().unwrap().to_str().unwrap();
                let url = Some(format!(
                    "az://{}/{}",
                    azure::CONTAINER,
                    name.trim_start_matches('.')
                ));
                Env {
                    dir,
                    url,
                    server: None,
                    azure: Some(server),
                }
            }
        }
    }

    /// A fresh prefix on `server`, with no store in it yet.
    pub fn uninit_at(server: &'static s3::Server) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        let url = Some(format!("s3://{}/{}", s3::BUCKET, name.trim_start_matches('.')));
        Env {
            dir,
            url,
            server: Some(server),
            azure: None,
        }
    }

    /// The directory that holds the store's objects as files: the store
    /// itself, or the S3 server's files for its prefix (s3s-fs keeps each
    /// object as a plain file, so tests can read and damage them alike).
    pub fn store(&self) -> PathBuf {
        assert!(
            self.azure.is_none(),
            "Azurite keeps objects in its own database, not as files: this test cannot run on it"
        );
        match &self.url {
            None => self.dir.path().join("store"),
            Some(url) => self.server.unwrap().root.join(url.trim_start_matches("s3://")),
        }
    }

    /// What `--store` takes: the directory or the URL.
    pub fn store_arg(&self) -> std::ffi::OsString {
        match &self.url {
            None => self.store().into(),
            Some(url) => url.into(),
        }
    }

    /// `imgstore` as a plain process (for spawning several), as host `host`.
    pub fn process(&self, host: &str) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgstore"));
        c.env("IMGSTORE_STORE", self.store_arg())
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
        if let Some(server) = self.server {
            server.client_env(&mut c);
        }
        if let Some(server) = self.azure {
            server.client_env(&mut c);
        }
        c
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
        Command::from_std(self.process(host))
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
            let entries = imgstore_store::pack::read_footer(
                &imgstore_store::backend::InMemory(&bytes),
                &imgstore_store::Object::Pack { key: p.clone() },
            )
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
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut cmd = env.process("a");
    cmd.env("IMGSTORE_TEST_HOLD", step)
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

/// The S3 server the tests share: one s3s-fs per test run, on a free
/// loopback port, stopped when the test process ends.
pub mod s3 {
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// The bucket every S3 test store is a prefix of.
    pub const BUCKET: &str = "imgstore-tests";
    const KEY: &str = "imgstore-test-key";
    const SECRET: &str = "imgstore-test-secret";

    pub struct Server {
        pub endpoint: String,
        /// Where s3s-fs keeps buckets as directories, objects as files.
        pub root: PathBuf,
        /// The shared server's watcher, alive as long as the test process.
        _watcher: Option<std::process::Child>,
    }

    impl Server {
        /// This server as reached through `endpoint` (a proxy in front of it).
        pub fn behind(&self, endpoint: String) -> &'static Server {
            Box::leak(Box::new(Server {
                endpoint,
                root: self.root.clone(),
                _watcher: None,
            }))
        }

        /// Points an imgstore process at this server.
        pub fn client_env(&self, c: &mut Command) {
            c.env("AWS_ACCESS_KEY_ID", KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET)
                .env("AWS_REGION", "us-east-1")
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_SESSION_TOKEN")
                .env("IMGSTORE_S3_ENDPOINT", &self.endpoint)
                .env("IMGSTORE_S3_ALLOW_HTTP", "1")
                .env("IMGSTORE_RETRY_SECS", "20");
        }
    }

    /// The s3s-fs binary: `$IMGSTORE_S3S_FS`, on the PATH, or where
    /// `.ci/run` installs it.
    fn binary() -> PathBuf {
        if let Some(p) = std::env::var_os("IMGSTORE_S3S_FS") {
            return p.into();
        }
        let cached =
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/s3s-fs/bin/s3s-fs");
        if cached.exists() {
            return cached;
        }
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("s3s-fs"))
                    .find(|p| p.exists())
            })
            .unwrap_or_default();
        on_path.unwrap_or_else(|| {
            panic!(
                "the S3 tests need s3s-fs: run .ci/run, or `cargo install s3s-fs --version 0.14.1 \
                 --features binary --locked --root ~/.cache/s3s-fs`"
            )
        })
    }

    /// The server, started on first use.
    pub fn server() -> &'static Server {
        static SERVER: OnceLock<Server> = OnceLock::new();
        SERVER.get_or_init(start)
    }

    /// A server of a test's own, which it can kill and start again on the
    /// same port and files (a plain child: the test ends it).
    pub struct Own {
        pub server: &'static Server,
        port: u16,
        child: Option<std::process::Child>,
    }

    impl Own {
        pub fn start() -> Own {
            let root = tempfile::Builder::new()
                .prefix("imgstore-s3s-own-")
                .tempdir()
                .expect("tempdir")
                .keep();
            std::fs::create_dir(root.join(BUCKET)).expect("bucket directory");
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let server = Box::leak(Box::new(Server {
                endpoint: format!("http://127.0.0.1:{port}"),
                root,
                _watcher: None,
            }));
            let mut own = Own {
                server,
                port,
                child: None,
            };
            own.restart();
            own
        }

        /// SIGKILL, as a crash or a power cut would stop it.
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Starts it again on the same port and files.
        pub fn restart(&mut self) {
            self.kill();
            let child = Command::new(binary())
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", KEY, "--secret-key", SECRET])
                .arg(&self.server.root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start s3s-fs");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "s3s-fs did not start again");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for Own {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.server.root);
        }
    }

    fn start() -> Server {
        let bin = binary();
        let root = tempfile::Builder::new()
            .prefix("imgstore-s3s-")
            .tempdir()
            .expect("tempdir")
            .keep();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // A watcher ends the server, and removes its files, when this
            // test process ends, however it ends.
            let script = r#"
                "$1" --host 127.0.0.1 --port "$2" --access-key "$3" --secret-key "$4" "$5" >"$5.log" 2>&1 &
                server=$!
                while kill -0 "$6" 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done
                kill $server 2>/dev/null; wait; rm -rf "$5" "$5.log"
            "#;
            std::fs::create_dir_all(root.join(BUCKET)).expect("bucket directory");
            let mut watcher = Command::new("sh")
                .args(["-c", script, "s3s-fs-watch"])
                .arg(&bin)
                .arg(port.to_string())
                .args([KEY, SECRET])
                .arg(&root)
                .arg(std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start s3s-fs");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Server {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        root,
                        _watcher: Some(watcher),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Not up (the port was taken meanwhile): its watcher removes
            // the files; try another port.
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        panic!(
            "s3s-fs ({}) did not start; see {}.log",
            bin.display(),
            root.display()
        );
    }
}

/// The Azure Blob emulator the tests share: one Azurite per test run, on a
/// free loopback port, stopped (and its files removed) when the test
/// process ends.
pub mod azure {
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// The container every Azure test store is a prefix of.
    pub const CONTAINER: &str = "imgstore-tests";

    /// Creates a container with the emulator's well-known account and key
    /// (object_store creates none, and Azurite refuses anonymous writes).
    /// Shared Key signing per Azure's "Authorize with Shared Key".
    const CREATE_CONTAINER: &str = r#"
        const crypto = require('crypto'), http = require('http');
        const [port, container] = process.argv.slice(1);
        const account = 'devstoreaccount1';
        const key = Buffer.from('Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==', 'base64');
        const date = new Date().toUTCString(), version = '2021-08-06';
        const toSign = ['PUT', '', '', '', '', '', '', '', '', '', '', '',
            `x-ms-date:${date}`, `x-ms-version:${version}`,
            `/${account}/${account}/${container}\nrestype:container`].join('\n');
        const sig = crypto.createHmac('sha256', key).update(toSign, 'utf8').digest('base64');
        const req = http.request({host: '127.0.0.1', port, method: 'PUT',
            path: `/${account}/${container}?restype=container`,
            headers: {'x-ms-date': date, 'x-ms-version': version, 'Content-Length': 0,
                      Authorization: `SharedKey ${account}:${sig}`}},
            res => { res.resume(); if (res.statusCode === 201 || res.statusCode === 409) process.exit(0);
                     console.error(`HTTP ${res.statusCode}`); process.exit(1); });
        req.on('error', e => { console.error(e.message); process.exit(1); });
        req.end();
    "#;

    pub struct Server {
        pub endpoint: String,
        /// The watcher that ends Azurite with the test process.
        _watcher: std::process::Child,
    }

    impl Server {
        /// Points an imgstore process at this emulator, the way a user
        /// would: object_store reads both variables itself.
        pub fn client_env(&self, c: &mut Command) {
            c.env("AZURE_STORAGE_USE_EMULATOR", "true")
                .env("AZURITE_BLOB_STORAGE_URL", &self.endpoint)
                .env("IMGSTORE_RETRY_SECS", "20");
        }
    }

    /// `azurite-blob`: `$IMGSTORE_AZURITE`, where `.ci/run` installs it, or
    /// on the PATH; and `node`, which runs it.
    fn binaries() -> Option<(PathBuf, PathBuf)> {
        let on_path = |name: &str| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|p| p.exists())
            })
        };
        let cached = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/azurite/node_modules/.bin/azurite-blob");
        let azurite = match std::env::var_os("IMGSTORE_AZURITE") {
            Some(p) => Some(PathBuf::from(p)).filter(|p| p.exists()),
            None => cached
                .exists()
                .then_some(cached)
                .or_else(|| on_path("azurite-blob")),
        }?;
        Some((azurite, on_path("node")?))
    }

    /// The emulator, started on first use; `None` (with the reason on
    /// stderr) when Azurite or node is not installed. In CI (`CI` set)
    /// a missing Azurite fails instead: `.ci/run` installs it.
    pub fn server() -> Option<&'static Server> {
        static SERVER: OnceLock<Option<Server>> = OnceLock::new();
        let server = SERVER.get_or_init(|| binaries().map(|(azurite, node)| start(&azurite, &node)));
        if server.is_none() {
            let why = "Azurite (azurite-blob) or node is not installed: run .ci/run, or \
                       `npm install --prefix ~/.cache/azurite azurite@3.35.0`";
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipped: {why}");
        }
        server.as_ref()
    }

    fn start(azurite: &std::path::Path, node: &std::path::Path) -> Server {
        let root = tempfile::Builder::new()
            .prefix("imgstore-azurite-")
            .tempdir()
            .expect("tempdir")
            .keep();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // As for s3s-fs: a watcher ends the emulator, and removes its
            // files, when this test process ends, however it ends.
            let script = r#"
                "$1" --blobHost 127.0.0.1 --blobPort "$2" --location "$3" --skipApiVersionCheck --disableTelemetry --silent >"$3.log" 2>&1 &
                server=$!
                while kill -0 "$4" 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done
                kill $server 2>/dev/null; wait; rm -rf "$3" "$3.log"
            "#;
            let mut watcher = Command::new("sh")
                .args(["-c", script, "azurite-watch"])
                .arg(azurite)
                .arg(port.to_string())
                .arg(&root)
                .arg(std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start azurite");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let made = Command::new(node)
                        .args(["-e", CREATE_CONTAINER, &port.to_string(), CONTAINER])
                        .output()
                        .expect("run node");
                    assert!(
                        made.status.success(),
                        "creating container {CONTAINER} on Azurite: {}",
                        String::from_utf8_lossy(&made.stderr)
                    );
                    return Server {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        _watcher: watcher,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        panic!(
            "azurite ({}) did not start; see {}.log",
            azurite.display(),
            root.display()
        );
    }
}
