//! Command-line grammar (clap derive). Help text here is the user's manual.

use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};

/// A content-addressed, deduplicating store for container images.
///
/// Keeps one Singularity/Apptainer (SIF) or ext3 image per commit of your
/// code; each new image costs only the bytes that changed. `imgstore get`
/// gives back every image byte for byte.
#[derive(Debug, Parser)]
#[command(name = "imgstore", version, max_term_width = 100)]
#[command(
    after_help = "Exit codes: 0 ok, 1 unexpected error, 2 usage or bad input, 3 not found, \
4 corrupt data, 5 busy or lease expired, 6 no space left, 7 store needs a newer imgstore.\n\
See docs/CLI.md for details."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The store: a directory, or a URL in object storage
    /// (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX).
    #[arg(
        long,
        short = 's',
        global = true,
        env = "IMGSTORE_STORE",
        value_name = "DIR|URL"
    )]
    pub store: Option<String>,
    /// An S3-compatible server (MinIO, Ceph RGW, Garage) for s3:// stores,
    /// addressed path-style [default: AWS, or $AWS_ENDPOINT].
    #[arg(long, global = true, env = "IMGSTORE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Allow plain HTTP to the object store (loopback, or behind a TLS proxy).
    #[arg(long, global = true, env = "IMGSTORE_S3_ALLOW_HTTP", value_parser = clap::builder::FalseyValueParser::new())]
    pub s3_allow_http: bool,
    /// Where this host keeps the store's local index [default: ~/.cache/imgstore/<store-id>].
    #[arg(long, global = true, env = "IMGSTORE_INDEX_DIR", value_name = "DIR")]
    pub index_dir: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors (and data a command is asked for).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new store in an empty or new directory.
    Init(InitArgs),
    /// Store an image under NAME:TAG.
    Put(PutArgs),
    /// Write an image back, byte for byte.
    Get(GetArgs),
    /// List names, tags and images (--pins: the pinned images).
    Ls(ListArgs),
    /// Show an image's size, chunks, labels and history facts.
    Inspect(InspectArgs),
    /// Print an image's definition file, without reading the image.
    Deffile(RefArg),
    /// Find images by definition file (regex), labels, name and put date.
    Find(FindArgs),
    /// Give an image another NAME:TAG (moves the tag if it exists).
    Tag(TagArgs),
    /// Remove tags. The data stays until garbage collection frees it.
    Rm(RmArgs),
    /// Keep an image whatever happens to its tags: `rm`, `prune` and `gc`
    /// leave a pinned image whole, and `get` by id (or `get --lock`) returns
    /// it. Pins are part of the store: every host sees them.
    Pin(PinArgs),
    /// Remove an image's pin. Its data stays while a tag names it; else the
    /// next gc runs free it.
    Unpin(RefArg),
    /// Show who put, tagged and removed what, and when.
    Log(LsArgs),
    /// Remove tags by a retention policy (space returns with `gc`).
    Prune(PruneArgs),
    /// Move old SIF images to the archive tier: their squashfs blocks are
    /// stored inflated, where they dedup across versions, and deflated
    /// again (exactly) on get. Slower to get; cheaper to keep.
    ///
    /// Give images (REF...), or a policy to run from cron: `--keep-hot N`
    /// keeps each name's newest N images as they are, `--older-than` spares
    /// recent ones. Before an image's old chunks are let go, its archived
    /// form is rebuilt once and checked against the image's id. Images
    /// that are not gzip squashfs (ext3, xz) stay as they are, with the
    /// reason. The space returns with `gc`. See docs/OPERATIONS.md.
    Archive(ArchiveArgs),
    /// Tie an experiment folder to an image: writes imgstore.lock (the
    /// image's id, sha256, size, format, labels, where the store is),
    /// the definition file, and run.sh (fetches the image by id, checks it,
    /// runs it with apptainer). Pins the image unless --no-pin.
    ///
    /// DIR must be new or empty; --force writes into a folder an earlier
    /// export wrote, replacing only files it wrote and nobody changed.
    /// The lock format: docs/LOCKFILE.md.
    Export(ExportArgs),
    /// Copy images from another store into this one (directory or object
    /// storage, either way), sending only the chunks this store lacks.
    ///
    /// Keeps image ids, tags, SIF metadata, labels, deffiles and who put
    /// each image when. Run it again to resume a copy that was stopped: what
    /// arrived is not sent twice. `--dry-run` lists the images it would copy.
    Copy(CopyArgs),
    /// Free the space of chunks no image refers to, safely on a live store.
    ///
    /// Runs in two phases across runs: a run condemns garbage, and a later
    /// run (after --grace, and after every put/get that was running at
    /// condemnation has ended) deletes it. Each run also removes what killed
    /// puts left (temporary files over an hour old). Run it from cron; see
    /// docs/OPERATIONS.md.
    Gc(GcArgs),
    /// Check the store: structure always, every stored byte with --read-data.
    /// Exits 0 only when clean; otherwise lists damaged images and exits 4.
    Verify(VerifyArgs),
    /// Quarantine proven-corrupt packs (salvaging their sound chunks) so a
    /// later put of an affected image stores the lost chunks again.
    Repair(RepairArgs),
    /// Show what the store holds and what it costs: logical, unique and
    /// stored bytes, dedup and compression ratios, garbage waiting for gc.
    Stats,
    /// Show per name (or tag, or label) the logical size, the bytes shared
    /// with others and the bytes only it holds: what deleting it would free.
    Du(DuArgs),
    /// Show a name's commits: date, size, bytes each put added, bytes each
    /// still holds alone.
    History(HistoryArgs),
    /// Show the chunks and bytes two images have in common and apart.
    Diff(DiffArgs),
    /// Write a self-contained HTML report or a Prometheus textfile.
    Report(ReportArgs),
    /// Maintain this host's local index of the store.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout.
    Man,
    /// Run a self-contained demonstration: two similar images, put, get, check.
    Demo(DemoArgs),
    /// Serve the store as an OCI registry: `oras pull`/`oras push`,
    /// `apptainer pull oras://HOST:PORT/NAME:TAG`, skopeo.
    ///
    /// Every image is pullable by NAME:TAG as a one-layer SIF artifact; its
    /// sha256 is computed the first time a client asks for it (one read of
    /// the image) and kept in the store under oci/. A pushed SIF becomes an
    /// ordinary image, stored like `imgstore put` stores it (only the chunks
    /// the store lacks), deffile and labels lifted.
    ///
    /// Without --htpasswd there is no authentication: anyone who can connect
    /// can pull and push. HTTPS with --tls-cert/--tls-key; plain HTTP on
    /// loopback (the default address), elsewhere only with --plain-http. Prints `listening on http://ADDR:PORT` once ready; stops on
    /// SIGINT or SIGTERM. See docs/SERVE.md.
    Serve(ServeArgs),
    /// Show every image as a read-only file, read only where it is used (FUSE).
    ///
    /// MOUNTPOINT/<name>/<tag>.sif (or .img) for each ref, and
    /// MOUNTPOINT/by-id/<image id>; mtimes are put times. New puts and removed
    /// tags show within a second or two. Each chunk is checked against its id
    /// before its bytes are returned: a damaged one fails that read (EIO).
    /// Runs in the foreground; Ctrl-C or SIGTERM unmounts.
    Mount(MountArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port; the one chosen is printed).
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Directory for pushes in progress: each blob is spooled here whole
    /// until its sha256 is checked and its manifest arrives
    /// [default: a new directory under $TMPDIR, removed at exit].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Require HTTP Basic users from this htpasswd file (bcrypt lines, as
    /// `htpasswd -B` writes them). Without it, no authentication.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Per-prefix rules of who may read and push (docs/SERVE.md); without
    /// it every htpasswd user may read and push everything.
    #[arg(long, value_name = "FILE", requires = "htpasswd")]
    pub access: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (behind a proxy that
    /// terminates TLS). Loopback addresses serve plain HTTP without it.
    #[arg(long, conflicts_with = "tls_cert")]
    pub plain_http: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An empty directory to mount on.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Only these names (and the names below them) [default: every name].
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Let other users read the mount (as a user, needs `user_allow_other`
    /// in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Return once mounted, leaving the mount served by a background
    /// process (its own session; messages still go to this stderr).
    #[arg(long)]
    pub daemon: bool,
    /// Write the serving process's id here once mounted; removed when it
    /// ends (for systemd's PIDFile=).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The store to copy from: a directory or an object-store URL. Both
    /// stores are reached with the same --s3-endpoint and credentials.
    #[arg(long, value_name = "DIR|URL")]
    pub from: String,
    /// NAME:TAG or NAME (all its tags) to copy [default: every ref].
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
    /// List the images a copy would copy; write nothing. (How much of each
    /// is new is known only once it is cut again with this store's chunker.)
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create the store: a directory, or an object-store URL such
    /// as s3://BUCKET/PREFIX (or --store / IMGSTORE_STORE).
    #[arg(value_name = "DIR|URL")]
    pub dir: Option<String>,
    /// Average chunk size: a power of two from 1KiB to 1MiB. Smaller finds
    /// more shared bytes between images, larger keeps less metadata.
    #[arg(long, default_value = "32KiB", value_name = "SIZE")]
    pub chunk_size: ByteSize,
    /// zstd level for new chunks (1-19). Chunks that do not shrink are stored raw.
    #[arg(long, default_value_t = imgstore_store::config::DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// A store shared by a group: make the directory group-writable and
    /// setgid (chgrp it to the group first). Every file and directory
    /// imgstore creates then follows the directory's permissions, whatever
    /// each user's umask.
    #[arg(long)]
    pub shared: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// NAME:TAG to store the image under, e.g. lab/app:3f2c1e.
    #[arg(value_name = "NAME:TAG")]
    pub reference: String,
    /// The image file, or - for standard input.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
    /// Definition file to keep with the image (a SIF's own is kept anyway).
    #[arg(long, value_name = "FILE")]
    pub deffile: Option<PathBuf>,
    /// A label to keep with the image; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A note kept with this put, e.g. the commit message.
    #[arg(long, short = 'm')]
    pub message: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// NAME:TAG, or an image id (blake3:<hex>; a unique prefix of 6+ digits is enough).
    #[arg(value_name = "REF", required_unless_present = "lock", conflicts_with = "lock")]
    pub reference: Option<String>,
    /// Get exactly the image a lock file (from `imgstore export`) names, by
    /// id, whatever its tags are now, from --store or else the store the
    /// lock names. Its size and sha256 are checked against the lock.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// Output file (written beside it and renamed into place when complete), or - for stdout.
    #[arg(long, short = 'o', value_name = "FILE|-")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this name (and names below it).
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// NAME:TAG or image id.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Read the squashfs inside the image (a SIF's partition) block by
    /// block instead: compressor, block counts, and how many gzip blocks
    /// zlib -9 gives back byte for byte (reads and recompresses the whole
    /// file system: minutes for GBs).
    #[arg(long)]
    pub squashfs: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// NAME:TAG or image id.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The experiment folder (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Write into a non-empty folder (never over a file export did not write).
    #[arg(long)]
    pub force: bool,
    /// Do not pin the image (then prune and gc may free it once untagged).
    #[arg(long)]
    pub no_pin: bool,
    /// The pin's reason [default: "exported to DIR"].
    #[arg(long, value_name = "TEXT", conflicts_with = "no_pin")]
    pub reason: Option<String>,
    /// A registry that also serves the image (oras://HOST/NAME:TAG, e.g.
    /// from `imgstore serve`): run.sh pulls from it when the store is out of reach.
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this name (and names below it).
    pub name: Option<String>,
    /// List pinned images instead: id, size, when and by whom, the tags
    /// naming each now, and the reason.
    #[arg(long, conflicts_with = "name")]
    pub pins: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// NAME:TAG or image id.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Why the image is kept (shown by `ls --pins`, `prune` and reports),
    /// e.g. "figure 3 of the 2026 paper".
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct RefArg {
    /// NAME:TAG or image id.
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image: NAME:TAG or image id.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The new NAME:TAG.
    #[arg(value_name = "NAME:TAG")]
    pub new: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Tags to remove.
    #[arg(value_name = "NAME:TAG", required = true)]
    pub references: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Names to prune (default: every name).
    pub names: Vec<String>,
    /// Keep the newest N tags of each name.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep tags created within this long (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Keep tags matching this glob pattern (e.g. 'v*'); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub keep_tag: Vec<String>,
    /// Show what would be kept and removed; remove nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Images to archive (NAME:TAG or image id); with --keep-hot or
    /// --older-than, names to apply the policy to (default: every name).
    #[arg(value_name = "REF|NAME")]
    pub targets: Vec<String>,
    /// Policy: keep the newest N images of each name hot.
    #[arg(long, value_name = "N")]
    pub keep_hot: Option<usize>,
    /// Policy: keep images put within this long hot (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Show which images would be archived; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Show what would be condemned and deleted; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Time between condemning garbage and deleting it.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// If another gc is running, wait for it instead of exiting with code 5.
    #[arg(long)]
    pub wait: bool,
    /// Stop deleting and repacking after this long; the next run continues.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_duration: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Read, decompress and hash every chunk (of the selected packs).
    #[arg(long)]
    pub read_data: bool,
    /// With --read-data: read only packs whose id is N mod T, e.g.
    /// `--subset $(( $(date +%j) % 7 ))/7` covers the store in a week.
    #[arg(long, value_name = "N/T", requires = "read_data")]
    pub subset: Option<String>,
    /// With --read-data: stop reading after this long (e.g. 2h); the next run
    /// starts with the packs verified longest ago.
    #[arg(long, value_name = "DURATION", requires = "read_data", value_parser = humantime::parse_duration)]
    pub max_duration: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Show what would be quarantined; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Recreate the local index from the store's packs and segments.
    Rebuild,
    /// Catch up with what other hosts stored, and show where the index is.
    Status,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of each generated image.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub size: ByteSize,
    /// Work directory (default: a temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    /// Names (every tag of the name) or NAME:TAG refs to measure; all refs if none.
    /// The total row treats them as one set: what removing all of them frees.
    #[arg(value_name = "NAME|NAME:TAG")]
    pub refs: Vec<String>,
    /// Group by `name` (default), `tag` (one row per ref) or `label KEY`.
    #[arg(long, num_args = 1..=2, value_names = ["name|tag|label", "KEY"])]
    pub by: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The name, e.g. lab/app.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// First image: NAME:TAG or image id.
    #[arg(value_name = "REF1")]
    pub a: String,
    /// Second image: NAME:TAG or image id.
    #[arg(value_name = "REF2")]
    pub b: String,
    /// Also print a unified diff of the two definition files.
    #[arg(long)]
    pub deffile: bool,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// Images whose definition file has a line matching this regular
    /// expression (Rust `regex` syntax; `(?i)` ignores case). Shows the lines.
    #[arg(long, value_name = "REGEX")]
    pub deffile: Option<String>,
    /// Images with this label (repeat: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Names matching this glob (`lab/*`); with a `:`, NAME:TAG (`lab/app:v1*`).
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Put or tagged on or after DATE (`2026-12-01`, UTC) or within a duration (`30d`).
    #[arg(long, value_name = "DATE|DURATION")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("out").required(true).multiple(true)))]
pub struct ReportArgs {
    /// Write one self-contained HTML file (tables and inline SVG charts).
    #[arg(long, value_name = "FILE", group = "out")]
    pub html: Option<PathBuf>,
    /// Write a Prometheus node_exporter textfile-collector file (atomically).
    #[arg(long, value_name = "FILE", group = "out")]
    pub prometheus: Option<PathBuf>,
}
