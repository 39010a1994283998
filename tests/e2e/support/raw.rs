//! A raw TCP upstream scripted by the test: it reads each request byte for byte (head,
//! then a body framed by Content-Length or chunked), records it exactly as it arrived,
//! and answers with whatever bytes the script returns, including answers no correct
//! server would send (a body on a HEAD answer, a close instead of an answer).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::PATIENCE;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which accepted connection (0 = the first) carried it.
    pub conn: usize,
    /// Its place on that connection (0 = the first request on it).
    pub nth: usize,
    /// The head, request line to the empty line, as sent.
    pub head: String,
    /// The body as sent on the wire (chunked framing included).
    pub body: Vec<u8>,
    /// The body ended as framed (for chunked: the last chunk and its empty line came).
    pub complete: bool,
}

impl Seen {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// The request target of the request line.
    pub fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or("")
    }

    /// The values of every field named `name` (any case), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
}

/// The values of every field named `name` (any case) in a head's text.
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// What the upstream does with a request it read.
pub enum Act {
    /// Writes these bytes and waits for the next request on the connection.
    Reply(Vec<u8>),
    /// Writes the first bytes, waits, writes the rest, and waits for the next request.
    ReplyInTwo(Vec<u8>, Duration, Vec<u8>),
    /// Writes these bytes, then shuts its writing side (the answer ends with the
    /// close) but keeps reading, so a request sent on it anyway is recorded.
    ReplyAndHalfClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
}

type Script = dyn Fn(&Seen) -> Act + Send + Sync;

pub struct RawUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
    conn_tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
        for task in self.conn_tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl RawUpstream {
    /// Starts on 127.0.0.1:0; `script` decides each answer.
    pub async fn start(script: impl Fn(&Seen) -> Act + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conn_tasks = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (count, record, tasks) = (connections.clone(), seen.clone(), conn_tasks.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let handle = tokio::spawn(serve(stream, conn, script.clone(), record.clone()));
                tasks.lock().unwrap().push(handle.abort_handle());
            }
        });
        Self {
            addr,
            connections,
            seen,
            task,
            conn_tasks,
        }
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests were received.
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let seen = self.seen();
            if seen.len() >= n || tokio::time::Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads more bytes into `buf`; `false` at end of stream, on an error or after PATIENCE.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut nth = 0;
    let mut can_write = true;
    loop {
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if !fill(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let chunked = header_values(&head, "transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let length: usize = header_values(&head, "content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (body, complete) = if chunked {
            read_chunked(&mut stream, &mut buf).await
        } else {
            while buf.len() < length {
                if !fill(&mut stream, &mut buf).await {
                    break;
                }
            }
            let n = length.min(buf.len());
            (buf.drain(..n).collect(), n == length)
        };
        let request = Seen {
            conn,
            nth,
            head,
            body,
            complete,
        };
        nth += 1;
        seen.lock().unwrap().push(request.clone());
        if !complete {
            return;
        }
        if !can_write {
            continue;
        }
        match script(&request) {
            Act::Reply(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Act::ReplyInTwo(first, pause, rest) => {
                if stream.write_all(&first).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
                if stream.write_all(&rest).await.is_err() {
                    return;
                }
            }
            Act::ReplyAndHalfClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                can_write = false;
            }
            Act::Close => return,
        }
    }
}

/// Reads a chunked body as framed on the wire; `false` when it broke off or is not
/// chunked framing at all.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (Vec<u8>, bool) {
    let mut wire = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !fill(stream, buf).await {
                wire.append(buf);
                return (wire, false);
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            wire.append(buf);
            return (wire, false);
        };
        wire.extend(buf.drain(..line_end + 2));
        if size == 0 {
            // Trailer fields until an empty line.
            loop {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    if !fill(stream, buf).await {
                        wire.append(buf);
                        return (wire, false);
                    }
                };
                wire.extend(buf.drain(..end + 2));
                if end == 0 {
                    return (wire, true);
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                wire.append(buf);
                return (wire, false);
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            wire.append(buf);
            return (wire, false);
        }
        wire.extend(buf.drain(..size + 2));
    }
}

/// An answer with a Content-Length body.
pub fn answer(status: &str, extra_fields: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{extra_fields}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
