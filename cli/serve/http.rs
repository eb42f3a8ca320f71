//! Response bodies and OCI error responses: what every handler returns.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

/// Every response's body type: small bodies in memory, blobs streamed.
pub type Body = BoxBody<Bytes, io::Error>;
/// A response.
pub type Resp = Response<Body>;

/// A body of bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// What a producer sends at a time: the byte ranges of one piece of a
/// blob, sent on in order (shared, not copied: ranges of the reader's
/// decoded frames).
pub type Piece = Vec<Bytes>;

/// A body fed by a producer thread through a bounded channel. An `Err`
/// item makes hyper abort the connection, so the client sees a failed
/// transfer (short of its Content-Length), never a clean end; when the
/// client goes away the receiver drops and the producer's next send fails,
/// which is how the producer learns to stop and free what it holds.
pub struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Piece>>,
    /// The rest of the piece being sent.
    pending: std::collections::VecDeque<Bytes>,
}

impl ChannelBody {
    /// A body and the sender its producer writes to (`depth` pieces in flight).
    pub fn channel(depth: usize) -> (mpsc::Sender<io::Result<Piece>>, Body) {
        let (tx, rx) = mpsc::channel(depth);
        let pending = Default::default();
        (tx, ChannelBody { rx, pending }.boxed())
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(piece))) => self.pending.extend(piece),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The OCI distribution error codes this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NameInvalid,
    NameUnknown,
    ManifestUnknown,
    ManifestInvalid,
    ManifestBlobUnknown,
    BlobUnknown,
    BlobUploadUnknown,
    BlobUploadInvalid,
    DigestInvalid,
    RangeInvalid,
    Unsupported,
    NotFound,
    TooLarge,
    /// No or wrong credentials (401, with a Basic challenge).
    Unauthorized,
    /// The user may not (403).
    Denied,
    /// The store failed (I/O, damage, busy): 500 or 503.
    Internal,
    Unavailable,
}

impl Code {
    fn parts(self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Code::NameInvalid => (S::BAD_REQUEST, "NAME_INVALID"),
            Code::NameUnknown => (S::NOT_FOUND, "NAME_UNKNOWN"),
            Code::ManifestUnknown => (S::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Code::ManifestInvalid => (S::BAD_REQUEST, "MANIFEST_INVALID"),
            Code::ManifestBlobUnknown => (S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            Code::BlobUnknown => (S::NOT_FOUND, "BLOB_UNKNOWN"),
            Code::BlobUploadUnknown => (S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            Code::BlobUploadInvalid => (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            Code::DigestInvalid => (S::BAD_REQUEST, "DIGEST_INVALID"),
            Code::RangeInvalid => (S::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            Code::Unsupported => (S::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Code::NotFound => (S::NOT_FOUND, "NOT_FOUND"),
            Code::TooLarge => (S::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Code::Unauthorized => (S::UNAUTHORIZED, "UNAUTHORIZED"),
            Code::Denied => (S::FORBIDDEN, "DENIED"),
            Code::Internal => (S::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            Code::Unavailable => (S::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        }
    }
}

/// An OCI error: a code and a one-line message, sent as the spec's JSON body.
#[derive(Debug)]
pub struct OciError {
    pub code: Code,
    pub message: String,
}

impl OciError {
    pub fn new(code: Code, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
        }
    }

    /// The response: status, `{"errors":[{"code","message"}]}`.
    pub fn response(&self) -> Resp {
        let (status, code) = self.code.parts();
        let body = serde_json::json!({"errors": [{"code": code, "message": self.message, "detail": null}]});
        let bytes = serde_json::to_vec(&body).expect("json");
        let len = bytes.len();
        let mut r = Response::new(full(bytes));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.headers_mut().insert(CONTENT_LENGTH, len.into());
        if self.code == Code::Unauthorized {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"imgstore\""),
            );
        }
        r
    }
}

impl From<imgstore_store::Error> for OciError {
    /// A store failure: not the client's doing. Logged here, because the
    /// client sees only the one line.
    fn from(e: imgstore_store::Error) -> OciError {
        use imgstore_store::ErrorKind as K;
        let code = match e.kind() {
            K::Busy => Code::Unavailable,
            K::NotFound => Code::NotFound,
            K::Usage => Code::ManifestInvalid,
            _ => Code::Internal,
        };
        tracing::error!("store: {e}");
        OciError::new(code, e.to_string())
    }
}

/// A handler's result.
pub type Result<T, E = OciError> = std::result::Result<T, E>;
