//! A small HTTP/1.1 file server for tests and the demo: `Range` requests,
//! keep-alive, `ETag`s, request and byte counters, a rate limit, and faults
//! injected on demand. It listens on 127.0.0.1 only.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do wrong with a response.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status and no body (`Retry-After: 1` on 429 and 503).
    Status(u16),
    /// Send the headers and this many body bytes, then reset the connection.
    ResetAfter(u64),
    /// Promise the full length, send half, then close.
    ShortBody,
    /// Send one byte more than asked for.
    LongBody,
    /// Flip bits in the body.
    Corrupt,
    /// Answer 200 with the whole file, whatever the range.
    IgnoreRange,
    /// Send the headers and nothing else until the server stops (at most 120 s).
    Stall,
    /// Answer with a different ETag than the file's.
    ChangeEtag,
    /// Send 1 KiB every 100 ms: never silent long enough for a read timeout.
    Trickle,
    /// Send the headers and half the body, then nothing else until the
    /// server stops (at most 120 s), holding the connection.
    StallMidway,
    /// Send the headers and this many body bytes, then (if more is due)
    /// nothing for this long, holding the connection, then the rest.
    PauseAfter(u64, Duration),
    /// Send the whole body chunked, then stall before the final empty chunk
    /// (at most 120 s): every byte arrives, the response never ends.
    StallAfterBody,
}

#[derive(Default)]
struct State {
    requests: AtomicU64,
    body_bytes: AtomicU64,
    /// Faults for the next requests, in order.
    queued: Mutex<VecDeque<Fault>>,
    /// A fault for every request once the queue is empty.
    always: Mutex<Option<Fault>>,
    /// Bytes per second per connection; 0 is unlimited.
    rate: AtomicU64,
    stopping: AtomicBool,
    /// Answer every request with a 302 to this base URL + the request path.
    redirect_to: Mutex<Option<String>>,
    /// Answer 401 unless `Authorization: Bearer <token>` is sent.
    bearer: Mutex<Option<String>>,
    /// Requests as `PATH [FIRST-LAST] [auth]`, for tests that check what was asked.
    log: Mutex<Vec<String>>,
}

pub struct RangeServer {
    addr: SocketAddr,
    state: Arc<State>,
    root: PathBuf,
}

impl RangeServer {
    /// Serves the files under `root` on an ephemeral port of 127.0.0.1.
    pub fn start(root: &Path) -> RangeServer {
        Self::start_on(root, "127.0.0.1:0").expect("bind a loopback port")
    }

    pub fn start_on(root: &Path, addr: &str) -> std::io::Result<RangeServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (st, dir) = (Arc::clone(&state), root.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, dir) = (Arc::clone(&st), dir.clone());
                std::thread::spawn(move || serve_connection(conn, &dir, &st));
            }
        });
        Ok(RangeServer {
            addr,
            state,
            root: root.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Body bytes sent so far (what a client fetched).
    pub fn bytes_sent(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    pub fn reset_counters(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.body_bytes.store(0, Ordering::SeqCst);
    }

    /// Applies `fault` to each of the next `count` requests.
    pub fn push_fault(&self, fault: Fault, count: usize) {
        let mut q = self.state.queued.lock().unwrap();
        q.extend(std::iter::repeat_n(fault, count));
    }

    pub fn set_always(&self, fault: Option<Fault>) {
        *self.state.always.lock().unwrap() = fault;
    }

    pub fn set_rate(&self, bytes_per_second: u64) {
        self.state.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// Redirects every request to `base` + its path (a hub sending readers to a CDN).
    pub fn redirect_to(&self, base: Option<String>) {
        *self.state.redirect_to.lock().unwrap() = base;
    }

    /// Requires `Authorization: Bearer <token>`.
    pub fn require_bearer(&self, token: Option<&str>) {
        *self.state.bearer.lock().unwrap() = token.map(str::to_owned);
    }

    pub fn request_log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

struct Request {
    method: String,
    path: String,
    range: Option<(u64, Option<u64>)>,
    authorization: Option<String>,
    /// A conditional request: answer 304 if the file still has this ETag.
    if_none_match: Option<String>,
    /// The origin named by an absolute-form request line: the client took
    /// this server for its HTTP proxy.
    proxied_for: Option<String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let (proxied_for, path) = match target.strip_prefix("http://") {
        Some(rest) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (
                Some(host.to_owned()),
                format!("/{}", path.trim_start_matches('/')),
            )
        }
        None => (None, target.to_owned()),
    };
    // Files are found by path; a query (an API's options) does not change which.
    let path = path.split('?').next().unwrap_or_default().to_owned();
    let mut range = None;
    let mut authorization = None;
    let mut if_none_match = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_owned());
        }
        if name.eq_ignore_ascii_case("if-none-match") {
            if_none_match = Some(value.trim().to_owned());
        }
        if name.eq_ignore_ascii_case("range") {
            let spec = value.trim().strip_prefix("bytes=")?;
            let (a, b) = spec.split_once('-')?;
            range = Some((a.parse().ok()?, b.parse().ok()));
        }
    }
    Some(Request {
        method,
        path,
        range,
        authorization,
        if_none_match,
        proxied_for,
    })
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_connection(conn: TcpStream, root: &Path, state: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut writer = conn.try_clone().expect("clone socket");
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        state.requests.fetch_add(1, Ordering::SeqCst);
        let entry = match req.range {
            Some((a, Some(b))) => format!("{} {a}-{b}", req.path),
            Some((a, None)) => format!("{} {a}-", req.path),
            None => req.path.clone(),
        };
        let entry = if req.authorization.is_some() {
            format!("{entry} [auth]")
        } else {
            entry
        };
        let entry = match &req.proxied_for {
            Some(origin) => format!("{entry} [proxy for {origin}]"),
            None => entry,
        };
        state.log.lock().unwrap().push(entry);
        let fault = {
            let queued = state.queued.lock().unwrap().pop_front();
            queued.or_else(|| state.always.lock().unwrap().clone())
        };
        let keep_going = respond(&mut writer, root, state, &req, fault);
        if !keep_going {
            return;
        }
    }
}

/// Writes one response; false when the connection must close.
fn respond(
    out: &mut TcpStream,
    root: &Path,
    state: &State,
    req: &Request,
    fault: Option<Fault>,
) -> bool {
    if let Some(token) = state.bearer.lock().unwrap().clone()
        && req.authorization.as_deref() != Some(format!("Bearer {token}").as_str())
    {
        let _ = write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
        );
        return true;
    }
    if let Some(base) = state.redirect_to.lock().unwrap().clone() {
        let _ = write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {base}{}\r\nContent-Length: 0\r\n\r\n",
            req.path
        );
        return true;
    }
    if let Some(Fault::Status(code)) = fault {
        let retry = if code == 429 || code == 503 {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        let _ = write!(
            out,
            "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\n{retry}\r\n"
        );
        return true;
    }
    if req.path == "/__stats" {
        let body = format!(
            "{{\"requests\": {}, \"bytes\": {}}}",
            state.requests.load(Ordering::SeqCst),
            state.body_bytes.load(Ordering::SeqCst)
        );
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        return true;
    }
    let rel = percent_decode(req.path.split('?').next().unwrap_or("/"));
    let target = root.join(rel.trim_start_matches('/'));
    if target.is_dir() && !rel.contains("..") {
        return list_directory(out, &target, &rel);
    }
    let file = match File::open(&target) {
        Ok(f) if !rel.contains("..") && f.metadata().is_ok_and(|m| m.is_file()) => f,
        _ => {
            let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            return true;
        }
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let etag = if fault == Some(Fault::ChangeEtag) {
        format!("\"changed-{}\"", state.requests.load(Ordering::SeqCst))
    } else {
        let mtime = file.metadata().ok().and_then(|m| m.modified().ok());
        let nanos = mtime
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("\"{size:x}-{nanos:x}\"")
    };
    if req.if_none_match.as_deref() == Some(etag.as_str()) {
        let _ = write!(
            out,
            "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\n\r\n"
        );
        return true;
    }
    let (status, start, end) = match (req.range, &fault) {
        (Some(_), Some(Fault::IgnoreRange)) | (None, _) => ("200 OK", 0, size),
        (Some((a, b)), _) => {
            let end = b.map_or(size, |b| (b + 1).min(size));
            if a >= size || a >= end {
                let _ = write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n"
                );
                return true;
            }
            ("206 Partial Content", a, end)
        }
    };
    let len = end - start;
    let long = fault == Some(Fault::LongBody);
    let range_header = if status.starts_with("206") {
        format!("Content-Range: bytes {start}-{}/{size}\r\n", end - 1)
    } else {
        String::new()
    };
    let chunked = fault == Some(Fault::StallAfterBody);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", len + long as u64)
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{framing}\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\n{range_header}\r\n"
    );
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    if req.method == "HEAD" {
        return true;
    }
    let send = match fault {
        Some(Fault::ResetAfter(n)) => n.min(len),
        Some(Fault::ShortBody | Fault::StallMidway) => len / 2,
        Some(Fault::PauseAfter(n, _)) => n.min(len),
        Some(Fault::Stall) => 0,
        _ => len,
    };
    if chunked && write!(out, "{send:x}\r\n").is_err() {
        return false;
    }
    if !send_range(out, &file, start, send, fault.as_ref(), state) {
        return false;
    }
    match fault {
        Some(Fault::LongBody) => out.write_all(&[0]).is_ok(),
        Some(Fault::Stall | Fault::StallMidway) => stall(out, state),
        Some(Fault::PauseAfter(n, pause)) if n < len => {
            pause_for(pause, state) && send_range(out, &file, start + n, len - n, None, state)
        }
        Some(Fault::StallAfterBody) => out.write_all(b"\r\n").is_ok() && stall(out, state),
        Some(Fault::ResetAfter(_)) => {
            // SO_LINGER 0: close sends RST, not FIN.
            let _ = socket_linger_zero(out);
            let _ = out.shutdown(Shutdown::Both);
            false
        }
        Some(Fault::ShortBody) => false,
        _ => true,
    }
}

/// Holds the connection open, silent, until the client gives up or the
/// server stops (at most 120 s); then it is closed.
fn stall(out: &mut TcpStream, state: &State) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !state.stopping.load(Ordering::SeqCst) {
        let mut probe = [0u8; 1];
        let _ = out.set_read_timeout(Some(Duration::from_millis(200)));
        if let Ok(0) = out.read(&mut probe) {
            break;
        }
    }
    false
}

/// Waits `pause` (or until the server stops); false if it stopped.
fn pause_for(pause: Duration, state: &State) -> bool {
    let until = Instant::now() + pause;
    while Instant::now() < until {
        if state.stopping.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    true
}

/// An HTML index, as web servers write them: clients such as rclone's http
/// backend list a directory by following its links.
fn list_directory(out: &mut TcpStream, dir: &Path, rel: &str) -> bool {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        format!("{name}/")
                    } else {
                        name
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let links: String = names
        .iter()
        .map(|n| format!("<a href=\"{n}\">{n}</a>\n"))
        .collect();
    let body = format!("<html><body><h1>{rel}</h1>\n{links}</body></html>\n");
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .is_ok()
}

/// Streams `len` bytes of `file` from `start`, paced by the rate limit;
/// `Corrupt` flips the first byte of every 4 KiB, `Trickle` slows it down.
fn send_range(
    out: &mut TcpStream,
    file: &File,
    start: u64,
    len: u64,
    fault: Option<&Fault>,
    state: &State,
) -> bool {
    let began = Instant::now();
    let corrupt = fault == Some(&Fault::Corrupt);
    let trickle = fault == Some(&Fault::Trickle);
    let mut buf = vec![0u8; if trickle { 1 << 10 } else { 256 << 10 }];
    let mut sent = 0u64;
    while sent < len {
        let n = buf.len().min((len - sent) as usize);
        if file.read_exact_at(&mut buf[..n], start + sent).is_err() {
            return false;
        }
        if corrupt {
            let first = (4096 - sent % 4096) % 4096;
            buf[..n]
                .iter_mut()
                .skip(first as usize)
                .step_by(4096)
                .for_each(|b| *b ^= 0x5a);
        }
        let rate = state.rate.load(Ordering::SeqCst);
        if trickle {
            if state.stopping.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        } else if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if out.write_all(&buf[..n]).is_err() {
            return false;
        }
        sent += n as u64;
        state.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
    true
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a correctly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
