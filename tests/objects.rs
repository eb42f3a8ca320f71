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
