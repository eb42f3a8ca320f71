//! completions, man page, help, demo.

use crate::common::Env;

#[test]
fn completions_and_man_page() {
    let env = Env::uninit();
    env.cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicates::str::contains("imgstore"));
    env.cmd()
        .arg("man")
        .assert()
        .success()
        .stdout(predicates::str::contains(".TH imgstore"));
    env.cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicates::str::contains("Exit codes"));
}

#[test]
fn demo_runs_end_to_end() {
    let env = Env::uninit();
    env.cmd()
        .args(["demo", "--size", "12MiB", "--dir"])
        .arg(env.path("demo"))
        .assert()
        .success()
        .stdout(predicates::str::contains("byte-identical"));
}
