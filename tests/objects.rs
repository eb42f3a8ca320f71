//! What only a store in object storage has: requests counted and bounded,
//! URLs checked, an unreachable server named after the retries.

use std::time::Instant;

use crate::common::{self, Env, Kind};

/// Requests of one kind in a `--json` report.
fn requests(report: &serde_json::Value, kind: &str) -> u64 {
    report["requests"][kind]
        .as_u64()
        .unwrap_or_else(|| panic!("no requests.{kind} in {report}"))
}

#[test]
fn a_mostly_known_put_makes_requests_per_new_pack_not_per_chunk() {
    let env = Env::on(Kind::S3);
    let v1 = common::image(24 << 20, 1);
    let first = env.put("lab/app:v1", &env.file("v1.img", &v1));
    let chunks = first["chunks"].as_u64().unwrap();
    assert!(chunks > 300, "{first}");
    let v2 = common::edit(&v1, 3, 2);
    let second = env.put("lab/app:v2", &env.file("v2.img", &v2));
    let packs = second["packs"].as_u64().unwrap();
    // One PUT per new pack, then its index segment, the manifest, the ref,
    // the session and the log entry: a handful, whatever the chunk count.
    let puts = requests(&second, "put");
    assert!(puts <= packs + 8, "{puts} PUTs for {packs} new packs: {second}");
    let all: u64 = ["put", "get", "head", "list", "delete"]
        .iter()
        .map(|k| requests(&second, k))
        .sum();
    assert!(
        all < 40,
        "{all} requests for a put of {chunks} known chunks: {second}"
    );

    // A get reads each pack in long ranges, not a request per chunk.
    let out = env.path("v2.out");
    let got = common::json_of(env.cmd(), &["get", "lab/app:v2", "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == v2);
    let gets = requests(&got, "get");
    assert!(gets < chunks / 10, "{gets} GETs for {chunks} chunks: {got}");
}

#[test]
fn a_directory_store_reports_no_requests() {
    let env = Env::on(Kind::Local);
    let r = env.put("lab/app:v1", &env.file("v1.img", &common::random(1 << 20, 3)));
    assert!(r.get("requests").is_none(), "{r}");
}

#[test]
fn bad_urls_and_plain_http_get_one_line_errors() {
    let env = Env::uninit_on(Kind::S3);
    for (url, needle, code) in [
        ("s3://", "names no bucket", 2),
        ("ftp://bucket/x", "unknown scheme", 2),
        ("s3://imgstore-tests/no-store-here", "not an imgstore store", 3),
    ] {
        let out = env.cmd().args(["--store", url, "ls"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(common::code(&out), code, "{url}: {err}");
        assert!(err.lines().next().unwrap().contains(needle), "{url}: {err}");
    }
    // Plain HTTP only when asked for.
    let out = env
        .cmd()
        .env_remove("IMGSTORE_S3_ALLOW_HTTP")
        .args(["init"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--s3-allow-http"));
}

#[test]
fn an_unreachable_server_is_an_error_after_the_retries() {
    let env = Env::uninit_on(Kind::S3);
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = env
        .cmd()
        .env("IMGSTORE_S3_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("IMGSTORE_RETRY_SECS", "2")
        .args(["ls"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 1, "{err}");
    assert_eq!(
        err.lines().filter(|l| !l.starts_with("hint:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert!(
        started.elapsed().as_secs() < 60,
        "gave up only after {:?}",
        started.elapsed()
    );
}

/// Waits for `child`, up to a minute; its output.
fn finish(child: std::process::Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

#[test]
fn the_server_killed_and_restarted_mid_put_get_and_gc_loses_nothing() {
    use std::process::Stdio;
    use std::time::Duration;
    let mut server = common::s3::Own::start();
    let env = Env::uninit_at(server.server);
    env.cmd().arg("init").assert().success();
    let v1 = common::image(8 << 20, 10);
    env.put("lab/app:v1", &env.file("v1.img", &v1));
    let outage = |server: &mut common::s3::Own, after_ms: u64| {
        std::thread::sleep(Duration::from_millis(after_ms));
        server.kill();
        std::thread::sleep(Duration::from_millis(1500));
        server.restart();
    };

    // A put: it retries through the outage, or fails having published nothing.
    let v2 = common::random(24 << 20, 11);
    let f2 = env.file("v2.img", &v2);
    let put = env
        .process("a")
        .args(["put", "lab/app:v2"])
        .arg(&f2)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    outage(&mut server, 150);
    let out = finish(put);
    let got = env.cmd().args(["get", "lab/app:v2", "-o", "-"]).output().unwrap();
    if out.status.success() {
        assert!(got.stdout == v2, "a put that reported success reads back wrong");
    } else {
        assert_eq!(common::code(&got), 3, "a failed put left a ref");
        env.put("lab/app:v2", &f2);
    }
    println!(
        "put through an outage: {}",
        if out.status.success() {
            "retried"
        } else {
            "failed cleanly"
        }
    );

    // A get: right bytes, or an error and no output file.
    let target = env.path("v2.out");
    let get = env
        .process("b")
        .args(["get", "lab/app:v2", "-o"])
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    outage(&mut server, 100);
    let out = finish(get);
    if out.status.success() {
        assert!(
            std::fs::read(&target).unwrap() == v2,
            "wrong bytes after an outage"
        );
    } else {
        assert!(!target.exists(), "a failed get left its output");
    }

    // A gc that condemns, then one that deletes, each through an outage.
    env.cmd().args(["rm", "lab/app:v1"]).assert().success();
    for _ in 0..2 {
        let gc = env
            .process("a")
            .args(["gc", "--grace", "0s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        outage(&mut server, 50);
        let _ = finish(gc);
    }
    for _ in 0..2 {
        env.cmd().args(["gc", "--grace", "0s"]).assert().success();
    }
    assert!(env.get("lab/app:v2") == v2, "gc through an outage lost an image");
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

#[test]
fn every_command_works_on_a_store_in_object_storage() {
    every_command_works(Kind::S3);
}

#[test]
fn every_command_works_on_a_store_in_azure_blob_storage() {
    if common::azure::server().is_some() {
        every_command_works(Kind::Azure);
    }
}

/// A container that does not exist is named as such, not as a missing
/// store object. (s3s-fs makes a missing bucket's directory on a PUT, so
/// this runs on Azurite, which answers 404 ContainerNotFound.)
#[test]
fn a_missing_container_is_said_so() {
    if common::azure::server().is_none() {
        return;
    }
    let env = Env::uninit_on(Kind::Azure);
    let out = env
        .cmd()
        .args(["--store", "az://no-such-container/store", "init"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::code(&out), 2, "{err}");
    assert!(
        err.lines().next().unwrap().contains("no bucket or container"),
        "{err}"
    );
}

fn every_command_works(kind: Kind) {
    let env = Env::on(kind);
    let v1 = common::image(4 << 20, 20);
    let v2 = common::edit(&v1, 3, 21);
    let f1 = env.file("v1.img", &v1);
    let def = env.file("app.def", b"Bootstrap: docker\nFrom: ubuntu:24.04\n");
    env.cmd()
        .args(["put", "lab/app:v1", "--label", "k=v", "--deffile"])
        .arg(&def)
        .arg(&f1)
        .assert()
        .success();
    env.cmd()
        .args(["put", "lab/app:v2", "-"])
        .write_stdin(v2.clone())
        .assert()
        .success();
    assert!(env.get("lab/app:v2") == v2);
    let html = env.path("report.html");
    let prom = env.path("imgstore.prom");
    let html = html.to_str().unwrap();
    let prom = prom.to_str().unwrap();
    for args in [
        &["ls"][..],
        &["ls", "lab/app"],
        &["inspect", "lab/app:v1"],
        &["deffile", "lab/app:v1"],
        &["tag", "lab/app:v2", "lab/app:latest"],
        &["log"],
        &["stats"],
        &["du"],
        &["du", "lab/app", "--by", "tag"],
        &["history", "lab/app"],
        &["diff", "lab/app:v1", "lab/app:v2"],
        &["report", "--html", html],
        &["report", "--prometheus", prom],
        &["verify"],
        &["verify", "--read-data"],
        &["verify", "--read-data", "--subset", "1/2"],
        &["repair", "--dry-run"],
        &["index", "status"],
        &["index", "rebuild"],
        &["prune", "--keep-last", "2", "--dry-run"],
        &["rm", "lab/app:latest"],
        &["prune", "--keep-last", "1"],
        &["gc", "--grace", "0s"],
        &["gc", "--grace", "0s"],
        &["verify", "--read-data"],
    ] {
        let out = env.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(std::fs::read_to_string(html).unwrap().contains("<html"));
    // stats counts every object: here, every file s3s-fs keeps for the
    // prefix (Azurite keeps no file per object to count).
    if kind == Kind::S3 {
        let st = env.json(&["stats"]);
        let files = common::list_files(&env.store());
        assert_eq!(st["objects"], files.len() as u64, "{st}");
        let bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(env.store().join(f)).unwrap().len())
            .sum();
        assert_eq!(st["mean_object_size"], bytes / files.len() as u64, "{st}");
    }
    // prune kept the newest; gc freed the other's chunks and lost nothing.
    assert!(env.get("lab/app:v2") == v2);
    let gone = env.cmd().args(["get", "lab/app:v1", "-o", "-"]).output().unwrap();
    assert_eq!(common::code(&gone), 3);
}

#[test]
fn a_missing_or_cut_pack_in_object_storage_is_named_not_returned() {
    let env = Env::on(Kind::S3);
    let a = common::random(3 << 20, 30);
    env.put("lab/a:v1", &env.file("a.img", &a));
    let packs = common::list_files(&env.store().join("packs"));
    assert_eq!(packs.len(), 1, "{packs:?}");
    let pack = env.store().join("packs").join(&packs[0]);
    let bytes = std::fs::read(&pack).unwrap();

    // Cut to half: a short object, corrupt (exit 4), no output.
    std::fs::write(&pack, &bytes[..bytes.len() / 2]).unwrap();
    let out = env.path("a.out");
    let got = env
        .cmd()
        .args(["get", "lab/a:v1", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(common::code(&got), 4, "{}", String::from_utf8_lossy(&got.stderr));
    assert!(!out.exists(), "a failed get left its output");
    assert_eq!(common::code(&env.cmd().args(["verify"]).output().unwrap()), 4);

    // Gone: named missing.
    std::fs::remove_file(&pack).unwrap();
    let got = env.cmd().args(["get", "lab/a:v1", "-o", "-"]).output().unwrap();
    let err = String::from_utf8_lossy(&got.stderr);
    assert_eq!(common::code(&got), 4, "{err}");
    assert!(err.contains("missing"), "{err}");
    assert!(got.stdout.len() < a.len(), "a damaged image came back whole");
}

/// `ls` (and find, mount) on object storage reads again only the refs whose
/// ETag changed: a cached record is used as is (shown by editing the cache),
/// and a tag moved within the same second, a new tag and a removed one are
/// each seen by the next listing.
fn listings_read_only_changed_refs(kind: Kind) {
    let env = Env::on(kind);
    let a = env.put("lab/app:a", &env.file("a.img", &common::random(64 << 10, 1)))["image"]
        .as_str()
        .unwrap()
        .to_string();
    let b = env.put("lab/app:b", &env.file("b.img", &common::random(64 << 10, 2)))["image"]
        .as_str()
        .unwrap()
        .to_string();
    let image_of = |tag: &str| -> Option<String> {
        let v = env.json(&["ls"]);
        v["refs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ref"] == tag)
            .map(|r| r["image"].as_str().unwrap().to_string())
    };
    env.cmd()
        .args(["tag", "lab/app:a", "lab/app:t"])
        .assert()
        .success();
    assert_eq!(image_of("lab/app:t").as_deref(), Some(a.as_str()));
    // Moved at once (the same second as its first write): seen.
    env.cmd()
        .args(["tag", "lab/app:b", "lab/app:t"])
        .assert()
        .success();
    assert_eq!(image_of("lab/app:t").as_deref(), Some(b.as_str()));
    env.cmd().args(["rm", "lab/app:t"]).assert().success();
    assert_eq!(image_of("lab/app:t"), None);

    // The cache is what a listing answers from where the ETag is the same.
    // s3s-fs lists no ETags: there every listing reads every ref, no cache.
    let cache = env.path("index-a").join("refs-cache.json");
    if kind == Kind::S3 {
        assert!(!cache.exists());
        return;
    }
    let text = std::fs::read_to_string(&cache).expect("a ref cache where listings carry ETags");
    let fake = format!("blake3:{}", "0".repeat(64));
    std::fs::write(&cache, text.replace(&a, &fake)).unwrap();
    assert_eq!(image_of("lab/app:a").as_deref(), Some(fake.as_str()));
    // gc and verify read the store itself.
    env.cmd().args(["verify"]).assert().success();
    // A damaged cache is only a cache.
    std::fs::write(&cache, b"{ not json").unwrap();
    assert_eq!(image_of("lab/app:a").as_deref(), Some(a.as_str()));
}

#[test]
fn listings_read_only_changed_refs_on_s3() {
    listings_read_only_changed_refs(Kind::S3);
}

#[test]
fn listings_read_only_changed_refs_on_azure() {
    if common::azure::server().is_some() {
        listings_read_only_changed_refs(Kind::Azure);
    }
}

/// Figures for docs/PERFORMANCE.md, not a check: `ls` and `find` of 1,000 refs on
/// Azurite (whose listings carry ETags) with no ref cache, then warm.
/// `cargo test --test tests -- --ignored ref_listing_figures --nocapture`
#[test]
#[ignore]
fn ref_listing_figures_on_azure() {
    if common::azure::server().is_none() {
        return;
    }
    let env = Env::on(Kind::Azure);
    env.put("lab/app:v0", &env.file("a.img", &common::random(64 << 10, 1)));
    std::thread::scope(|s| {
        for w in 0..4 {
            let env = &env;
            s.spawn(move || {
                for i in (w..1000).step_by(4) {
                    env.cmd()
                        .args(["tag", "lab/app:v0", &format!("lab/app:t{i}")])
                        .assert()
                        .success();
                }
            });
        }
    });
    let cache = env.path("index-a").join("refs-cache.json");
    let _ = std::fs::remove_file(&cache);
    for run in ["no cache", "warm", "warm"] {
        let t = Instant::now();
        let v = env.json(&["ls"]);
        println!(
            "ls of {} refs on Azurite, {run}: {:.3} s",
            v["refs"].as_array().unwrap().len(),
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let v = env.json(&["find", "--name", "lab/*", "--label", "none=x"]);
    println!(
        "find over 1001 refs on Azurite, warm: {:.3} s ({} found)",
        t.elapsed().as_secs_f64(),
        v["matches"].as_array().map_or(0, |a| a.len())
    );
    let t = Instant::now();
    env.json(&["find", "--name", "lab/*"]);
    println!(
        "find --name over 1001 refs on Azurite, warm: {:.3} s",
        t.elapsed().as_secs_f64()
    );
}
