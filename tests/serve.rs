//! `imgstore serve` as a real process on an ephemeral loopback port, driven
//! by real clients: curl replaying Apptainer's pull, the `oras` Python
//! client pushing and pulling, and requests that must be refused.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use imgstore_store::sif;
use sha2::{Digest, Sha256};

use crate::common::{self, Env, Kind};

crate::on_both_backends!(
    a_curl_replay_of_apptainers_pull_gets_the_image_whole,
    the_oras_client_pushes_and_pulls_a_sif,
);

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";
const SIF_CONFIG: &str = "application/vnd.sylabs.sif.config.v1+json";
/// The Accept header go-containerregistry (Apptainer's registry client)
/// sends for a manifest.
const GGCR_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json,\
application/vnd.docker.distribution.manifest.list.v2+json,\
application/vnd.oci.image.manifest.v1+json,\
application/vnd.oci.image.index.v1+json,\
application/vnd.docker.distribution.manifest.v1+prettyjws,\
application/json";

/// A running `imgstore serve`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    spool: PathBuf,
}

impl Server {
    pub(crate) fn start(env: &Env) -> Server {
        Self::start_with(env, &[])
    }

    fn start_with(env: &Env, args: &[&str]) -> Server {
        Self::start_with_env(env, args, &[])
    }

    fn start_with_env(env: &Env, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let spool = env.path("spool");
        let mut child = env
            .process("srv")
            .envs(envs.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--spool"])
            .arg(&spool)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn imgstore serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, addr, spool }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Files left in the upload spool.
    fn spooled(&self) -> Vec<String> {
        common::list_files(&self.spool)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One curl request: its exit code, status, headers (lowercase names) and body.
pub(crate) struct Reply {
    pub(crate) exit: i32,
    pub(crate) status: u16,
    headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The OCI error code of an error body.
    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub(crate) fn curl(args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let (h, b) = (dir.path().join("h"), dir.path().join("b"));
    let out = Command::new("curl")
        .args(["-s", "--path-as-is", "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(args)
        .output()
        .expect("run curl");
    let head = std::fs::read_to_string(&h).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers,
        body: std::fs::read(&b).unwrap_or_default(),
    }
}

pub(crate) fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A SIF with a deffile, labels and a squashfs-like partition of `size` bytes.
fn sif_image(size: usize, seed: u64) -> (Vec<u8>, &'static [u8]) {
    let deffile: &'static [u8] = b"Bootstrap: docker\nFrom: alpine:3\n%post\n  echo hi\n";
    let labels = br#"{"org.label-schema.vcs-ref":"3f2c1e"}"#;
    let squash = common::image(size, seed);
    let bytes = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", deffile),
        (sif::DATA_LABELS, "", labels),
        (sif::DATA_PARTITION, "", &squash),
    ]);
    (bytes, deffile)
}

/// The request sequence of Apptainer's `pull oras://` (go-containerregistry):
/// the version check, the manifest with its Accept header, the config, then
/// the one layer in one GET without Range, which must be a 200 with the
/// exact Content-Length and the image's sha256.
fn a_curl_replay_of_apptainers_pull_gets_the_image_whole(kind: Kind) {
    let env = Env::on(kind);
    let (bytes, _) = sif_image(6 << 20, 1);
    let f = env.file("app.sif", &bytes);
    env.put("lab/app:3f2c1e", &f);
    let srv = Server::start(&env);

    let r = curl(&[&srv.url("/v2/")]);
    assert_eq!((r.exit, r.status), (0, 200));
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");

    let accept = format!("Accept: {GGCR_ACCEPT}");
    let head = curl(&["-I", "-H", &accept, &srv.url("/v2/lab/app/manifests/3f2c1e")]);
    assert_eq!(head.status, 200);
    let m = curl(&["-H", &accept, &srv.url("/v2/lab/app/manifests/3f2c1e")]);
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), MANIFEST);
    assert_eq!(m.header("content-length"), m.body.len().to_string());
    let digest = format!("sha256:{}", sha256(&m.body));
    assert_eq!(m.header("docker-content-digest"), digest);
    assert_eq!(head.header("docker-content-digest"), digest);
    assert_eq!(head.header("content-length"), m.body.len().to_string());
    // The same bytes every time, and by digest too.
    let again = curl(&[
        "-H",
        &accept,
        &srv.url(&format!("/v2/lab/app/manifests/{digest}")),
    ]);
    assert_eq!((again.status, &again.body), (200, &m.body));

    let manifest = m.json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], SIF_CONFIG);
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], SIF_LAYER);
    assert_eq!(layer["size"], bytes.len() as u64);
    assert_eq!(layer["digest"], format!("sha256:{}", sha256(&bytes)));

    let config = curl(&[&srv.url(&format!(
        "/v2/lab/app/blobs/{}",
        manifest["config"]["digest"].as_str().unwrap()
    ))]);
    assert_eq!((config.status, &config.body[..]), (200, &b"{}"[..]));

    let blob = curl(&[&srv.url(&format!(
        "/v2/lab/app/blobs/{}",
        layer["digest"].as_str().unwrap()
    ))]);
    assert_eq!(
        (blob.exit, blob.status),
        (0, 200),
        "a plain GET is a 200, never a 206"
    );
    assert_eq!(blob.header("content-length"), bytes.len().to_string());
    assert_eq!(sha256(&blob.body), sha256(&bytes));
    assert!(blob.body == bytes);

    // A client that asks for a range gets a 206 with those bytes.
    let part = curl(&[
        "-H",
        "Range: bytes=1000-1999",
        &srv.url(&format!(
            "/v2/lab/app/blobs/{}",
            layer["digest"].as_str().unwrap()
        )),
    ]);
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        format!("bytes 1000-1999/{}", bytes.len())
    );
    assert!(part.body == bytes[1000..2000]);

    let tags = curl(&[&srv.url("/v2/lab/app/tags/list")]).json();
    assert_eq!(tags, serde_json::json!({"name": "lab/app", "tags": ["3f2c1e"]}));
    let catalog = curl(&[&srv.url("/v2/_catalog")]).json();
    assert_eq!(catalog, serde_json::json!({"repositories": ["lab/app"]}));
    // The sha256 is kept in the store: the store verifies clean with it.
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

/// Runs tests/serve_oras.py (the `oras` Python client) against the server.
fn oras(srv: &Server, args: &[&str], cwd: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_oras.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&srv.addr)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "oras {args:?} failed (is `pip install oras==0.2.43` done? .ci/run does it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The oras client pushes a SIF with the SIF media types (whole and in
/// chunks) and pulls it back byte for byte; the push is an ordinary image
/// (deffile lifted, verify clean), and an image put with `imgstore put`
/// pulls too.
fn the_oras_client_pushes_and_pulls_a_sif(kind: Kind) {
    let env = Env::on(kind);
    let srv = Server::start(&env);
    let (bytes, deffile) = sif_image(5 << 20, 2);
    env.file("app.sif", &bytes);
    oras(&srv, &["push", "lab/pushed:v1", "app.sif"], env.dir.path());
    // The pushed SIF is an image like any put's: its deffile was lifted.
    env.cmd()
        .args(["deffile", "lab/pushed:v1"])
        .assert()
        .success()
        .stdout(String::from_utf8_lossy(deffile).into_owned());
    assert!(env.get("lab/pushed:v1") == bytes);

    // The manifest comes back byte for byte (its digest is the client's).
    let m = curl(&[&srv.url("/v2/lab/pushed/manifests/v1")]);
    let pushed = std::fs::read(env.path("pushed-manifest.json")).unwrap();
    assert!(m.body == pushed, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(
        m.header("docker-content-digest"),
        format!("sha256:{}", sha256(&pushed))
    );
    assert_eq!(m.json()["layers"][0]["mediaType"], SIF_LAYER);

    // A next commit, pushed in 1 MiB chunks (POST, PATCH..., PUT).
    let mut next = bytes.clone();
    next[3 << 20..(3 << 20) + 1000].fill(7);
    env.file("next.sif", &next);
    oras(
        &srv,
        &["push-chunked", "lab/pushed:v2", "next.sif"],
        env.dir.path(),
    );
    assert!(env.get("lab/pushed:v2") == next);

    std::fs::create_dir(env.path("out")).unwrap();
    for (tag, want) in [("v1", &bytes), ("v2", &next)] {
        let out = oras(
            &srv,
            &["pull", &format!("lab/pushed:{tag}"), "out"],
            env.dir.path(),
        );
        let file = String::from_utf8(out.stdout).unwrap();
        assert!(std::fs::read(file.trim()).unwrap() == *want, "{tag}");
    }
    // An image put with `imgstore put` pulls with oras too.
    let f = env.file("put.sif", &next);
    env.put("lab/put:v1", &f);
    std::fs::create_dir(env.path("out2")).unwrap();
    let out = oras(&srv, &["pull", "lab/put:v1", "out2"], env.dir.path());
    let file = String::from_utf8(out.stdout).unwrap();
    assert!(std::fs::read(file.trim()).unwrap() == next);
    env.cmd().args(["verify", "--read-data"]).assert().success();
    assert!(srv.spooled().is_empty(), "{:?}", srv.spooled());
}

/// An upload: POST, then PUT of `body` with `?digest=`; returns the PUT's reply.
/// `PUT /v2/lab/app/manifests/REFERENCE` with `body` as an OCI manifest.
fn put_manifest(srv: &Server, reference: &str, body: &str) -> Reply {
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {MANIFEST}"),
        "--data-binary",
        body,
        &srv.url(&format!("/v2/lab/app/manifests/{reference}")),
    ])
}

fn upload(srv: &Server, name: &str, body: &Path, digest: &str) -> Reply {
    let post = curl(&["-X", "POST", &srv.url(&format!("/v2/{name}/blobs/uploads/"))]);
    assert_eq!(post.status, 202);
    let location = post.header("location").to_string();
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", body.display()),
        &srv.url(&format!("{location}?digest={digest}")),
    ])
}

/// Path tricks, a push whose bytes do not match its digest, malformed
/// manifests: each refused with its OCI error, nothing stored, and the
/// server keeps serving.
#[test]
fn bad_requests_are_refused_and_store_nothing() {
    let env = Env::new();
    let srv = Server::start(&env);
    let packs_before = common::list_files(&env.store().join("packs"));

    for path in [
        "/v2/../../etc/passwd/manifests/v1",
        "/v2/lab/../../x/manifests/v1",
        "/v2/lab/%2e%2e/x/manifests/v1",
        "/v2/Lab/app/tags/list",
        "/v2//app/blobs/uploads/",
    ] {
        let r = curl(&[&srv.url(path)]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "NAME_INVALID"),
            "{path}"
        );
    }
    let r = curl(&[&srv.url("/v2/lab/app/blobs/sha256:..%2f..%2fconfig")]);
    assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"));
    let r = curl(&[&srv.url("/etc/passwd")]);
    assert_eq!(r.status, 404);
    let r = curl(&[&srv.url("/v2/lab/app/manifests/v1")]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));

    // Bytes that do not hash to the digest the client names.
    let data = env.file("blob", &common::random(300_000, 3));
    let wrong = format!("sha256:{}", sha256(b"something else"));
    let r = upload(&srv, "lab/app", &data, &wrong);
    assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"));
    assert!(srv.spooled().is_empty(), "{:?}", srv.spooled());
    let r = curl(&["-I", &srv.url(&format!("/v2/lab/app/blobs/{wrong}"))]);
    assert_eq!(r.status, 404);
    // A verified upload waits for its manifest under its own name only.
    let right = format!("sha256:{}", sha256(&std::fs::read(&data).unwrap()));
    assert_eq!(upload(&srv, "lab/app", &data, &right).status, 201);
    let staged = |name: &str| curl(&[&srv.url(&format!("/v2/{name}/blobs/{right}"))]);
    assert_eq!(staged("lab/app").status, 200);
    assert!(staged("lab/app").body == std::fs::read(&data).unwrap());
    assert_eq!(
        staged("lab/other").status,
        404,
        "a staged blob is not seen under another name"
    );

    // Manifests: not JSON, not a manifest, a layer never pushed.
    let put_manifest = |body: &str| put_manifest(&srv, "v1", body);
    for body in [
        "{not json",
        r#"{"schemaVersion":2}"#,
        r#"{"schemaVersion":2,"config":{},"layers":[]}"#,
    ] {
        let r = put_manifest(body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "MANIFEST_INVALID"),
            "{body}"
        );
    }
    let zero = "0".repeat(64);
    let unknown = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"{SIF_CONFIG}","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[{{"mediaType":"{SIF_LAYER}","digest":"sha256:{zero}","size":5}}]}}"#
    );
    let r = put_manifest(&unknown);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );

    // A request head larger than the server reads is refused whole.
    let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
    let big = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = s.write_all(big.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Nothing was stored, and the server still serves.
    assert_eq!(common::list_files(&env.store().join("packs")), packs_before);
    assert!(!env.store().join("refs/lab").exists());
    let r = curl(&[&srv.url("/v2/")]);
    assert_eq!(r.status, 200);
}

/// A manifest pushed by digest (as oras and skopeo may) must hash to it,
/// else nothing is stored; once pushed, it and a manifest pushed by tag are
/// answered by digest (HEAD and GET) byte for byte, under their name only.
#[test]
fn manifests_pushed_by_digest_and_by_tag_are_served_by_digest() {
    let env = Env::new();
    let srv = Server::start(&env);
    let (sif, _) = sif_image(512 << 10, 21);
    let f = env.file("app.sif", &sif);
    let layer = format!("sha256:{}", sha256(&sif));
    assert_eq!(upload(&srv, "lab/app", &f, &layer).status, 201);
    let config = env.file("config.json", b"{}");
    let config_digest = format!("sha256:{}", sha256(b"{}"));
    assert_eq!(upload(&srv, "lab/app", &config, &config_digest).status, 201);
    // Written by hand: spacing and an annotation no derived manifest has.
    let manifest = |note: &str| {
        format!(
            "{{\n  \"schemaVersion\": 2, \"mediaType\": \"{MANIFEST}\",\n  \"config\": {{\"mediaType\": \"{SIF_CONFIG}\", \"digest\": \"{config_digest}\", \"size\": 2}},\n  \"layers\": [{{\"mediaType\": \"{SIF_LAYER}\", \"digest\": \"{layer}\", \"size\": {}}}],\n  \"annotations\": {{\"note\": \"{note}\"}}\n}}\n",
            sif.len()
        )
    };
    let put = |reference: &str, body: &str| put_manifest(&srv, reference, body);
    let (by_digest, by_tag) = (manifest("by digest"), manifest("by tag"));
    let (d1, d2) = (
        format!("sha256:{}", sha256(by_digest.as_bytes())),
        format!("sha256:{}", sha256(by_tag.as_bytes())),
    );

    let r = put(&d2, &by_digest);
    assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"));
    assert!(!env.store().join("refs/lab").exists(), "nothing is stored");
    assert_eq!(
        curl(&["-I", &srv.url(&format!("/v2/lab/app/manifests/{d2}"))]).status,
        404
    );

    let r = put(&d1, &by_digest);
    assert_eq!(r.status, 201);
    assert_eq!(r.header("docker-content-digest"), d1);
    assert_eq!(r.header("location"), format!("/v2/lab/app/manifests/{d1}"));
    let r = put("v1", &by_tag);
    assert_eq!(r.status, 201);
    assert_eq!(r.header("docker-content-digest"), d2);

    for (digest, body) in [(&d1, &by_digest), (&d2, &by_tag)] {
        let url = srv.url(&format!("/v2/lab/app/manifests/{digest}"));
        let head = curl(&["-I", &url]);
        assert_eq!(head.status, 200, "{digest}");
        assert_eq!(head.header("docker-content-digest"), digest.as_str());
        assert_eq!(head.header("content-length"), body.len().to_string());
        assert_eq!(head.header("content-type"), MANIFEST);
        let get = curl(&[&url]);
        assert_eq!(get.status, 200);
        assert_eq!(get.header("docker-content-digest"), digest.as_str());
        assert!(get.body == body.as_bytes(), "kept byte for byte");
        let other = curl(&[&srv.url(&format!("/v2/lab/other/manifests/{digest}"))]);
        assert_eq!(
            (other.status, other.error_code().as_str()),
            (404, "MANIFEST_UNKNOWN")
        );
    }
    let tags = curl(&[&srv.url("/v2/lab/app/tags/list")]).json();
    assert_eq!(
        tags["tags"],
        serde_json::json!([format!("sha256-{}", &d1["sha256:".len()..]), "v1"])
    );
    let blob = curl(&[&srv.url(&format!("/v2/lab/app/blobs/{layer}"))]);
    assert_eq!(blob.status, 200);
    assert_eq!(sha256(&blob.body), sha256(&sif));
}

/// A chunk found corrupt while a blob streams cuts the connection: the
/// client sees a failed transfer, not a clean end with wrong bytes. And a
/// client that goes away mid-blob leaves the server serving others.
#[test]
fn a_corrupt_chunk_mid_blob_cuts_the_connection() {
    let env = Env::new();
    let bytes = common::random(12 << 20, 4);
    let f = env.file("img", &bytes);
    env.put("lab/app:v1", &f);
    let blob_path = {
        let srv = Server::start(&env);
        let m = curl(&[&srv.url("/v2/lab/app/manifests/v1")]).json();
        // Clients that go away after the headers: the server goes on.
        let path = format!("/v2/lab/app/blobs/{}", m["layers"][0]["digest"].as_str().unwrap());
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut first = [0u8; 4096];
            let _ = s.read(&mut first).unwrap();
        }
        let whole = curl(&[&srv.url(&path)]);
        assert_eq!((whole.status, sha256(&whole.body)), (200, sha256(&bytes)));
        path
    };
    // Damage the middle of the pack (random data: stored raw), then serve
    // again from a fresh process (nothing cached).
    let packs = common::list_files(&env.store().join("packs"));
    assert_eq!(packs.len(), 1, "{packs:?}");
    let pack = env.store().join("packs").join(&packs[0]);
    let mut data = std::fs::read(&pack).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&pack, &data).unwrap();
    let srv = Server::start(&env);
    let r = curl(&[&srv.url(&blob_path)]);
    assert_eq!(r.status, 200, "the headers went out before the damage was met");
    assert_ne!(r.exit, 0, "curl must see a failed transfer");
    assert!(r.body.len() < bytes.len(), "{} bytes", r.body.len());
    assert!(
        r.body[..] == bytes[..r.body.len()],
        "every byte sent is the image's"
    );
    assert_eq!(curl(&[&srv.url("/v2/")]).status, 200);
}

/// HTTP Basic users from an htpasswd file (bcrypt) and per-prefix rules:
/// a private prefix inside a public one stays private, pushes need a user
/// the rules name, and the catalog lists only what the user may read.
#[test]
fn users_and_prefix_rules_decide_who_pulls_and_pushes() {
    let env = Env::new();
    let f = env.file("img", &common::random(200_000, 5));
    env.put("lab/private/app:v1", &f);
    env.put("lab/pub:v1", &f);
    let htpasswd = format!(
        "alice:{}\nbob:{}\n",
        bcrypt::hash("alice-pw", 4).unwrap(),
        bcrypt::hash("bob-pw", 4).unwrap()
    );
    let h = env.file("htpasswd", htpasswd.as_bytes());
    let rules = "group ml alice\nread lab/private/ @ml\npush lab/ alice\nread lab/ anonymous\n";
    let a = env.file("access", rules.as_bytes());
    let srv = Server::start_with(
        &env,
        &["--htpasswd", h.to_str().unwrap(), "--access", a.to_str().unwrap()],
    );

    let private = srv.url("/v2/lab/private/app/manifests/v1");
    let public = srv.url("/v2/lab/pub/manifests/v1");
    assert_eq!(curl(&[&srv.url("/v2/")]).status, 200, "some names are public");
    assert_eq!(curl(&[&public]).status, 200);
    let r = curl(&[&private]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"imgstore\"");
    let r = curl(&["-u", "bob:bob-pw", &private]);
    assert_eq!((r.status, r.error_code().as_str()), (403, "DENIED"));
    assert_eq!(curl(&["-u", "alice:alice-pw", &private]).status, 200);
    assert_eq!(curl(&["-u", "alice:wrong", &private]).status, 401);
    assert_eq!(
        curl(&["-u", "mallory:x", &public]).status,
        401,
        "bad credentials are not anonymous"
    );

    let uploads = srv.url("/v2/lab/new/blobs/uploads/");
    assert_eq!(curl(&["-X", "POST", &uploads]).status, 401, "a push needs a user");
    assert_eq!(curl(&["-X", "POST", "-u", "bob:bob-pw", &uploads]).status, 403);
    assert_eq!(
        curl(&["-X", "POST", "-u", "alice:alice-pw", &uploads]).status,
        202
    );

    let anon = curl(&[&srv.url("/v2/_catalog")]).json();
    assert_eq!(anon, serde_json::json!({"repositories": ["lab/pub"]}));
    let alice = curl(&["-u", "alice:alice-pw", &srv.url("/v2/_catalog")]).json();
    assert_eq!(
        alice,
        serde_json::json!({"repositories": ["lab/private/app", "lab/pub"]})
    );
}

/// A server with users but no anonymous rule asks for a login at `/v2/`.
#[test]
fn without_anonymous_rules_every_request_needs_a_user() {
    let env = Env::new();
    let h = env.file(
        "htpasswd",
        format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap()).as_bytes(),
    );
    let srv = Server::start_with(&env, &["--htpasswd", h.to_str().unwrap()]);
    assert_eq!(curl(&[&srv.url("/v2/")]).status, 401);
    assert_eq!(curl(&["-u", "alice:pw", &srv.url("/v2/")]).status, 200);
    assert_eq!(
        curl(&["-X", "POST", "-u", "alice:pw", &srv.url("/v2/a/blobs/uploads/")]).status,
        202
    );
    // A bad access file is an error at start, not a silently open server.
    let bad = env.file("bad-access", b"push * anonymous\n");
    let out = env
        .cmd_host("srv2")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--htpasswd",
            h.to_str().unwrap(),
            "--access",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("anonymous"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// HTTPS with rustls from PEM files: a client that trusts the certificate
/// pulls; plain HTTP to that port gets nothing. Plain HTTP off loopback is
/// refused unless asked for.
#[test]
fn tls_from_pem_files_and_plain_http_only_on_loopback() {
    let env = Env::new();
    let f = env.file("img", &common::random(300_000, 6));
    env.put("lab/app:v1", &f);
    let (cert, key) = (env.path("cert.pem"), env.path("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (.ci/run installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let srv = Server::start_with(
        &env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://{}/v2/lab/app/manifests/v1", srv.addr);
    let r = curl(&["--cacert", cert.to_str().unwrap(), &url]);
    assert_eq!((r.exit, r.status), (0, 200));
    let digest = r.json()["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        &format!("https://{}/v2/lab/app/blobs/{digest}", srv.addr),
    ]);
    assert_eq!(sha256(&blob.body), sha256(&std::fs::read(&f).unwrap()));
    let plain = curl(&[&format!("http://{}/v2/", srv.addr)]);
    assert_ne!(plain.status, 200);
    let untrusted = curl(&[&url]);
    assert_ne!(untrusted.exit, 0, "an unknown certificate is not trusted");

    let out = env
        .cmd_host("srv2")
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plain-http"));
}

/// The server's peak resident memory (VmHWM), in bytes.
fn peak_rss(srv: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// 8 concurrent pulls and 2 concurrent pushes while gc runs again and
/// again: every pull byte-identical, every push an image, the store clean,
/// and the server's peak RSS bounded. Clients stalled in their request
/// heads do not keep others from being served.
#[test]
fn concurrent_pulls_and_pushes_while_gc_runs() {
    let env = Env::new();
    let bytes = common::image(32 << 20, 7);
    let f = env.file("big.sif", &bytes);
    env.put("lab/big:v1", &f);
    env.put("lab/old:v1", &env.file("old", &common::image(4 << 20, 8)));
    env.cmd().args(["rm", "lab/old:v1"]).assert().success();
    let srv = Server::start(&env);
    // Slowloris: connections that send half a request head and stall.
    let stalled: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(curl(&[&srv.url("/v2/")]).status, 200);
    assert!(
        started.elapsed().as_secs() < 5,
        "served late: {:?}",
        started.elapsed()
    );

    let m = curl(&[&srv.url("/v2/lab/big/manifests/v1")]).json();
    let blob = srv.url(&format!(
        "/v2/lab/big/blobs/{}",
        m["layers"][0]["digest"].as_str().unwrap()
    ));
    let want = sha256(&bytes);
    for (i, seed) in [(1, 11u64), (2, 12)] {
        let (push, _) = sif_image(12 << 20, seed);
        env.file(&format!("push{i}.sif"), &push);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = env
                    .cmd_host("gc")
                    .args(["gc", "--grace", "0s", "--wait"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "gc: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        });
        let pulls: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let r = curl(&[&blob]);
                    assert_eq!((r.exit, r.status), (0, 200));
                    assert_eq!(sha256(&r.body), want);
                })
            })
            .collect();
        let pushes: Vec<_> = (1..=2)
            .map(|i| {
                let srv = &srv;
                let env = &env;
                scope.spawn(move || {
                    let dir = env.path(&format!("push{i}"));
                    std::fs::create_dir(&dir).unwrap();
                    std::fs::copy(env.path(&format!("push{i}.sif")), dir.join("app.sif")).unwrap();
                    oras(srv, &["push", &format!("lab/push{i}:v1"), "app.sif"], &dir);
                })
            })
            .collect();
        for t in pulls.into_iter().chain(pushes) {
            t.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = gc.join().unwrap();
        assert!(runs >= 1);
    });
    for i in 1..=2 {
        let pushed = std::fs::read(env.path(&format!("push{i}.sif"))).unwrap();
        assert!(env.get(&format!("lab/push{i}:v1")) == pushed, "push {i}");
    }
    let rss = peak_rss(&srv);
    eprintln!(
        "serve peak RSS after 8 pulls of 32 MiB and 2 pushes of 12 MiB under gc: {} MiB",
        rss >> 20
    );
    assert!(rss < 512 << 20, "peak RSS {} MiB", rss >> 20);
    drop(stalled);
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

/// skopeo (containers/image, another real client): `inspect --raw` gets the
/// served manifest byte for byte, a copy to a directory gets the image, and
/// a copy back in under another name pushes it (manifest digest kept).
#[test]
fn skopeo_inspects_copies_out_and_copies_in() {
    let env = Env::new();
    let (bytes, _) = sif_image(3 << 20, 9);
    let f = env.file("app.sif", &bytes);
    env.put("lab/app:v1", &f);
    let srv = Server::start(&env);
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .output()
            .expect("run skopeo (.ci/run installs it)");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let src = format!("docker://{}/lab/app:v1", srv.addr);
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &src]);
    assert!(raw == curl(&[&srv.url("/v2/lab/app/manifests/v1")]).body);
    let dir = env.path("copy");
    let dir_ref = format!("dir:{}", dir.display());
    skopeo(&["copy", "--src-tls-verify=false", &src, &dir_ref]);
    let layer = serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert!(std::fs::read(dir.join(&layer)).unwrap() == bytes);
    let dest = format!("docker://{}/lab/copied:v1", srv.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &dir_ref, &dest]);
    assert!(env.get("lab/copied:v1") == bytes);
    let back = skopeo(&["inspect", "--raw", "--tls-verify=false", &dest]);
    assert_eq!(sha256(&back), sha256(&raw));
}

/// The server's lease is renewed (a new one, then the old one ended), so a
/// gc that condemned packs while it runs deletes them without a restart,
/// and what the server still serves comes back whole.
#[test]
fn a_running_server_lets_gc_free_space() {
    let env = Env::new();
    let keep = common::random(3 << 20, 30);
    env.put("lab/keep:v1", &env.file("keep.img", &keep));
    env.put("lab/gone:v1", &env.file("gone.img", &common::random(3 << 20, 31)));
    let srv = Server::start_with_env(&env, &[], &[("IMGSTORE_LEASE_SECS", "2")]);
    let m = curl(&[&srv.url("/v2/lab/keep/manifests/v1")]).json();
    let blob = format!(
        "/v2/lab/keep/blobs/{}",
        m["layers"][0]["digest"].as_str().unwrap()
    );
    assert_eq!(sha256(&curl(&[&srv.url(&blob)]).body), sha256(&keep));
    env.cmd().args(["rm", "lab/gone:v1"]).assert().success();
    let gc = || common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    let first = gc();
    assert!(first["packs_condemned"].as_u64().unwrap() >= 1, "{first}");
    // Two renewals later every lease the plan listed has ended.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let second = gc();
    assert!(
        second["packs_deleted"].as_u64().unwrap() >= 1,
        "gc still held back: {second}"
    );
    assert_eq!(sha256(&curl(&[&srv.url(&blob)]).body), sha256(&keep));
    env.cmd().args(["verify"]).assert().success();
}
