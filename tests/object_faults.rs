//! Object storage as it misbehaves: 503 SlowDown, 500s and stalled
//! requests from a fault-injecting proxy in front of s3s-fs, and a client
//! whose clock is off (libfaketime).

use std::time::{Duration, Instant};

use crate::common::proxy::{Fault, Proxy};
use crate::common::{self, Env, Kind};

/// A store on the shared s3s-fs, reached through a new proxy.
fn behind_proxy() -> (Proxy, Env) {
    let proxy = Proxy::start(common::s3::server());
    let env = Env::uninit_at(proxy.server);
    env.cmd().arg("init").assert().success();
    (proxy, env)
}

/// `imgstore ARGS` with a retry budget of `budget_secs`: its output.
fn run(env: &Env, budget_secs: u64, args: &[&str]) -> std::process::Output {
    env.cmd()
        .env("IMGSTORE_RETRY_SECS", budget_secs.to_string())
        .args(args)
        .output()
        .unwrap()
}

/// A failed command's stderr: a one-line error and a hint; no panic.
fn one_line_error(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(common::code(out), 1, "{err}");
    let lines: Vec<_> = err.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("imgstore: ") && lines[1].starts_with("hint: "),
        "not a one-line error and a hint: {err}"
    );
    err
}

#[test]
fn slow_down_and_internal_errors_are_retried_and_the_bytes_are_right() {
    let (proxy, env) = behind_proxy();
    let data = common::image(6 << 20, 40);
    let f = env.file("v1.img", &data);

    // The first attempt of every distinct request: 503 SlowDown.
    proxy.set(|r| r.first_time.then_some(Fault::SlowDown));
    let started = Instant::now();
    env.put("lab/app:v1", &f);
    let put = (proxy.requests(), proxy.faults(), started.elapsed());
    assert!(put.1 >= 5, "only {} of {} requests refused", put.1, put.0);

    // A new host's get (its index caught up through the proxy): 500s.
    proxy.set(|r| r.first_time.then_some(Fault::Internal));
    let started = Instant::now();
    let out = env.path("b.out");
    env.cmd_host("b")
        .args(["get", "lab/app:v1", "-o"])
        .arg(&out)
        .assert()
        .success();
    let get = (proxy.requests(), proxy.faults(), started.elapsed());
    assert!(get.1 >= 3, "only {} of {} requests refused", get.1, get.0);
    assert!(std::fs::read(&out).unwrap() == data, "wrong bytes after 500s");

    // The first four requests, whatever they are: the first is refused
    // four times in a row and backs off longer each time.
    proxy.set(|r| (r.n < 4).then_some(Fault::SlowDown));
    assert!(env.get("lab/app:v1") == data, "wrong bytes after 503s");
    assert_eq!(proxy.faults(), 4);
    eprintln!(
        "retry figures: put {}/{} requests refused, {:.1}s; new host's get {}/{} refused, {:.1}s",
        put.1,
        put.0,
        put.2.as_secs_f64(),
        get.1,
        get.0,
        get.2.as_secs_f64()
    );
}

#[test]
fn a_server_that_keeps_refusing_is_a_clear_error_after_the_budget_and_publishes_nothing() {
    let (proxy, env) = behind_proxy();
    let data = common::random(3 << 20, 41);
    let f = env.file("v1.img", &data);
    let f = f.to_str().unwrap();

    proxy.set(|_| Some(Fault::SlowDown));
    let started = Instant::now();
    let out = run(&env, 2, &["put", "lab/app:v1", f]);
    let took = started.elapsed();
    let err = one_line_error(&out);
    let port = proxy.server.endpoint.rsplit(':').next().unwrap();
    for needle in ["503", "SlowDown", "retries", port, "IMGSTORE_RETRY_SECS"] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    assert!(took < Duration::from_secs(20), "gave up only after {took:?}");
    eprintln!(
        "every request 503, budget 2 s: exit 1 after {:.1}s, {} requests; {err}",
        took.as_secs_f64(),
        proxy.requests()
    );

    // Only the ref's write refused: packs and manifest land, the image is
    // not published.
    proxy.set(|r| (r.method == "PUT" && r.target.contains("/refs/")).then_some(Fault::SlowDown));
    let out = run(&env, 2, &["put", "lab/app:v1", f]);
    one_line_error(&out);
    assert!(proxy.faults() >= 2, "the ref's write was not retried");
    proxy.set(|_| None);
    let got = env.cmd().args(["get", "lab/app:v1", "-o", "-"]).output().unwrap();
    assert_eq!(common::code(&got), 3, "a failed put published its ref");
    assert!(got.stdout.is_empty());

    // The server is well again: the same put succeeds.
    env.put("lab/app:v1", &env.file("v1.img", &data));
    assert!(env.get("lab/app:v1") == data);
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

#[test]
fn a_stalled_request_times_out_into_the_same_clear_error() {
    const BUDGET: u64 = 5;
    // A get gives up after one budget, not two: a server that gave no
    // answer is not asked again for each chunk (8 s leaves room for a
    // loaded machine; two budgets took 10 s and more).
    let one_budget = Duration::from_secs(BUDGET * 8 / 5);
    let (proxy, env) = behind_proxy();
    let data = common::random(2 << 20, 42);
    let f = env.file("v1.img", &data);
    env.put("lab/app:v1", &f);

    // Pack reads accepted, never answered.
    proxy.set(|r| (r.method == "GET" && r.target.contains("/packs/")).then_some(Fault::Stall));
    let target = env.path("v1.out");
    let started = Instant::now();
    let out = run(
        &env,
        BUDGET,
        &["get", "lab/app:v1", "-o", target.to_str().unwrap()],
    );
    let get_took = started.elapsed();
    let err = one_line_error(&out);
    assert!(err.contains("timed out") || err.contains("timeout"), "{err}");
    assert!(proxy.faults() >= 1, "no pack read reached the proxy");
    assert!(get_took < one_budget, "gave up only after {get_took:?}");
    assert!(!target.exists(), "a failed get left its output");

    // Pack reads answered halfway, then nothing more.
    proxy.set(|r| (r.method == "GET" && r.target.contains("/packs/")).then_some(Fault::StallBody));
    let started = Instant::now();
    let out = run(
        &env,
        BUDGET,
        &["get", "lab/app:v1", "-o", target.to_str().unwrap()],
    );
    let body_took = started.elapsed();
    let body_err = one_line_error(&out);
    assert!(proxy.faults() >= 1, "no pack read reached the proxy");
    assert!(body_took < one_budget, "gave up only after {body_took:?}");
    assert!(!target.exists(), "a failed get left its output");

    // Pack writes stalled: the put gives up and publishes nothing.
    proxy.set(|r| (r.method == "PUT" && r.target.contains("/packs/")).then_some(Fault::Stall));
    let started = Instant::now();
    let f2 = env.file("v2.img", &common::random(2 << 20, 43));
    let out = run(&env, BUDGET, &["put", "lab/app:v2", f2.to_str().unwrap()]);
    let put_took = started.elapsed();
    one_line_error(&out);
    assert!(
        put_took < Duration::from_secs(30),
        "gave up only after {put_took:?}"
    );
    proxy.set(|_| None);
    assert_eq!(
        common::code(&env.cmd().args(["get", "lab/app:v2", "-o", "-"]).output().unwrap()),
        3,
        "a failed put published its ref"
    );
    assert!(env.get("lab/app:v1") == data);
    eprintln!(
        "stall figures, budget {BUDGET} s: get exit 1 after {:.1}s, get of half bodies after {:.1}s, \
         put exit 1 after {:.1}s; {err}{body_err}",
        get_took.as_secs_f64(),
        body_took.as_secs_f64(),
        put_took.as_secs_f64()
    );
}

/// Pack files of the store, as s3s-fs keeps them.
fn packs(env: &Env) -> Vec<String> {
    common::list_files(&env.store().join("packs"))
}

#[test]
fn a_listing_that_fails_makes_gc_refuse_and_delete_nothing() {
    let (proxy, env) = behind_proxy();
    let keep = common::random(2 << 20, 44);
    let gone = common::random(2 << 20, 45);
    env.put("lab/keep:v1", &env.file("keep.img", &keep));
    env.put("lab/gone:v1", &env.file("gone.img", &gone));
    env.cmd().args(["rm", "lab/gone:v1"]).assert().success();
    let first = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert!(first["packs_condemned"].as_u64().unwrap() >= 1, "{first}");
    // The plan is ready: the next gc that can list deletes gone's pack.
    let before = packs(&env);

    for only_refs in [false, true] {
        proxy.set(move |r| {
            (r.is_list() && (!only_refs || r.target.contains("refs"))).then_some(Fault::Internal)
        });
        let out = run(&env, 2, &["gc", "--grace", "0s"]);
        let err = one_line_error(&out);
        assert!(err.contains("500"), "{err}");
        assert!(
            proxy.faults() >= 2,
            "only_refs {only_refs}: the listing was not retried"
        );
        assert_eq!(packs(&env), before, "only_refs {only_refs}: gc deleted packs");
        proxy.set(|_| None);
        assert!(env.get("lab/keep:v1") == keep);
    }

    // Listings work again: the plan is executed.
    let done = common::json_of(env.cmd(), &["gc", "--grace", "0s"]);
    assert!(done["packs_deleted"].as_u64().unwrap() >= 1, "{done}");
    assert!(env.get("lab/keep:v1") == keep);
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

/// libfaketime, which shifts the clock of the process it is preloaded into.
fn libfaketime() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("the clock tests need libfaketime: `apt-get install faketime`")
}

/// The environment that runs a process with its clock `offset` off
/// (libfaketime's `+12m`, `-12m`, `+1h`).
fn skew(offset: &str) -> [(&'static str, String); 2] {
    [
        ("LD_PRELOAD", libfaketime().to_string()),
        ("FAKETIME", offset.to_string()),
    ]
}

/// `imgstore` on host `host` with its clock `offset` off.
fn skewed(env: &Env, host: &str, offset: &str) -> assert_cmd::Command {
    let mut c = env.process(host);
    c.envs(skew(offset));
    assert_cmd::Command::from_std(c)
}

/// How far the client's clock is off, as its last log entry shows.
fn client_offset(env: &Env, offset: &str) -> i64 {
    let log = common::json_of(skewed(env, "a", offset), &["log"]);
    let logged = log["events"].as_array().unwrap().last().unwrap()["time"]
        .as_i64()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    logged - now as i64
}

#[test]
fn a_client_clock_ahead_neither_shortens_grace_nor_ends_live_sessions() {
    // 12 minutes: more than the 10-minute session lease, less than the
    // 15 minutes an S3 server accepts a signature off by.
    const AHEAD: &str = "+12m";
    let env = Env::on(Kind::S3);
    let keep = common::random(2 << 20, 50);
    let gone = common::random(2 << 20, 51);
    for (name, data) in [("lab/keep:v1", &keep), ("lab/gone:v1", &gone)] {
        let f = env.file("in.img", data);
        skewed(&env, "a", AHEAD)
            .args(["put", name])
            .arg(&f)
            .assert()
            .success();
    }
    let off = client_offset(&env, AHEAD);
    assert!(
        (700..=760).contains(&off),
        "the client clock is {off}s off, not 12 min"
    );
    skewed(&env, "a", AHEAD)
        .args(["rm", "lab/gone:v1"])
        .assert()
        .success();

    // Grace: 5 minutes by the server's clock, though the client's says 12
    // have passed since the plan was written.
    let gc = |grace: &str| common::json_of(skewed(&env, "a", AHEAD), &["gc", "--grace", grace]);
    let first = gc("5m");
    assert!(first["packs_condemned"].as_u64().unwrap() >= 1, "{first}");
    let second = gc("5m");
    assert_eq!(
        second["packs_deleted"], 0,
        "deleted inside the grace period: {second}"
    );
    assert!(
        second["waiting"].as_str().unwrap_or("").contains("grace period"),
        "{second}"
    );

    // Sessions: a put renewed seconds ago by the server's clock is live,
    // though the client's clock says it has been silent past its lease.
    // (Dropping the waiting plan is safe: it only delays deletion.)
    std::fs::remove_file(env.store().join("gc/plan")).unwrap();
    let mut next = keep.clone();
    next.extend(common::random(100_000, 52));
    let f = env.file("next.img", &next);
    let envs = skew(AHEAD);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let put = common::spawn_held(
        &env,
        "put-after-lookup",
        &["put", "lab/next:v1", f.to_str().unwrap()],
        &envs,
    );
    let condemn = gc("0s");
    assert!(condemn["packs_condemned"].as_u64().unwrap() >= 1, "{condemn}");
    let waits = gc("0s");
    assert_eq!(
        waits["packs_deleted"], 0,
        "deleted while a listed put was live: {waits}"
    );
    assert!(
        waits["waiting"].as_str().unwrap_or("").contains("sessions/put-"),
        "{waits}"
    );
    common::release(&env, "put-after-lookup");
    let out = put.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The put ended: the plan goes ahead.
    let done = gc("0s");
    assert!(done["packs_deleted"].as_u64().unwrap() >= 1, "{done}");
    assert!(env.get("lab/keep:v1") == keep);
    assert!(env.get("lab/next:v1") == next);
    env.cmd().args(["verify", "--read-data"]).assert().success();
}

#[test]
fn a_client_clock_behind_does_not_stretch_grace_and_an_hour_off_is_refused() {
    const BEHIND: &str = "-12m";
    let env = Env::on(Kind::S3);
    let keep = common::random(2 << 20, 53);
    let gone = common::random(2 << 20, 54);
    for (name, data) in [("lab/keep:v1", &keep), ("lab/gone:v1", &gone)] {
        let f = env.file("in.img", data);
        skewed(&env, "a", BEHIND)
            .args(["put", name])
            .arg(&f)
            .assert()
            .success();
    }
    let off = client_offset(&env, BEHIND);
    assert!(
        (-760..=-700).contains(&off),
        "the client clock is {off}s off, not -12 min"
    );
    skewed(&env, "a", BEHIND)
        .args(["rm", "lab/gone:v1"])
        .assert()
        .success();
    let gc = || common::json_of(skewed(&env, "a", BEHIND), &["gc", "--grace", "2s"]);
    let first = gc();
    assert!(first["packs_condemned"].as_u64().unwrap() >= 1, "{first}");
    // By the client's clock the plan was written 12 minutes from now; by
    // the server's it is 3 seconds old, past its 2-second grace.
    std::thread::sleep(Duration::from_secs(3));
    let second = gc();
    assert!(second["packs_deleted"].as_u64().unwrap() >= 1, "{second}");
    assert!(env.get("lab/keep:v1") == keep);

    // An hour off: the server refuses the signature; a clear error, fast
    // (a refusal is not retried).
    for offset in ["+1h", "-1h"] {
        let started = Instant::now();
        let out = skewed(&env, "a", offset).args(["ls"]).output().unwrap();
        let err = one_line_error(&out);
        assert!(err.contains("RequestTimeTooSkewed"), "{offset}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{offset}: {err}");
    }
}
