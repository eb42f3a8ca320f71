//! `imgstore serve`: the store as an OCI registry (the distribution API
//! subset `oras`, Apptainer's `oras://` and skopeo use). See docs/SERVE.md.
//!
//! One [`State`] per process: the store opened once and one [`StoreReader`]
//! (one index view, one session lease, one frame cache) shared by every
//! request. hyper serves HTTP/1.1 on tokio; the store's calls block, so
//! handlers run on tokio's blocking threads.
//!
//! - `access`: htpasswd users (bcrypt) and per-prefix read/push rules
//! - `route`: request paths parsed into routes (names through imgstore's grammar)
//! - `http`: bodies (a blob streamed through a bounded channel) and OCI error responses
//! - `pull`: manifests (derived or pushed), blobs, tags, catalog
//! - `push`: uploads into a spool, sha256 checked, manifests committed through put

mod access;
mod http;
mod pull;
mod push;
mod route;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use imgstore_store::{ImageId, Store, StoreReader};

use http::{full, Code, OciError, Resp};
use route::Route;

/// How long a client may take to send a request's headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 64 << 10;

/// What every request shares.
pub struct State {
    store: Arc<Store>,
    reader: StoreReader,
    /// Upload spool: `uploads/<id>` while a blob arrives, `blobs/<sha256>`
    /// once verified and until its manifest arrives.
    spool: PathBuf,
    uploads: Mutex<HashMap<String, push::Upload>>,
    /// Images whose sha256 a thread is computing (the others wait).
    digesting: Mutex<HashMap<ImageId, Arc<Mutex<()>>>>,
    /// Users and rules; `None`: no authentication (loopback use).
    access: Option<access::Access>,
}

/// Settings of a server.
pub struct Options {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Upload spool directory (created if missing).
    pub spool: PathBuf,
    /// htpasswd file (bcrypt): users, and authentication required.
    pub htpasswd: Option<PathBuf>,
    /// Access rules file (needs `htpasswd`).
    pub access: Option<PathBuf>,
    /// TLS certificate chain and private key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A TLS acceptor from PEM files: the certificate chain and its key.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate chain {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves one connection (plain or TLS) until it ends.
async fn serve_connection<I>(state: Arc<State>, io: I, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!("connection from {peer}: {e}");
    }
}

/// Renews the shared reader's lease for as long as the server runs: gc
/// waits for the leases it saw to end, so one lease kept for the server's
/// life would hold every gc back.
async fn renew_lease(state: Arc<State>) {
    loop {
        tokio::time::sleep(StoreReader::renew_every()).await;
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.reader.renew_lease()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("renewing the server's lease: {e}"),
            Err(e) => tracing::warn!("renewing the server's lease: {e}"),
        }
    }
}

/// Runs the server until SIGINT or SIGTERM. `ready` gets the bound address
/// (the port, when `listen` asked for port 0) and whether it speaks TLS.
pub fn run(store: Store, opts: Options, ready: impl FnOnce(SocketAddr, bool)) -> anyhow::Result<()> {
    use anyhow::Context;
    for dir in ["uploads", "blobs"] {
        let d = opts.spool.join(dir);
        std::fs::create_dir_all(&d).with_context(|| format!("creating the upload spool {}", d.display()))?;
    }
    let access = match &opts.htpasswd {
        Some(h) => Some(access::Access::load(h, opts.access.as_deref())?),
        None => None,
    };
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let store = Arc::new(store);
    let reader = store.reader()?;
    let state = Arc::new(State {
        store,
        reader,
        spool: opts.spool,
        uploads: Mutex::new(HashMap::new()),
        digesting: Mutex::new(HashMap::new()),
        access,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve")
        .build()
        .context("starting the server's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .with_context(|| format!("listening on {}", opts.listen))?;
        ready(listener.local_addr()?, tls.is_some());
        tokio::spawn(renew_lease(state.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait, keep serving.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_connection(state, stream, peer).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => serve_connection(state, tls_stream, peer).await,
                            Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                            Err(_) => tracing::debug!("TLS handshake with {peer}: timed out"),
                        }
                    }
                }
            });
        }
        anyhow::Ok(())
    })?;
    // Uploads in flight are abandoned; their spool files go with the spool.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn query_of(req: &Request<Incoming>) -> pull::Query {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.replace("%3A", ":").replace("%3a", ":"))
        })
        .collect()
}

/// Runs `f` on a blocking thread (the store's calls block).
async fn blocking(
    state: Arc<State>,
    f: impl FnOnce(&State) -> http::Result<Resp> + Send + 'static,
) -> http::Result<Resp> {
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| OciError::new(Code::Internal, format!("request handler failed: {e}")))?
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = dispatch(state, req).await;
    let resp = result.unwrap_or_else(|e| e.response());
    tracing::info!("{method} {path} {}", resp.status().as_u16());
    let mut resp = resp;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn dispatch(state: Arc<State>, req: Request<Incoming>) -> http::Result<Resp> {
    use route::Bad;
    let route = route::parse(req.uri().path()).map_err(|b| match b {
        Bad::NotFound => OciError::new(Code::NotFound, "not a path of the OCI distribution API"),
        Bad::Name(m) => OciError::new(Code::NameInvalid, m),
        Bad::Tag(m) => OciError::new(Code::ManifestInvalid, m),
        Bad::Digest(m) => OciError::new(Code::DigestInvalid, m),
    })?;
    let query = query_of(&req);
    let head = req.method() == Method::HEAD;
    let user = state.authorize(&req, &route)?;
    let unsupported = || {
        Err(OciError::new(
            Code::Unsupported,
            format!("{} is not supported on this path", req.method()),
        ))
    };
    match (req.method().clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => {
            let mut r = Response::new(if head { http::empty() } else { full(&b"{}"[..]) });
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(CONTENT_LENGTH, 2.into());
            Ok(r)
        }
        (Method::GET, Route::Catalog) => blocking(state, move |s| s.catalog(&query, user.as_deref())).await,
        (Method::GET, Route::Tags { name }) => blocking(state, move |s| s.tags(&name, &query)).await,
        (Method::GET | Method::HEAD, Route::Manifest { name, reference }) => {
            blocking(state, move |s| s.manifest(&name, &reference, head)).await
        }
        (Method::PUT, Route::Manifest { name, reference }) => {
            let (parts, body) = req.into_parts();
            state.put_manifest(name, reference, &parts.headers, body).await
        }
        (Method::GET | Method::HEAD, Route::Blob { name, digest }) => {
            let range = req
                .headers()
                .get(RANGE)
                .map(|r| r.to_str().unwrap_or("invalid").to_string());
            blocking(state, move |s| s.blob(&name, &digest, range.as_deref(), head)).await
        }
        (Method::POST, Route::Uploads { name }) => state.start_upload(&name, &query, req.into_body()).await,
        (Method::PATCH, Route::Upload { name, id }) => {
            let (parts, body) = req.into_parts();
            state.patch_upload(&name, &id, &parts.headers, body).await
        }
        (Method::PUT, Route::Upload { name, id }) => {
            state.put_upload(&name, &id, &query, req.into_body()).await
        }
        (Method::GET, Route::Upload { name, id }) => state.upload_status(&name, &id),
        (Method::DELETE, Route::Upload { name, id }) => state.cancel_upload(&name, &id),
        _ => unsupported(),
    }
}

impl State {
    /// The request's user, if it may do what its route asks; a refusal as
    /// 401 (with a Basic challenge) or 403. Without an htpasswd file every
    /// request is allowed, anonymous.
    fn authorize(&self, req: &Request<Incoming>, route: &Route) -> http::Result<Option<String>> {
        use access::{Action, Refused};
        let Some(access) = &self.access else {
            return Ok(None);
        };
        let refused = |r: Refused| match r {
            Refused::Unauthenticated => OciError::new(Code::Unauthorized, "authentication required"),
            Refused::Denied => OciError::new(Code::Denied, "this user may not do that here"),
        };
        let auth = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("invalid"));
        // bcrypt is slow on purpose: off the async workers' hot path.
        let user = tokio::task::block_in_place(|| access.authenticate(auth)).map_err(refused)?;
        let (action, name) = match route {
            Route::Base => {
                // A client learns here that it should log in: anonymous
                // passes only where some name may be read anonymously.
                return match (&user, access.anonymous_reads()) {
                    (None, false) => Err(refused(Refused::Unauthenticated)),
                    _ => Ok(user),
                };
            }
            // Filtered per name by the handler.
            Route::Catalog => return Ok(user),
            Route::Tags { name } | Route::Blob { name, .. } => (Action::Read, name),
            Route::Manifest { name, .. } if req.method() == Method::PUT => (Action::Push, name),
            Route::Manifest { name, .. } => (Action::Read, name),
            Route::Uploads { name } | Route::Upload { name, .. } => (Action::Push, name),
        };
        access.check(user.as_deref(), action, name).map_err(refused)?;
        Ok(user)
    }

    /// Whether `user` may read `name` (for the catalog).
    fn may_read(&self, user: Option<&str>, name: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|a| a.check(user, access::Action::Read, name).is_ok())
    }
}
