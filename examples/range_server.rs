//! Serves a directory over HTTP on 127.0.0.1 with Range support: the demo's
//! model server, and a way to try modelfs against a local "remote".
//!
//! Usage: cargo run --example range_server -- DIR [ADDR]   (ADDR default 127.0.0.1:0)
//! Prints the base URL on its first line, then serves until killed.

#[path = "../tests/support/range_server.rs"]
mod range_server;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: range_server DIR [127.0.0.1:PORT]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let server = match range_server::RangeServer::start_on(dir.as_ref(), &addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("range_server: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", server.url());
    loop {
        std::thread::park();
    }
}
