//! Commands that read or move refs: ls, inspect, deffile, tag, rm, log.

use std::collections::BTreeMap;

use anyhow::Result;
use imgstore_store::manifest::Entry;
use imgstore_store::refs::Added;
use imgstore_store::{ImageId, ImageRef, TagRef};
use serde::Serialize;

use crate::args::{Global, InspectArgs, ListArgs, LsArgs, RefArg, RmArgs, TagArgs};
use crate::output;

#[derive(Serialize)]
struct LsRow {
    #[serde(rename = "ref")]
    reference: String,
    name: String,
    tag: String,
    image: ImageId,
    size: u64,
    created: u64,
    user: String,
    host: String,
    added: Added,
    /// `bytes` or `archive` (see `imgstore archive`).
    tier: &'static str,
}

#[derive(Serialize)]
struct LsReport {
    refs: Vec<LsRow>,
}

pub fn ls(g: &Global, a: &ListArgs) -> Result<()> {
    let store = super::open(g)?;
    if a.pins {
        return super::pin::list(g, &store);
    }
    let archived = store.archived_images()?;
    let rows: Vec<LsRow> = store
        .refs_for_display(a.name.as_deref())?
        .into_iter()
        .map(|(t, r)| LsRow {
            tier: if archived.contains(&r.image) {
                "archive"
            } else {
                "bytes"
            },
            reference: t.to_string(),
            name: t.name,
            tag: t.tag,
            image: r.image,
            size: r.size,
            created: r.created,
            user: r.user,
            host: r.host,
            added: r.added,
        })
        .collect();
    if g.json {
        return output::json(&LsReport { refs: rows });
    }
    // The tier column only where some image is archived.
    let tiers = rows.iter().any(|r| r.tier != "bytes");
    let mut head = vec!["NAME", "TAG", "IMAGE", "SIZE", "ADDED", "CREATED", "BY"];
    if tiers {
        head.push("TIER");
    }
    let mut t = output::table(&head);
    for r in &rows {
        let mut row = vec![
            r.name.clone(),
            r.tag.clone(),
            output::short_id(&r.image),
            output::size(r.size),
            output::size(r.added.stored_bytes),
            output::date(r.created),
            format!("{}@{}", r.user, r.host),
        ];
        if tiers {
            row.push(r.tier.to_string());
        }
        t.add_row(row);
    }
    if !rows.is_empty() {
        crate::out!("{t}");
    } else if !g.quiet {
        eprintln!("no images");
    }
    Ok(())
}

#[derive(Serialize)]
struct ArchiveFacts {
    inflated_blocks: usize,
    shared_blocks: u64,
    other_blocks: u64,
    stream_size: u64,
    archived: u64,
}

#[derive(Serialize)]
struct InspectReport {
    image: ImageId,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    size: u64,
    chunks: usize,
    unique_chunks: usize,
    unique_chunk_bytes: u64,
    zero_bytes: u64,
    /// `bytes` (as put) or `archive` (see `imgstore archive`).
    tier: &'static str,
    /// For an archived image: blocks kept inflated, and its stream's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<ArchiveFacts>,
    labels: BTreeMap<String, String>,
    has_deffile: bool,
    sif: bool,
    /// The image whose full manifest this image's is a delta against
    /// (`null`: a full manifest).
    manifest_base: Option<ImageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    added: Option<Added>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sif_descriptors: Option<Vec<imgstore_store::sif::SifDescriptor>>,
}

pub fn inspect(g: &Global, a: &InspectArgs) -> Result<()> {
    if a.squashfs {
        return super::squash::inspect(g, a);
    }
    let image = ImageRef::parse(&a.reference)?;
    let store = super::open(g)?;
    let resolved = store.resolve(&image)?;
    let m = store.manifest(&resolved.id)?;
    let manifest_base = store.manifest_base(&resolved.id)?;
    let (unique_chunks, unique_chunk_bytes) = m.unique_chunks();
    let sif = m.meta.sif.as_ref();
    let mut labels = sif.map(|s| s.labels.clone()).unwrap_or_default();
    let rec = resolved.record.as_ref();
    if let Some(r) = rec {
        labels.extend(r.labels.clone());
    }
    let archive = store.recipe(&resolved.id)?.map(|r| ArchiveFacts {
        inflated_blocks: r.blocks.len(),
        shared_blocks: r.meta.shared_blocks,
        other_blocks: r.meta.other_blocks,
        stream_size: r.stream_size,
        archived: r.meta.created,
    });
    let report = InspectReport {
        image: m.id,
        reference: resolved.tag.as_ref().map(|t| t.to_string()),
        size: m.size,
        chunks: m
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Chunk { .. }))
            .count(),
        unique_chunks,
        unique_chunk_bytes,
        zero_bytes: m
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Zero { .. }))
            .map(|e| e.len())
            .sum(),
        tier: if archive.is_some() { "archive" } else { "bytes" },
        archive,
        labels,
        has_deffile: rec.is_some_and(|r| r.deffile.is_some()) || sif.is_some_and(|s| s.deffile.is_some()),
        sif: sif.is_some(),
        manifest_base,
        created: rec.map(|r| r.created),
        user: rec.map(|r| r.user.clone()),
        host: rec.map(|r| r.host.clone()),
        message: rec.and_then(|r| r.message.clone()),
        added: rec.map(|r| r.added),
        sif_descriptors: sif.map(|s| s.descriptors.clone()),
    };
    if g.json {
        return output::json(&report);
    }
    let mut t = output::table(&["FIELD", "VALUE"]);
    t.add_row(vec!["image".to_string(), report.image.to_string()]);
    if let Some(r) = &report.reference {
        t.add_row(vec!["ref".to_string(), r.clone()]);
    }
    t.add_row(vec![
        "size".to_string(),
        format!("{} ({} bytes)", output::size(report.size), report.size),
    ]);
    t.add_row(vec![
        "chunks".to_string(),
        format!(
            "{} ({} unique, {})",
            report.chunks,
            report.unique_chunks,
            output::size(report.unique_chunk_bytes)
        ),
    ]);
    t.add_row(vec!["zero runs".to_string(), output::size(report.zero_bytes)]);
    t.add_row(vec![
        "tier".to_string(),
        match &report.archive {
            None => "bytes (as put)".into(),
            Some(a) => format!(
                "archive since {}: {} squashfs blocks kept inflated ({} shared with hot images, {} not reproduced, kept as stored); stream {}",
                output::date(a.archived),
                a.inflated_blocks,
                a.shared_blocks,
                a.other_blocks,
                output::size(a.stream_size)
            ),
        },
    ]);
    t.add_row(vec![
        "format".to_string(),
        if report.sif {
            "SIF".into()
        } else {
            "raw image".into()
        },
    ]);
    t.add_row(vec![
        "manifest".to_string(),
        match report.manifest_base {
            Some(base) => format!("delta against {base}"),
            None => "full".into(),
        },
    ]);
    t.add_row(vec![
        "deffile".to_string(),
        if report.has_deffile {
            "yes (imgstore deffile REF)".into()
        } else {
            "no".into()
        },
    ]);
    if let (Some(c), Some(u), Some(h)) = (report.created, &report.user, &report.host) {
        t.add_row(vec![
            "created".to_string(),
            format!("{} by {u}@{h}", output::date(c)),
        ]);
    }
    if let Some(m) = &report.message {
        t.add_row(vec!["message".to_string(), m.clone()]);
    }
    if let Some(a) = report.added {
        t.add_row(vec![
            "added by put".to_string(),
            format!(
                "{} ({} new chunks, {} raw)",
                output::size(a.stored_bytes),
                a.chunks,
                output::size(a.raw_bytes)
            ),
        ]);
    }
    for (k, v) in &report.labels {
        t.add_row(vec![format!("label {k}"), v.clone()]);
    }
    for d in report.sif_descriptors.iter().flatten() {
        t.add_row(vec![format!("sif object {}", d.id), describe_sif_object(d)]);
    }
    crate::out!("{t}");
    Ok(())
}

/// One line on a SIF object: its type, name, size and what its descriptor
/// says (a signature's envelope, hash, key and what it signs; an SBOM's
/// format; an OCI blob's digest).
fn describe_sif_object(d: &imgstore_store::sif::SifDescriptor) -> String {
    let mut parts = vec![d.type_name.clone()];
    if !d.name.is_empty() {
        parts.push(format!("{:?}", d.name));
    }
    parts.push(output::size(d.size));
    if let Some(s) = &d.signature {
        parts.push(format!("{} signature", s.format));
        parts.push(format!("hash {}", s.hash));
        parts.push(match &s.fingerprint {
            Some(f) => format!("key {f}"),
            None => "no key fingerprint".into(),
        });
    }
    match (d.linked_group, d.linked_object) {
        (Some(g), _) if d.signature.is_some() => parts.push(format!("signs group {g}")),
        (_, Some(o)) if d.signature.is_some() => parts.push(format!("signs object {o}")),
        (Some(g), _) => parts.push(format!("linked to group {g}")),
        (_, Some(o)) => parts.push(format!("linked to object {o}")),
        _ => {}
    }
    if let Some(f) = &d.sbom_format {
        parts.push(format!("format {f}"));
    }
    if let Some(dg) = &d.oci_digest {
        parts.push(dg.clone());
    }
    if let Some(p) = &d.partition {
        parts.push(format!("{} {} {}", p.fs, p.part_type, p.arch));
    }
    if let Some(c) = &d.crypto_message {
        parts.push(format!("{} {}", c.format, c.message));
    }
    if let Some(g) = d.group {
        parts.push(format!("in group {g}"));
    }
    parts.join(", ")
}

pub fn deffile(g: &Global, a: &RefArg) -> Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    let store = super::open(g)?;
    let resolved = store.resolve(&image)?;
    let text = store.deffile(&resolved)?.map(|(t, _)| t).ok_or_else(|| {
        imgstore_store::Error::not_found(imgstore_store::Wanted::Deffile(image.to_string()))
    })?;
    if g.json {
        #[derive(Serialize)]
        struct D {
            image: ImageId,
            deffile: String,
        }
        return output::json(&D {
            image: resolved.id,
            deffile: text,
        });
    }
    // A reader that closes the pipe early ends the command quietly (main).
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
    if !text.ends_with('\n') {
        crate::out!();
    }
    Ok(())
}

pub fn tag(g: &Global, a: &TagArgs) -> Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    let new = TagRef::parse(&a.new)?;
    let store = super::open(g)?;
    let record = store.tag(&image, &new)?;
    if g.json {
        #[derive(Serialize)]
        struct T {
            #[serde(rename = "ref")]
            reference: String,
            image: ImageId,
        }
        return output::json(&T {
            reference: new.to_string(),
            image: record.image,
        });
    }
    if !g.quiet {
        crate::out!("tagged {} as {new}", record.image);
    }
    Ok(())
}

pub fn rm(g: &Global, a: &RmArgs) -> Result<()> {
    let refs: Vec<TagRef> = a
        .references
        .iter()
        .map(|r| TagRef::parse(r))
        .collect::<Result<_, _>>()?;
    let store = super::open(g)?;
    #[derive(Serialize)]
    struct Removed {
        #[serde(rename = "ref")]
        reference: String,
        image: ImageId,
    }
    let mut removed = Vec::new();
    for r in &refs {
        let rec = store.rm(r)?;
        if !g.quiet && !g.json {
            crate::out!(
                "removed {r} (was {}); its space returns after garbage collection",
                rec.image
            );
        }
        removed.push(Removed {
            reference: r.to_string(),
            image: rec.image,
        });
    }
    if g.json {
        #[derive(Serialize)]
        struct R {
            removed: Vec<Removed>,
        }
        return output::json(&R { removed });
    }
    Ok(())
}

/// The ADDED column of `log`: what a put stored, what a gc freed.
fn change(e: &imgstore_store::eventlog::Event) -> String {
    match (&e.added, &e.gc) {
        (Some(a), _) => output::size(a.stored_bytes),
        (_, Some(g)) if g.bytes_repacked > 0 => format!(
            "-{} (+{} repacked)",
            output::size(g.bytes_freed),
            output::size(g.bytes_repacked)
        ),
        (_, Some(g)) => format!("-{}", output::size(g.bytes_freed)),
        _ => String::new(),
    }
}

pub fn log(g: &Global, a: &LsArgs) -> Result<()> {
    let store = super::open(g)?;
    let events = store.events(a.name.as_deref())?;
    if g.json {
        #[derive(Serialize)]
        struct L {
            events: Vec<imgstore_store::eventlog::Event>,
        }
        return output::json(&L { events });
    }
    let mut t = output::table(&["TIME", "ACTION", "REF", "IMAGE", "ADDED", "BY"]);
    for e in &events {
        t.add_row(vec![
            output::date(e.time),
            e.action.clone(),
            if e.reference.is_empty() {
                "-".into()
            } else {
                e.reference.clone()
            },
            e.image.as_ref().map_or_else(|| "-".into(), output::short_id),
            change(e),
            format!("{}@{}", e.user, e.host),
        ]);
    }
    if !events.is_empty() {
        crate::out!("{t}");
    }
    Ok(())
}
