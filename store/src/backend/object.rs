//! A store in object storage: S3 and S3-compatible servers (MinIO, Ceph
//! RGW, Garage), Google Cloud Storage and Azure Blob Storage, through the
//! `object_store` crate.
//!
//! `object_store` is async; the store is not. Each backend owns a small
//! tokio runtime and blocks on it, so nothing above [`Backend`] knows.
//! Only whole-object puts, gets (whole and ranged), heads, listings and
//! deletes are used: no multipart uploads (a pack is one PUT, so a killed
//! put leaves whole orphan objects that gc reaps, never a hidden partial
//! upload), no conditional writes (Garage accepts `If-None-Match` writes
//! that should fail), no copies or renames.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use tokio::task::JoinHandle;

use super::{
    checked, dir_prefix, Backend, Fill, ListPage, ObjectMeta, Pending, ReadAt, Staged, StagedBuffer,
};
use crate::error::{Error, Object, Result};

/// One listed object: key, size, last-modified time, ETag (if listed).
type Listed = (String, u64, SystemTime, Option<String>);

/// How many keys one [`Backend::list_page`] returns: S3's own page size.
const PAGE: usize = 1000;

/// Ranged GETs a get keeps in flight: one stream from an object server
/// is slower than the disk behind it.
const CONCURRENT_GETS: usize = 8;

/// How long requests that fail (5xx, 429, timeouts, refused connections)
/// are retried, with exponential backoff, before the error is returned.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(180);

/// The longest one request may take, from connecting to its last body
/// byte (a 32 MiB pack needs about 0.5 MiB/s), unless the retry budget is
/// shorter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach an object store, beside what its URL says.
#[derive(Debug, Clone, Default)]
pub struct ObjectOptions {
    /// An S3-compatible server's endpoint (`http://127.0.0.1:3900`); keys
    /// are then addressed path-style (`endpoint/bucket/key`).
    pub s3_endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint (loopback, or behind a proxy).
    pub allow_http: bool,
    /// Give up on a request after retrying this long
    /// ([`DEFAULT_RETRY_BUDGET`]); one attempt is cut off at this too.
    pub retry_timeout: Option<Duration>,
}

/// Requests made by one backend, by kind: what object storage bills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Requests {
    /// Whole-object PUTs.
    pub put: u64,
    /// GETs, whole and ranged.
    pub get: u64,
    /// HEADs.
    pub head: u64,
    /// LIST pages.
    pub list: u64,
    /// DELETEs.
    pub delete: u64,
    /// Bytes received in GET bodies.
    pub bytes_in: u64,
    /// Bytes sent in PUT bodies.
    pub bytes_out: u64,
}

impl Requests {
    /// The requests made since the reading `before`.
    pub fn since(&self, before: &Requests) -> Requests {
        Requests {
            put: self.put - before.put,
            get: self.get - before.get,
            head: self.head - before.head,
            list: self.list - before.list,
            delete: self.delete - before.delete,
            bytes_in: self.bytes_in - before.bytes_in,
            bytes_out: self.bytes_out - before.bytes_out,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn bytes(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Requests {
        Requests {
            put: self.put.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

struct Inner {
    store: Box<dyn ObjectStore>,
    /// Keys live under this path in the bucket (the URL's path).
    root: ObjectPath,
    runtime: tokio::runtime::Runtime,
    /// Turns of [`Backend::read_ahead`]'s GETs: [`CONCURRENT_GETS`].
    gets: tokio::sync::Semaphore,
    counters: Counters,
    location: String,
}

/// A store in a bucket, under a prefix.
#[derive(Clone)]
pub struct ObjectBackend {
    inner: Arc<Inner>,
}

/// Whether `location` names an object store rather than a directory.
pub fn is_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl ObjectBackend {
    /// The backend for a store at `url` (`s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`). Credentials and
    /// region come the way each cloud's own tools read them from the
    /// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn connect(url: &str, opts: &ObjectOptions) -> Result<ObjectBackend> {
        let bad = |detail: String| Error::BadLocation {
            location: url.into(),
            detail,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no bucket".into()));
        }
        let budget = opts.retry_timeout.unwrap_or(DEFAULT_RETRY_BUDGET);
        // One attempt never outlasts the whole budget: a server that stalls
        // (accepts, then never answers) costs one budget, then an error,
        // not a minute an attempt. Timed-out GETs, HEADs and PUTs (whole
        // objects: idempotent) are retried like 5xx answers.
        let attempt = budget.clamp(Duration::from_secs(1), REQUEST_TIMEOUT);
        let mut client = ClientOptions::new().with_timeout(attempt);
        if opts.allow_http {
            client = client.with_allow_http(true);
        }
        let retry = RetryConfig {
            retry_timeout: budget,
            ..RetryConfig::default()
        };
        let store: Box<dyn ObjectStore> = match parsed.scheme() {
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(endpoint) = &opts.s3_endpoint {
                    if endpoint.starts_with("http://") && !opts.allow_http {
                        return Err(bad(format!(
                            "the endpoint {endpoint} is plain HTTP: pass --s3-allow-http \
                             (or IMGSTORE_S3_ALLOW_HTTP=1) if that is meant"
                        )));
                    }
                    b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
                }
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    if let Some(p) = super::aws_profile::credentials() {
                        b = b.with_access_key_id(p.key_id).with_secret_access_key(p.secret);
                        if let Some(token) = p.token {
                            b = b.with_token(token);
                        }
                    }
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    if let Some(region) = super::aws_profile::region() {
                        b = b.with_region(region);
                    }
                }
                Box::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => Box::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Box::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown scheme {other}:// (use s3://, gs:// or az://)"
                )))
            }
        };
        let root = ObjectPath::parse(parsed.path().trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imgstore-io")
            .enable_all()
            .build()
            .map_err(|e| Error::threads("the object-store client", e))?;
        Ok(ObjectBackend {
            inner: Arc::new(Inner {
                store,
                root,
                runtime,
                gets: tokio::sync::Semaphore::new(CONCURRENT_GETS),
                counters: Counters::default(),
                location: url.trim_end_matches('/').into(),
            }),
        })
    }

    /// Requests made so far through this backend.
    pub fn requests(&self) -> Requests {
        self.inner.counters.snapshot()
    }
}

impl ObjectBackend {
    /// One whole-object PUT of `data`, counted.
    fn put_owned(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let path = self.inner.path(key)?;
        Counters::add(&self.inner.counters.put);
        Counters::bytes(&self.inner.counters.bytes_out, data.len());
        self.inner
            .block_on(self.inner.store.put(&path, PutPayload::from(data)))
            .map(drop)
            .map_err(|e| failed_write(&self.inner, key, e))
    }
}

impl ObjectBackend {
    /// Starts the PUT of `payload` under `key` on the runtime; the put goes
    /// on while it travels, and waits for it at [`Staged::commit`].
    fn upload(&self, key: &str, payload: PutPayload) -> Result<Box<dyn Staged>> {
        let path = self.inner.path(key)?;
        Counters::add(&self.inner.counters.put);
        Counters::bytes(&self.inner.counters.bytes_out, payload.content_length());
        let inner = Arc::clone(&self.inner);
        let task = self
            .inner
            .runtime
            .spawn(async move { inner.store.put(&path, payload).await.map(drop) });
        Ok(Box::new(Uploading {
            key: key.into(),
            task: Some(task),
            inner: Arc::clone(&self.inner),
        }))
    }
}

impl Inner {
    fn path(&self, key: &str) -> Result<ObjectPath> {
        let key = checked(key)?;
        let full = match self.root.as_ref() {
            "" => key.to_string(),
            root => format!("{root}/{key}"),
        };
        ObjectPath::parse(&full).map_err(|e| Error::Internal {
            detail: format!("store key {key:?} is not an object-store path: {e}"),
        })
    }

    /// The store key of an object path under the root.
    fn key_of(&self, path: &ObjectPath) -> Option<String> {
        let parts: Vec<_> = path
            .prefix_match(&self.root)?
            .map(|p| p.as_ref().to_string())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

/// A write's failure. "Not found" on a write means the bucket (container)
/// is not there: said as such, not as a missing store object.
fn failed_write(inner: &Inner, key: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::BadLocation {
            location: inner.location.clone(),
            detail: format!("writing {key} found no bucket or container there: create it first"),
        },
        e => failed(key, e),
    }
}

fn failed(key: &str, e: object_store::Error) -> Error {
    use object_store::client::{HttpError, HttpErrorKind};
    if let object_store::Error::NotFound { .. } = e {
        return Error::Missing { key: key.into() };
    }
    let unanswered = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| e.source())
        .filter_map(|e| e.downcast_ref::<HttpError>())
        .any(|h| {
            matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        });
    Error::Backend {
        key: key.into(),
        source: if unanswered {
            Box::new(super::Unanswered(Box::new(e)))
        } else {
            Box::new(e)
        },
    }
}

/// A pack handed to the runtime to upload while the put goes on.
struct Uploading {
    key: String,
    task: Option<JoinHandle<object_store::Result<()>>>,
    inner: Arc<Inner>,
}

impl Staged for Uploading {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let task = self.task.take().expect("committed once");
        match self.inner.block_on(task) {
            Ok(done) => done.map_err(|e| failed_write(&self.inner, &self.key, e)),
            Err(e) => Err(Error::Internal {
                detail: format!("upload of {} stopped: {e}", self.key),
            }),
        }
    }
}

impl Drop for Uploading {
    /// An upload dropped uncommitted is stopped where it is; if the PUT
    /// already landed, the object is an orphan that gc reaps.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Ranged gets of one object. Its size comes from the HEAD that opened it,
/// or, opened unchecked, is asked for only when wanted (a footer read) or
/// when a read fails.
struct ObjectReader {
    inner: Arc<Inner>,
    key: String,
    path: ObjectPath,
    size: OnceLock<u64>,
}

impl ObjectReader {
    fn too_short(&self, len: usize, offset: u64) -> Error {
        Error::corrupt(
            Object::StoreObject(self.key.clone()),
            format!("too short: {len} bytes at offset {offset} are missing"),
        )
    }
}

impl ReadAt for ObjectReader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        match self
            .inner
            .block_on(fetch_range(&self.inner, self.key.clone(), offset, len))
        {
            Ok(bytes) => {
                buf.copy_from_slice(&bytes);
                Ok(())
            }
            // A range past the end is refused by some servers: say so as
            // a short object, which it is.
            Err(Error::Backend { .. }) if self.size().is_ok_and(|size| offset + len > size) => {
                Err(self.too_short(buf.len(), offset))
            }
            Err(e) => Err(e),
        }
    }

    fn size(&self) -> Result<u64> {
        if let Some(size) = self.size.get() {
            return Ok(*size);
        }
        Counters::add(&self.inner.counters.head);
        let meta = self
            .inner
            .block_on(self.inner.store.head(&self.path))
            .map_err(|e| failed(&self.key, e))?;
        Ok(*self.size.get_or_init(|| meta.size))
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_owned(key, data.to_vec())
    }

    /// Built in memory, then handed to the PUT without another copy.
    fn put_with(&self, key: &str, fill: &mut Fill) -> Result<()> {
        let mut data = Vec::new();
        fill(&mut data).map_err(|source| Error::Backend {
            key: key.into(),
            source: source.into(),
        })?;
        self.put_owned(key, data)
    }

    /// Starts the upload now and waits for it at commit, so a put's next
    /// pack is cut and compressed while this one travels.
    fn stage(&self, key: &str, data: &[u8]) -> Result<Box<dyn Staged>> {
        self.upload(key, PutPayload::from(data.to_vec()))
    }

    /// The buffer goes with the upload: no second copy of each pack stays
    /// in memory while its PUT is in flight.
    fn stage_owned(&self, key: &str, buf: Vec<u8>, start: usize) -> Result<StagedBuffer> {
        let payload = PutPayload::from(bytes::Bytes::from(buf).slice(start..));
        Ok((self.upload(key, payload)?, None))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.inner.path(key)?;
        Counters::add(&self.inner.counters.get);
        let got = self.inner.block_on(async {
            match self.inner.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let got = got.map_err(|e| failed(key, e))?;
        if let Some(b) = &got {
            Counters::bytes(&self.inner.counters.bytes_in, b.len());
        }
        Ok(got.map(|b| b.to_vec()))
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadAt>> {
        let meta = self
            .head(key)?
            .ok_or_else(|| Error::Missing { key: key.into() })?;
        Ok(Box::new(ObjectReader {
            inner: Arc::clone(&self.inner),
            key: key.into(),
            path: self.inner.path(key)?,
            size: OnceLock::from(meta.size),
        }))
    }

    /// No HEAD: a get of an image spread over many small packs would pay
    /// one a pack.
    fn open_unchecked(&self, key: &str) -> Result<Box<dyn ReadAt>> {
        Ok(Box::new(ObjectReader {
            inner: Arc::clone(&self.inner),
            key: key.into(),
            path: self.inner.path(key)?,
            size: OnceLock::new(),
        }))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.inner.path(key)?;
        Counters::add(&self.inner.counters.head);
        match self.inner.block_on(self.inner.store.head(&path)) {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.into(),
                size: m.size,
                modified: SystemTime::from(m.last_modified),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(key, e)),
        }
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage> {
        let mut keys: Vec<String> = self
            .list_from(prefix, after, Some(PAGE))?
            .into_iter()
            .map(|(k, ..)| k)
            .collect();
        let more = keys.len() > PAGE;
        keys.truncate(PAGE);
        Ok(ListPage { keys, more })
    }

    /// One listing, its pages fetched by the client as it goes.
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_from(prefix, None, None)?
            .into_iter()
            .map(|(k, ..)| k)
            .collect())
    }

    /// Sizes come with the listing: no request an object.
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_from(prefix, None, None)?
            .into_iter()
            .map(|(k, size, ..)| (k, size))
            .collect())
    }

    /// Times come with the listing too: a new host's catch-up asks no
    /// object for its time.
    fn list_modified(&self, prefix: &str) -> Result<Option<Vec<(String, SystemTime)>>> {
        Ok(Some(
            self.list_from(prefix, None, None)?
                .into_iter()
                .map(|(k, _, t, _)| (k, t))
                .collect(),
        ))
    }

    /// ETags come with the listing: a changed object has another.
    fn list_etags(&self, prefix: &str) -> Result<Option<Vec<(String, String)>>> {
        let listed = self.list_from(prefix, None, None)?;
        // A server that lists no ETag for some key: no ETags at all.
        Ok(listed.into_iter().map(|(k, _, _, e)| e.map(|e| (k, e))).collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.inner.path(key)?;
        Counters::add(&self.inner.counters.delete);
        match self.inner.block_on(self.inner.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(key, e)),
        }
    }

    fn requests(&self) -> Option<Requests> {
        Some(self.requests())
    }

    /// The GET starts now, on the runtime; up to [`CONCURRENT_GETS`] are
    /// in flight at once, the rest wait their turn in the order started.
    fn read_ahead(&self, key: &str, offset: u64, len: u64) -> Box<dyn Pending> {
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        let task = self.inner.runtime.spawn(async move {
            let _turn = inner.gets.acquire().await.map_err(|e| Error::Internal {
                detail: format!("the ranged GETs' turns: {e}"),
            })?;
            fetch_range(&inner, key, offset, len).await
        });
        Box::new(Fetching {
            task: Some(task),
            inner: Arc::clone(&self.inner),
        })
    }
}

/// A ranged GET in flight on the runtime.
struct Fetching {
    task: Option<JoinHandle<Result<Vec<u8>>>>,
    inner: Arc<Inner>,
}

impl Pending for Fetching {
    fn wait(mut self: Box<Self>) -> Result<Vec<u8>> {
        let task = self.task.take().expect("waited once");
        match self.inner.block_on(task) {
            Ok(read) => read,
            Err(e) => Err(Error::Internal {
                detail: format!("a ranged GET stopped: {e}"),
            }),
        }
    }
}

impl Drop for Fetching {
    /// A read nobody waits for any more (the get failed) stops.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One ranged GET of `len` bytes of `key` at `offset`, counted.
async fn fetch_range(inner: &Inner, key: String, offset: u64, len: u64) -> Result<Vec<u8>> {
    let path = inner.path(&key)?;
    Counters::add(&inner.counters.get);
    let bytes = inner
        .store
        .get_range(&path, offset..offset + len)
        .await
        .map_err(|e| failed(&key, e))?;
    Counters::bytes(&inner.counters.bytes_in, bytes.len());
    if bytes.len() as u64 != len {
        return Err(Error::corrupt(
            Object::StoreObject(key),
            format!("a ranged get returned {} bytes, not {len}", bytes.len()),
        ));
    }
    // The body's own buffer where the client collected it in one (no copy).
    Ok(Vec::from(bytes))
}

impl ObjectBackend {
    /// Keys under `prefix` after `after`, sorted, with their sizes and times;
    /// up to `limit` + 1 (so a caller knows whether more follow), or all.
    fn list_from(&self, prefix: &str, after: Option<&str>, limit: Option<usize>) -> Result<Vec<Listed>> {
        let inner = &self.inner;
        let dir = dir_prefix(prefix);
        let base = match dir.trim_end_matches('/') {
            "" => inner.root.clone(),
            p => inner.path(p)?,
        };
        let offset = after.map(|a| inner.path(a)).transpose()?;
        let fail = |e| failed(if prefix.is_empty() { "(all keys)" } else { prefix }, e);
        let mut keys = inner
            .block_on(async {
                let mut stream = match &offset {
                    Some(o) => inner.store.list_with_offset(Some(&base), o),
                    None => inner.store.list(Some(&base)),
                };
                let mut keys = Vec::new();
                // One LIST request a page of up to 1000 keys, the first
                // even when it is empty.
                Counters::add(&inner.counters.list);
                let mut seen = 0usize;
                while let Some(meta) = stream.next().await {
                    let meta = meta?;
                    seen += 1;
                    if seen > PAGE && seen % PAGE == 1 {
                        Counters::add(&inner.counters.list);
                    }
                    if let Some(key) = inner.key_of(&meta.location) {
                        keys.push((key, meta.size, SystemTime::from(meta.last_modified), meta.e_tag));
                    }
                    if limit.is_some_and(|l| keys.len() > l) {
                        break;
                    }
                }
                Ok::<_, object_store::Error>(keys)
            })
            .map_err(fail)?;
        // Servers list in key order; some S3 look-alikes do not. The trait
        // promises order, and gc's paging rests on it.
        keys.sort_unstable();
        keys.retain(|(k, ..)| k.starts_with(&dir) && after.is_none_or(|a| k.as_str() > a));
        Ok(keys)
    }
}
