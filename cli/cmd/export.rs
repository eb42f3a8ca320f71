//! `imgstore export REF DIR` and `imgstore get --lock`: an experiment
//! folder tied to the exact image it ran in.
//!
//! Export writes `imgstore.lock`, the definition file and `run.sh` into
//! DIR, each whole (written beside its name and renamed), the lock last: it
//! lists the files it came with, so a later `export --force` overwrites
//! those and never a file export did not write.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use imgstore_store::lock::{self, LockFile, LockedPut, LockedStore, LOCK_FORMAT, LOCK_VERSION};
use imgstore_store::{Error, ImageId, ImageRef, Store, Wanted};
use serde::Serialize;

use super::UsageError;
use crate::args::{ExportArgs, GetArgs, Global};
use crate::output;
use crate::progress::Bar;

/// The lock's file name in an experiment folder.
pub const LOCK_FILE: &str = "imgstore.lock";
const RUN_SCRIPT: &str = "run.sh";
const TEMPLATE: &str = include_str!("run.sh.in");

#[derive(Serialize)]
struct ExportReport<'a> {
    dir: PathBuf,
    files: Vec<&'a str>,
    pinned: bool,
    lock: &'a LockFile,
}

pub fn export(g: &Global, a: &ExportArgs) -> Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    if let Some(r) = &a.registry {
        if !r.starts_with("oras://") {
            return Err(UsageError(format!(
                "--registry {r}: give an oras:// URL (oras://HOST/NAME:TAG)"
            ))
            .into());
        }
    }
    let previous = check_folder(&a.dir, a.force)?;
    let store = Arc::new(super::open(g)?);
    let resolved = store.resolve(&image)?;
    let id = resolved.id;
    let head = store.manifest_file(&id)?.head;
    let sif = head.meta.sif.as_ref();
    let record = resolved.record.as_ref();
    let deffile_text = store.deffile(&resolved)?.map(|(text, _)| text);
    let mut labels = sif.map(|s| s.labels.clone()).unwrap_or_default();
    labels.extend(record.map(|r| r.labels.clone()).unwrap_or_default());
    let format = lock::image_format(&first_bytes(&store, &id)?, sif.is_some());

    // What the folder will hold, checked before anything is written or pinned.
    let stem = resolved
        .tag
        .as_ref()
        .map_or("image", |t| t.name.rsplit('/').next().unwrap_or("image"));
    let def_name = deffile_text.as_ref().map(|_| format!("{stem}.def"));
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    if let (Some(name), Some(text)) = (&def_name, &deffile_text) {
        contents.push((name.clone(), text.clone().into_bytes()));
    }
    for (name, _) in &contents {
        check_ours(&a.dir, name, previous.as_ref())?;
    }
    check_ours(&a.dir, RUN_SCRIPT, previous.as_ref())?;

    let sha = store.image_sha256(&id, &Bar::new(g.quiet || g.json))?;
    let location = store_location(&store.location());
    let mut lock = LockFile {
        format: LOCK_FORMAT.into(),
        version: LOCK_VERSION,
        store: LockedStore {
            id: store.config().store_id.clone(),
            location: location.clone(),
        },
        reference: resolved.tag.as_ref().map(|t| t.to_string()),
        image: id,
        sha256: format!("sha256:{}", sha.sha256),
        size: head.size,
        image_format: format.into(),
        put: record.map(|r| LockedPut {
            time: r.created,
            date: output::date(r.created),
            user: r.user.clone(),
            host: r.host.clone(),
        }),
        labels,
        deffile: def_name,
        registry: a.registry.clone(),
        files: BTreeMap::new(),
    };
    let ext = if format == "sif" { "sif" } else { "img" };
    contents.push((
        RUN_SCRIPT.into(),
        run_script(&lock, &location, &format!("{}.{ext}", id.0.to_hex())).into_bytes(),
    ));
    for (name, bytes) in &contents {
        lock.files
            .insert(name.clone(), format!("blake3:{}", blake3::hash(bytes).to_hex()));
    }

    // Pinned before the lock exists: a lock never names an image gc may free.
    fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let pinned = !a.no_pin;
    if pinned {
        let dir = fs::canonicalize(&a.dir).unwrap_or_else(|_| a.dir.clone());
        let reason = a
            .reason
            .clone()
            .unwrap_or_else(|| format!("exported to {}", dir.display()));
        store.pin(&ImageRef::Id(id.0.to_hex()), &reason)?;
    }
    for (name, bytes) in &contents {
        write_whole(&a.dir.join(name), bytes, name == RUN_SCRIPT)?;
    }
    write_whole(&a.dir.join(LOCK_FILE), &lock.to_bytes(), false)?;

    let mut files: Vec<&str> = vec![LOCK_FILE];
    files.extend(contents.iter().map(|(n, _)| n.as_str()));
    if g.json {
        return output::json(&ExportReport {
            dir: a.dir.clone(),
            files,
            pinned,
            lock: &lock,
        });
    }
    if !g.quiet {
        crate::out!(
            "exported {} ({id}) to {}: {}{}",
            lock.reference.as_deref().unwrap_or("image"),
            a.dir.display(),
            files.join(", "),
            if pinned { "; the image is pinned" } else { "" }
        );
    }
    Ok(())
}

/// `imgstore get --lock FILE`: exactly the locked image, by id, from the
/// store given (default: the one the lock names).
pub fn get_locked(g: &Global, a: &GetArgs, path: &Path) -> Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(Wanted::InputFile(path.to_path_buf())).into())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let lock = LockFile::parse(&bytes, &path.display().to_string())?;
    let location = g.store.clone().unwrap_or_else(|| lock.store.location.clone());
    let store = super::open_at(g, &location)?;
    if store.config().store_id != lock.store.id && !g.quiet {
        eprintln!(
            "imgstore: the lock was written from store {} ({}); fetching the same image id from {location}",
            lock.store.id, lock.store.location
        );
    }
    let id = store.check_lock(&lock)?;
    super::get::get_image(g, &store, a, &ImageRef::Id(id.0.to_hex()))
}

/// The existing lock of DIR, after checking export may write there: DIR is
/// new or empty, or `force` and any lock in it is one export wrote.
fn check_folder(dir: &Path, force: bool) -> Result<Option<LockFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(UsageError(format!("{} is not a directory", dir.display())).into())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", dir.display()))),
    };
    if entries > 0 && !force {
        return Err(UsageError(format!(
            "{} is not empty: export writes {LOCK_FILE}, run.sh and the definition file into a new or empty folder (--force writes them here, replacing only files an earlier export wrote)",
            dir.display()
        ))
        .into());
    }
    let lock_path = dir.join(LOCK_FILE);
    match fs::read(&lock_path) {
        Ok(b) => Ok(Some(
            LockFile::parse(&b, &lock_path.display().to_string()).map_err(|_| {
                UsageError(format!(
                    "{} exists and is not a lock file export wrote: move it away first",
                    lock_path.display()
                ))
            })?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", lock_path.display()))),
    }
}

/// Refuses to replace DIR/name unless an earlier export wrote it and it is
/// unchanged since (its BLAKE3 is the one the earlier lock lists).
fn check_ours(dir: &Path, name: &str, previous: Option<&LockFile>) -> Result<()> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let ours = format!("blake3:{}", blake3::hash(&bytes).to_hex());
    if previous.and_then(|l| l.files.get(name)) == Some(&ours) {
        return Ok(());
    }
    Err(UsageError(format!(
        "{} exists and was not written by imgstore export (or was changed since): move it away first",
        path.display()
    ))
    .into())
}

/// Writes `bytes` as `path`, whole: beside it first, then renamed.
fn write_whole(path: &Path, bytes: &[u8], executable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgstore-export-")
        .tempfile_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::Error::new(e.error).context(format!("writing {}", path.display())))?;
    Ok(())
}

/// The image's first 2 KiB (enough for an ext superblock).
fn first_bytes(store: &Arc<Store>, id: &ImageId) -> Result<Vec<u8>> {
    let img = store.reader()?.open_id(id)?;
    let mut buf = vec![0u8; 2048.min(img.size() as usize)];
    let n = img.read_at(0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// A store location as a lock keeps it: a directory made absolute, a URL as is.
fn store_location(location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    fs::canonicalize(location).map_or_else(|_| location.to_string(), |p| p.display().to_string())
}

/// `s` quoted for a POSIX shell: in single quotes, each `'` as `'\''`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// run.sh for `lock`, fetching from `store` into the cache as `file`.
fn run_script(lock: &LockFile, store: &str, file: &str) -> String {
    TEMPLATE
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@IMAGE_ID@", &sh_quote(&lock.image.to_string()))
        .replace("@SHA256@", &sh_quote(&lock.sha256))
        .replace("@SIZE@", &lock.size.to_string())
        .replace("@STORE@", &sh_quote(store))
        .replace("@REGISTRY@", &sh_quote(lock.registry.as_deref().unwrap_or("")))
        .replace("@DEFFILE@", &sh_quote(lock.deffile.as_deref().unwrap_or("")))
        .replace("@FILE@", file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_every_character() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("$(x) `y` \"z\"\n"), "'$(x) `y` \"z\"\n'");
    }

    #[test]
    fn the_script_has_no_placeholder_left() {
        let lock = LockFile::parse(
            format!(
                r#"{{"format":"imgstore-lock","version":1,"store":{{"id":"s","location":"/x"}},"ref":null,
                "image":"blake3:{}","sha256":"sha256:{}","size":3,"image_format":"raw","put":null,
                "labels":{{}},"deffile":null,"registry":null,"files":{{}}}}"#,
                "ab".repeat(32),
                "cd".repeat(32)
            )
            .as_bytes(),
            "t",
        )
        .unwrap();
        let s = run_script(&lock, "/st'ore", "f.img");
        for p in [
            "@VERSION@",
            "@IMAGE_ID@",
            "@SHA256@",
            "@SIZE@",
            "@STORE@",
            "@REGISTRY@",
            "@DEFFILE@",
            "@FILE@",
        ] {
            assert!(!s.contains(p), "{p} left in run.sh");
        }
        assert!(s.contains(r"store=${IMGSTORE_STORE:-'/st'\''ore'}"));
    }
}
