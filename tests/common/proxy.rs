//! A fault-injecting HTTP proxy between imgstore and s3s-fs: what a busy or
//! sick S3 does (503 SlowDown, 500, a request that never gets an answer),
//! which s3s-fs itself never does.
//!
//! One request per connection, std threads: each request is read whole,
//! then answered by the rule or forwarded byte for byte (the SigV4
//! signature covers the Host header, which stays the proxy's, so s3s-fs
//! checks it as sent) with `Connection: close`, and the answer streamed
//! back until s3s-fs closes.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::s3::Server;

/// What a request gets instead of s3s-fs's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503 Slow Down` with S3's XML error body: "reduce your request rate".
    SlowDown,
    /// `500 Internal Error` with S3's XML error body.
    Internal,
    /// No answer at all: the connection stays open until the client leaves.
    Stall,
    /// s3s-fs's answer cut in the middle of its body, then nothing more
    /// (the connection stays open until the client leaves).
    StallBody,
}

/// One request as the rule sees it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `PUT`, `HEAD`, `DELETE`.
    pub method: String,
    /// Path and query (`/bucket/prefix/refs/lab/a/@v1`, `/bucket?list-type=2&prefix=...`).
    pub target: String,
    /// How many requests came before this one.
    pub n: usize,
    /// Whether no request with this method and target came before.
    pub first_time: bool,
}

impl Request {
    /// A LIST (ListObjectsV2) request.
    pub fn is_list(&self) -> bool {
        self.method == "GET" && self.target.contains("list-type=2")
    }
}

type Rule = dyn Fn(&Request) -> Option<Fault> + Send + Sync;

/// A running proxy; it lives as long as the test process.
pub struct Proxy {
    /// The proxy as an S3 server: its endpoint, the upstream's files.
    pub server: &'static Server,
    state: Arc<State>,
}

struct State {
    upstream: String,
    rule: Mutex<Arc<Rule>>,
    requests: AtomicUsize,
    faults: AtomicUsize,
    seen: Mutex<HashSet<String>>,
}

impl Proxy {
    /// A proxy in front of `upstream`, passing everything until [`Proxy::set`].
    pub fn start(upstream: &'static Server) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.endpoint.trim_start_matches("http://").to_string(),
            rule: Mutex::new(Arc::new(|_: &Request| None)),
            requests: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
            seen: Mutex::new(HashSet::new()),
        });
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    // A client that hung up mid-request is no test failure.
                    let _ = state.serve(conn);
                });
            }
        });
        Proxy {
            server: upstream.behind(endpoint),
            state,
        }
    }

    /// Replaces the rule, and starts counting requests (and first times) anew.
    pub fn set(&self, rule: impl Fn(&Request) -> Option<Fault> + Send + Sync + 'static) {
        *self.state.rule.lock().unwrap() = Arc::new(rule);
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.faults.store(0, Ordering::SeqCst);
        self.state.seen.lock().unwrap().clear();
    }

    /// Requests since the last [`Proxy::set`].
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Of those, the ones given a fault.
    pub fn faults(&self) -> usize {
        self.state.faults.load(Ordering::SeqCst)
    }
}

impl State {
    fn serve(&self, client: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(client.try_clone()?);
        let mut head = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
            // Each request on its own upstream connection, closed after it.
            if !lower.starts_with("connection:") {
                head.push(line);
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        let mut words = head.first().map(|l| l.split(' ')).into_iter().flatten();
        let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let request = Request {
            method: method.to_string(),
            target: target.to_string(),
            n: self.requests.fetch_add(1, Ordering::SeqCst),
            first_time: self.seen.lock().unwrap().insert(format!("{method} {target}")),
        };
        let rule = Arc::clone(&self.rule.lock().unwrap());
        let fault = rule(&request);
        if fault.is_some() {
            self.faults.fetch_add(1, Ordering::SeqCst);
        }
        let mut client = client;
        match fault {
            Some(Fault::SlowDown) => answer(
                &mut client,
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
            ),
            Some(Fault::Internal) => answer(
                &mut client,
                "500 Internal Server Error",
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
            Some(Fault::Stall) => until_closed(reader),
            Some(Fault::StallBody) => {
                let mut answer = Vec::new();
                self.forward(&head, &body)?.read_to_end(&mut answer)?;
                client.write_all(&answer[..answer.len() / 2])?;
                until_closed(reader)
            }
            None => {
                std::io::copy(&mut self.forward(&head, &body)?, &mut client)?;
                client.shutdown(Shutdown::Both)
            }
        }
    }

    /// Sends the request to s3s-fs on a connection of its own; the answer
    /// ends where that connection does.
    fn forward(&self, head: &[String], body: &[u8]) -> std::io::Result<TcpStream> {
        let mut upstream = TcpStream::connect(&self.upstream)?;
        let mut out = head.concat().into_bytes();
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(body);
        upstream.write_all(&out)?;
        Ok(upstream)
    }
}

/// Waits, answering nothing, until the client gives up and closes.
fn until_closed(mut reader: BufReader<TcpStream>) -> std::io::Result<()> {
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(())
}

/// An S3 error answer, as AWS words it (the body spans lines, as AWS's does).
fn answer(client: &mut TcpStream, status: &str, code: &str, message: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>imgstore-test-proxy</RequestId></Error>"
    );
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    client.shutdown(Shutdown::Both)
}
