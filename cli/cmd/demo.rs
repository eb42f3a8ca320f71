//! `imgstore demo`: the whole job on generated data, nothing to download.
//! Two similar images (the second is the first with a few edits and an
//! insertion, as a new commit would be), put both, show what the second
//! added, get it back and check it byte for byte.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use imgstore_store::testdata::write_image;
use imgstore_store::{ImageRef, InitOptions, Input, Output, PutOptions, Store, TagRef};

use crate::args::{DemoArgs, Global};
use crate::cmd::UsageError;
use crate::output;
use crate::progress::Bar;

fn file_hash(path: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize())
}

/// The file by which `demo --dir D` knows that `D/store` and `D/index` are
/// its own to replace: written before it creates them.
const MARKER: &str = ".imgstore-demo";

/// Clears what an earlier demo left in `dir`, refusing a store it did not make.
fn clear_earlier_demo(dir: &Path) -> Result<()> {
    let (store, index, marker) = (dir.join("store"), dir.join("index"), dir.join(MARKER));
    let mine = marker.is_file();
    for d in [&store, &index] {
        if d.symlink_metadata().is_ok() && !mine {
            return Err(UsageError(format!(
                "{} exists and `imgstore demo` did not make it (no {} beside it): \
                 give --dir a new or empty directory",
                d.display(),
                marker.display()
            ))
            .into());
        }
    }
    for d in [&store, &index] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    std::fs::write(
        &marker,
        "made by `imgstore demo`: a later `imgstore demo --dir` here replaces store/ and index/\n",
    )?;
    Ok(())
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

pub fn run(g: &Global, a: &DemoArgs) -> Result<()> {
    let tmp;
    let dir: PathBuf = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            clear_earlier_demo(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let size = a.size.as_u64();
    let say = |s: String| -> Result<()> {
        if !g.quiet {
            crate::out!("{s}");
        }
        Ok(())
    };
    say(format!(
        "demo in {}: two {} images, the second a small edit of the first",
        dir.display(),
        output::size(size)
    ))?;
    let (v1, v2) = (dir.join("app-v1.img"), dir.join("app-v2.img"));
    write_image(&v1, size, 42, false)?;
    write_image(&v2, size, 42, true)?;

    let store_dir = dir.join("store");
    let store = Store::init(&store_dir, InitOptions::default(), Some(dir.join("index")))?;
    let bar = Bar::new(g.quiet);

    let t = Instant::now();
    let mut cp_target = dir.join("cp-copy.img");
    std::fs::copy(&v1, &cp_target)?;
    File::open(&cp_target)?.sync_all()?;
    let cp_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&cp_target)?;
    cp_target.clear();

    let mut reports = Vec::new();
    for (tag, path) in [("v1", &v1), ("v2", &v2)] {
        let r = store.put(
            &TagRef::parse(&format!("demo/app:{tag}"))?,
            Input::File(path.to_path_buf()),
            &PutOptions::default(),
            &bar,
        )?;
        say(format!(
            "put demo/app:{tag}: {} image, added {} on disk ({} new chunks, {} raw) in {:.2}s = {:.0} MB/s",
            output::size(r.size),
            output::size(r.added.stored_bytes),
            r.added.chunks,
            output::size(r.added.raw_bytes),
            r.seconds,
            mbps(r.size, r.seconds),
        ))?;
        reports.push(r);
    }
    let second = &reports[1];
    say(format!(
        "the second image cost {:.1}% of its size; `cp` of the first took {:.2}s = {:.0} MB/s",
        100.0 * second.added.stored_bytes as f64 / second.size as f64,
        cp_secs,
        mbps(size, cp_secs)
    ))?;

    let back = dir.join("app-v2.restored.img");
    let r = store.get(&ImageRef::parse("demo/app:v2")?, Output::File(back.clone()), &bar)?;
    if file_hash(&back)? != file_hash(&v2)? {
        bail!("restored image differs from the original: this is a bug, please report it");
    }
    say(format!(
        "get demo/app:v2: {} in {:.2}s = {:.0} MB/s, byte-identical to the original (BLAKE3 {})",
        output::size(r.size),
        r.seconds,
        mbps(r.size, r.seconds),
        r.image
    ))?;
    Ok(())
}
