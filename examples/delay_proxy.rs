//! A TCP proxy on 127.0.0.1 that adds a round-trip time, for benchmarks of
//! latency-bound reads (scripts/bench.sh's "+20 ms RTT" profile).
//!
//! Usage: delay_proxy --upstream 127.0.0.1:PORT [--rtt-ms 20] [--slow-start] [--listen 127.0.0.1:0]
//!
//! Prints its listening address (`127.0.0.1:PORT`) on stdout, then serves
//! until its stdin reaches EOF (the parent closed the pipe or died) or it gets
//! SIGTERM/SIGINT. Run it with stdin a pipe the parent holds open.
//!
//! The model of a link with round-trip time RTT and no bandwidth limit:
//! - A new connection costs one RTT before the first byte can flow (the TCP
//!   handshake): nothing is read from the client until RTT after the accept.
//! - Every piece of data, in each direction, is delivered RTT/2 after the
//!   proxy read it, and so is the end of the stream (FIN). A direction is a
//!   delay line: a reader stamps each piece with its delivery time and queues
//!   it, a writer waits for that time and writes it; the reader does not wait
//!   for the writer, so transfers are pipelined, not stop-and-wait.
//! - What is in flight is bounded, like a TCP window: at most
//!   `QUEUE` pieces of at most `PIECE` bytes per direction (16 MiB), so the
//!   throughput of one connection is capped near 16 MiB per RTT/2, far above
//!   what the benchmark's latency rows move.
//! - With `--slow-start`, each direction of a connection also has TCP's
//!   slow start without losses: 10 segments (14,600 bytes) in its first
//!   round trip, twice as many in each next one (rounds restart from where
//!   the sender left off after a pause, the window kept). Without it, a
//!   new connection moves any amount in its first round trip, which real
//!   TCP on a 20 ms link does not: an 8 MiB response takes about 10 RTTs.
//!
//! Only loopback addresses are accepted, for listening and upstream alike.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

/// Largest piece read at once.
const PIECE: usize = 64 << 10;
/// Pieces queued per direction (the "window").
const QUEUE: usize = 256;

fn usage(msg: &str) -> ! {
    eprintln!("delay_proxy: {msg}");
    eprintln!("usage: delay_proxy --upstream 127.0.0.1:PORT [--rtt-ms 20] [--listen 127.0.0.1:0]");
    std::process::exit(2);
}

fn loopback(flag: &str, value: Option<String>) -> SocketAddr {
    let value = value.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    match value.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => a,
        Ok(_) => usage(&format!("{flag} {value}: only loopback addresses")),
        Err(e) => usage(&format!("{flag} {value}: {e}")),
    }
}

#[tokio::main]
async fn main() {
    let (mut upstream, mut listen, mut rtt) = (None, "127.0.0.1:0".parse().unwrap(), 20u64);
    let mut slow_start = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--upstream" => upstream = Some(loopback("--upstream", args.next())),
            "--listen" => listen = loopback("--listen", args.next()),
            "--slow-start" => slow_start = true,
            "--rtt-ms" => {
                rtt = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--rtt-ms needs a number of milliseconds"))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let upstream = upstream.unwrap_or_else(|| usage("--upstream is required"));
    let rtt = Duration::from_millis(rtt);

    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("delay_proxy: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", listener.local_addr().expect("bound address"));

    // EOF on stdin: the parent is gone or done with us.
    std::thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(async move {
                        if let Err(e) = relay(client, upstream, rtt, slow_start).await {
                            eprintln!("delay_proxy: connection: {e}");
                        }
                    });
                }
                // Out of fds and the like: back off rather than spin.
                Err(_) => sleep(Duration::from_millis(10)).await,
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
}

/// One proxied connection: the handshake's RTT, then two delay lines.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    rtt: Duration,
    slow_start: bool,
) -> std::io::Result<()> {
    let accepted = Instant::now();
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    sleep_until(accepted + rtt).await;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (up, down) = tokio::join!(
        delay_line(client_read, server_write, rtt, slow_start),
        delay_line(server_read, client_write, rtt, slow_start),
    );
    up.and(down)
}

/// Copies `from` to `to`, each piece (and the EOF, `None`) delivered RTT/2
/// after it was read, or after the round trip that slow start lets it go in.
async fn delay_line(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    rtt: Duration,
    slow_start: bool,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE);
    let reader = async move {
        let mut window = Window::new(rtt, slow_start);
        loop {
            let mut buf = vec![0; PIECE];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                let _ = tx.send((Instant::now() + rtt / 2, None)).await;
                return Ok::<_, std::io::Error>(());
            }
            buf.truncate(n);
            // The piece, split where slow start makes it wait for a later round trip.
            while !buf.is_empty() {
                let (sent_at, allowed) = window.take(Instant::now(), buf.len());
                let rest = buf.split_off(allowed);
                if tx.send((sent_at + rtt / 2, Some(buf))).await.is_err() {
                    return Ok(());
                }
                buf = rest;
            }
        }
    };
    let writer = async move {
        while let Some((due, piece)) = rx.recv().await {
            sleep_until(due).await;
            match piece {
                Some(bytes) => to.write_all(&bytes).await?,
                None => return to.shutdown().await,
            }
        }
        Ok(())
    };
    // A failed writer drops `rx`, which ends the reader; a failed reader drops
    // `tx`, which ends the writer once the queue is delivered.
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

/// Slow start without losses: how many bytes one direction may send in its
/// current round trip. Unlimited without `--slow-start`.
struct Window {
    rtt: Duration,
    on: bool,
    round_end: Option<Instant>,
    size: usize,
    used: usize,
}

impl Window {
    /// Ten segments of 1,460 bytes: Linux's initial window.
    const INITIAL: usize = 10 * 1460;

    fn new(rtt: Duration, on: bool) -> Self {
        Window {
            rtt,
            on,
            round_end: None,
            size: Self::INITIAL,
            used: 0,
        }
    }

    /// When up to `want` bytes read at `now` may leave, and how many of them.
    fn take(&mut self, now: Instant, want: usize) -> (Instant, usize) {
        if !self.on {
            return (now, want);
        }
        let end = *self.round_end.get_or_insert(now + self.rtt);
        if self.used == self.size || now >= end {
            // The next round trip: at once if the sender was idle, else when this one ends.
            let start = end.max(now);
            (self.round_end, self.size, self.used) = (Some(start + self.rtt), self.size * 2, 0);
        }
        let start = self.round_end.unwrap() - self.rtt;
        let n = want.min(self.size - self.used);
        self.used += n;
        (start.max(now), n)
    }
}
