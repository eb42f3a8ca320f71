//! Faults at real boundaries through the test hooks (store/src/hold.rs): a
//! disk that fails an fsync or a write with EIO, a compressor whose frames
//! decode to other bytes, a decoder that returns wrong bytes.

use std::path::Path;

use crate::common::{self, Env};

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A copy of `template`'s store and index, as a fresh env.
fn copy_of(template: &Env) -> Env {
    let env = Env::uninit();
    copy_tree(&template.store(), &env.store());
    copy_tree(&template.path("index-a"), &env.path("index-a"));
    env
}

/// The lines of a failed command's stderr, without the test hooks' own.
fn error_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("test hook"))
        .map(str::to_string)
        .collect()
}

/// Failed with one `imgstore:` line (and maybe a hint), no panic.
fn assert_one_line_error(out: &std::process::Output, what: &str) {
    assert!(!out.status.success(), "{what}: succeeded");
    let lines = error_lines(out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(
        !lines.is_empty()
            && lines[0].starts_with("imgstore: ")
            && (lines.len() == 1 || (lines.len() == 2 && lines[1].starts_with("hint: "))),
        "{what}: {stderr}"
    );
}

fn refs(env: &Env) -> Vec<String> {
    common::list_files(&env.store().join("refs"))
}

/// The n-th fsync, then the n-th file write, of a put failed with EIO, for
/// every n the put reaches: the put fails with one line (exit 1) and
/// publishes nothing, or (the EIO at the ref's own directory fsync, after
/// its rename) names the refs directory and leaves the ref naming the whole
/// image, or (after the ref: the log entry, the session's end) succeeds;
/// the store verifies clean, and the same put then succeeds.
#[test]
fn eio_at_any_fsync_or_write_of_a_put_fails_it_cleanly() {
    let template = Env::new();
    let old = common::image(1 << 20, 11);
    template.put("lab/app:old", &template.file("old.img", &old));
    let new = common::image(3 << 20, 12);
    let mut counts = Vec::new();
    for kind in ["fsync", "write"] {
        // The last n whose EIO struck the ref, and the n whose put succeeded.
        let (mut at_ref, mut succeeded) = (0, Vec::new());
        let mut n = 1;
        loop {
            let what = format!("EIO at {kind} {n}");
            let env = copy_of(&template);
            let f = env.file("new.img", &new);
            let out = env
                .cmd()
                .env("IMGSTORE_TEST_EIO", format!("{kind}:{n}"))
                .args(["put", "lab/app:new"])
                .arg(&f)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !stderr.contains("test hook: EIO") {
                assert!(out.status.success(), "{what}: {stderr}");
                counts.push((kind, n - 1));
                break;
            }
            if stderr.contains("/refs/lab/app") {
                at_ref = n;
            }
            if out.status.success() {
                succeeded.push(n);
                assert!(env.get("lab/app:new") == new, "{what}: other bytes");
            } else {
                assert_one_line_error(&out, &what);
                assert_eq!(common::code(&out), 1, "{what}: {stderr}");
                assert!(stderr.contains("Input/output error"), "{what}: {stderr}");
                if refs(&env).iter().any(|r| r.contains("new")) {
                    assert!(
                        stderr.contains("/refs/lab/app"),
                        "{what}: a ref appeared: {stderr}"
                    );
                    assert!(
                        env.get("lab/app:new") == new,
                        "{what}: a visible ref with other bytes"
                    );
                }
            }
            env.cmd().arg("verify").assert().success();
            env.put("lab/app:new", &f);
            assert!(env.get("lab/app:new") == new, "{what}: the put again");
            n += 1;
        }
        // Only an EIO after the ref (its log entry, the session's end)
        // leaves the put successful; one before it that went unnoticed
        // would be a put that reports durable what is not.
        assert!(at_ref > 0, "{kind}: no EIO struck the ref");
        assert!(
            succeeded.iter().all(|&s| s > at_ref) && succeeded.len() <= 4,
            "{kind}: the put succeeded despite EIO at {succeeded:?}, the ref's at {at_ref}"
        );
    }
    eprintln!("EIO: {counts:?} (fsyncs and writes of a put)");
    assert!(
        counts[0].1 >= 10 && counts[1].1 >= 5,
        "too few steps reached: {counts:?}"
    );
}

/// A compressor whose frames decode to other bytes: the put's round-trip
/// check refuses them, the put fails with one line (exit 1, "nothing was
/// stored") and publishes nothing, and the store verifies clean.
#[test]
fn a_compressor_that_encodes_other_bytes_is_caught_by_the_put() {
    let env = Env::new();
    let data = common::text(2 << 20, 21);
    let f = env.file("text.img", &data);
    let out = env
        .cmd()
        .env("IMGSTORE_TEST_CODEC", "encode")
        .args(["put", "lab/app:v1"])
        .arg(&f)
        .output()
        .unwrap();
    assert_one_line_error(&out, "encode");
    assert_eq!(common::code(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("decoded its own frame to other bytes"),
        "{stderr}"
    );
    assert!(refs(&env).is_empty(), "a ref was published");
    assert!(
        common::list_files(&env.store().join("packs")).is_empty(),
        "a pack was written"
    );
    env.cmd().args(["verify", "--read-data"]).assert().success();
    env.put("lab/app:v1", &f);
    assert!(env.get("lab/app:v1") == data);
}

/// A decoder that returns wrong bytes. For every frame: get names the
/// damage by pack, offset and chunk (exit 4), leaves no output file, and
/// writes nothing wrong to a stream. For one frame (the third decoded):
/// to a file, the image's hash catches it (exit 4, the image named, no
/// file); to a stream, the member's hash catches it and the chunk, read
/// again, comes out right.
#[test]
fn a_decoder_that_returns_wrong_bytes_is_caught_by_get() {
    let env = Env::new();
    let data = common::text(4 << 20, 22);
    env.put("lab/app:v1", &env.file("text.img", &data));
    let target = env.path("out.img");
    let get = |hook: &str, to_file: bool| {
        let mut cmd = env.cmd();
        cmd.env("IMGSTORE_TEST_CODEC", hook)
            .args(["get", "lab/app:v1", "-o"]);
        if to_file {
            cmd.arg(&target);
        } else {
            cmd.arg("-");
        }
        cmd.output().unwrap()
    };
    for to_file in [true, false] {
        let what = format!("every frame wrong, to a file: {to_file}");
        let out = get("decode", to_file);
        assert_one_line_error(&out, &what);
        assert_eq!(common::code(&out), 4, "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("pack") && stderr.contains("offset") && stderr.contains("chunk"),
            "{what}: {stderr}"
        );
        assert!(!target.exists(), "{what}: an output file was left");
        assert!(data.starts_with(&out.stdout), "{what}: wrong bytes written");
    }
    let out = get("decode:3", true);
    assert_one_line_error(&out, "one frame wrong, to a file");
    assert_eq!(common::code(&out), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt image blake3:"));
    assert!(!target.exists(), "an output file was left");
    let out = get("decode:3", false);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("test hook"),
        "the hook never struck"
    );
    assert!(
        out.status.success() && out.stdout == data,
        "one frame wrong, to a stream"
    );
    assert!(env.get("lab/app:v1") == data);
}
