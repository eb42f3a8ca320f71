//! Several puts at once, on one host and from "different hosts".

use std::process::Stdio;

use crate::common::{self, Env, Kind};

fn four_puts_at_once_on_one_host_and_two_hosts(kind: Kind) {
    let env = Env::on(kind);
    let base = common::image(6 << 20, 100);
    // Similar images, so the puts race to store the same chunks too.
    let images: Vec<Vec<u8>> = (0..6).map(|i| common::edit(&base, 3, 200 + i)).collect();
    let files: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, d)| env.file(&format!("c{i}.img"), d))
        .collect();
    let children: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            // Four on host a (one shared index), two on host b.
            let host = if i < 4 { "a" } else { "b" };
            env.process(host)
                .args(["put", &format!("ci/app:c{i}")])
                .arg(f)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "put {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every image comes back byte-identical through either host's index,
    // and through a third host that has never seen the store.
    for (i, data) in images.iter().enumerate() {
        for host in ["a", "b", "c"] {
            let got = env
                .cmd_host(host)
                .args(["get", &format!("ci/app:c{i}"), "-o", "-"])
                .assert()
                .success()
                .get_output()
                .stdout
                .clone();
            assert!(&got == data, "image {i} via host {host} differs");
        }
    }
}

crate::on_both_backends!(four_puts_at_once_on_one_host_and_two_hosts,);
