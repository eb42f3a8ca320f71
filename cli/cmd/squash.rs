//! `imgstore inspect --squashfs`: the squashfs inside an image, block by
//! block, and how much of it zlib -9 gives back byte for byte (what the
//! archive tier of issue #30 could keep uncompressed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use imgstore_store::sif::DATA_PARTITION;
use imgstore_store::squashfs::{self, SquashReport};
use imgstore_store::{ImageReader, ImageRef, Progress};

use super::UsageError;
use crate::args::{Global, InspectArgs};
use crate::output;
use crate::progress::Bar;

pub fn inspect(g: &Global, a: &InspectArgs) -> Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    let store = Arc::new(super::open(g)?);
    let id = store.resolve(&image)?.id;
    let head = store.manifest_file(&id)?.head;
    let img = store.reader()?.open_id(&id)?;
    // A SIF's squashfs is its partition object; else the image itself.
    let (offset, len) = head
        .meta
        .sif
        .as_ref()
        .and_then(|s| s.descriptors.iter().find(|d| d.data_type == DATA_PARTITION))
        .map_or((0, img.size()), |d| (d.offset, d.size));
    let read = |o: u64, buf: &mut [u8]| read_exact(&img, offset + o, buf);
    let layout = squashfs::layout(len, &read).map_err(|e| {
        UsageError(format!(
            "{image}: no squashfs this can read at offset {offset}: {e}"
        ))
    })?;
    let pool = imgstore_store::ops::own_pool("the squashfs check", "imgstore-squash-")?;
    let bar = Bar::new(g.quiet || g.json);
    let total: u64 = layout
        .blocks
        .iter()
        .filter(|b| b.compressed)
        .map(|b| u64::from(b.stored))
        .sum();
    bar.start("recompressing blocks", Some(total));
    let done = AtomicU64::new(0);
    let advance = |n: u64| {
        done.fetch_add(n, Ordering::Relaxed);
        bar.advance(n);
    };
    let started = std::time::Instant::now();
    let r = SquashReport::check(offset, &layout, &read, &pool, &advance)
        .map_err(|e| UsageError(format!("{image}: {e}")))?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    if g.json {
        #[derive(serde::Serialize)]
        struct R<'a> {
            image: imgstore_store::ImageId,
            squashfs: &'a SquashReport,
            seconds: f64,
        }
        return output::json(&R {
            image: id,
            squashfs: &r,
            seconds,
        });
    }
    let mut t = output::table(&["FIELD", "VALUE"]);
    let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    for (k, v) in [
        ("offset", r.offset.to_string()),
        ("compressor", r.compressor.clone()),
        ("block size", output::size(u64::from(r.block_size))),
        ("data blocks", r.data_blocks.to_string()),
        ("fragment blocks", r.fragment_blocks.to_string()),
        ("stored raw", r.raw_blocks.to_string()),
        (
            "compressed",
            format!(
                "{} inflating to {}",
                output::size(r.compressed_bytes),
                output::size(r.inflated_bytes)
            ),
        ),
        (
            "reproduced by zlib -9",
            format!(
                "{} blocks, {} ({:.1}% of compressed bytes)",
                r.reproduced_blocks,
                output::size(r.reproduced_bytes),
                pct(r.reproduced_bytes, r.compressed_bytes)
            ),
        ),
        ("not reproduced", r.other_blocks.to_string()),
        (
            "checked in",
            format!(
                "{seconds:.1} s ({:.0} MiB/s of inflated bytes)",
                r.inflated_bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9)
            ),
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    crate::out!("{t}");
    Ok(())
}

fn read_exact(img: &ImageReader, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let n = img.read_at(offset, buf).map_err(std::io::Error::other)?;
    if n < buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "past the end of the image",
        ));
    }
    Ok(())
}
