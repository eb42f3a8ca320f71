//! The squashfs reader on file systems made by the real mksquashfs: every
//! block found, tiling the data area; gzip blocks given back byte for byte
//! by zlib -9 (the fact the archive tier of issue #30 rests on).

use std::path::{Path, PathBuf};
use std::process::Command;

use imgstore_store::{sif, squashfs};

use crate::common::{self, Env};

/// A tree with big, small (fragments), duplicate, random, empty files and a
/// symlink, as `mksquashfs -comp COMP` makes it; `None` without mksquashfs.
fn mksquashfs(env: &Env, comp: &str) -> Option<PathBuf> {
    if Command::new("mksquashfs").arg("-version").output().is_err() {
        println!("skipped: mksquashfs not installed (Debian squashfs-tools)");
        return None;
    }
    let tree = env.path(&format!("tree-{comp}"));
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..12u64 {
        let n = [300usize, 6000, 200_000, 900_000][i as usize % 4];
        std::fs::write(tree.join(format!("f{i}.txt")), common::image(n, i)).unwrap();
    }
    std::fs::write(tree.join("sub/rand.bin"), common::random(300_000, 99)).unwrap();
    std::fs::write(tree.join("sub/dup.txt"), common::image(900_000, 3)).unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("f1.txt", tree.join("link")).unwrap();
    let out = env.path(&format!("fs-{comp}.sqfs"));
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&out)
        .args(["-comp", comp, "-noappend", "-quiet"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    Some(out)
}

fn layout_of(path: &Path) -> Result<squashfs::Layout, squashfs::SquashError> {
    let bytes = std::fs::read(path).unwrap();
    let read = |o: u64, b: &mut [u8]| {
        b.copy_from_slice(&bytes[o as usize..o as usize + b.len()]);
        Ok(())
    };
    squashfs::layout(bytes.len() as u64, &read)
}

#[test]
fn every_block_is_found_and_gzip_blocks_reproduce() {
    let env = Env::new();
    let Some(fs) = mksquashfs(&env, "gzip") else {
        return;
    };
    // The blocks tile the data area after the superblock: none missed.
    let layout = layout_of(&fs).unwrap();
    let mut at = 96;
    for b in &layout.blocks {
        assert_eq!(b.offset, at, "a gap or overlap before {b:?}");
        at += u64::from(b.stored);
    }
    assert!(layout
        .blocks
        .iter()
        .any(|b| b.kind == squashfs::BlockKind::Fragment));

    // As a SIF's partition, through the store: every gzip block reproduces.
    let image = sif::build_for_tests(&[
        (sif::DATA_DEFFILE, "", b"Bootstrap: docker\nFrom: alpine\n"),
        (sif::DATA_PARTITION, "", &std::fs::read(&fs).unwrap()),
    ]);
    env.put("lab/fs:v1", &env.file("fs.sif", &image));
    let r = env.json(&["inspect", "--squashfs", "lab/fs:v1"]);
    let s = &r["squashfs"];
    assert_eq!(s["compressor"], "gzip");
    assert!(s["offset"].as_u64().unwrap() > 0, "{r}");
    let compressed = layout.blocks.iter().filter(|b| b.compressed).count() as u64;
    assert!(compressed > 5, "{r}");
    assert_eq!(s["reproduced_blocks"], compressed, "{r}");
    assert_eq!(s["other_blocks"], 0);
    assert_eq!(
        s["data_blocks"].as_u64().unwrap() + s["fragment_blocks"].as_u64().unwrap(),
        layout.blocks.len() as u64
    );
}

#[test]
fn other_compressors_and_other_images_are_named_not_read() {
    let env = Env::new();
    let Some(fs) = mksquashfs(&env, "xz") else { return };
    let err = layout_of(&fs).unwrap_err();
    assert!(err.to_string().contains("xz-compressed"), "{err}");
    env.put("lab/xz:v1", &fs);
    let out = env
        .cmd()
        .args(["inspect", "--squashfs", "lab/xz:v1"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("xz-compressed"));
    env.put("lab/raw:v1", &env.file("raw.img", &common::random(100_000, 1)));
    let out = env
        .cmd()
        .args(["inspect", "--squashfs", "lab/raw:v1"])
        .output()
        .unwrap();
    assert_eq!(common::code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no squashfs magic"));
}
