//! A real S3-compatible server for the tests: `s3s-fs` (the s3s project's
//! file-system backed S3), which checks SigV4 signatures, presigned ones
//! included. `scripts/test.sh` installs it; `S3S_FS` names another binary.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{DEADLINE, free_addr};

pub const ACCESS_KEY: &str = "modelfs-test-key";
pub const SECRET_KEY: &str = "modelfs-test-secret";

pub struct S3Server {
    child: Child,
    addr: String,
}

impl S3Server {
    /// Serves each directory under `root` as a bucket, requiring requests
    /// signed with `ACCESS_KEY` / `SECRET_KEY`.
    pub fn start(root: &Path) -> S3Server {
        let bin = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let addr = free_addr();
        let (host, port) = addr.split_once(':').unwrap();
        let child = Command::new(&bin)
            .args(["--host", host, "--port", port])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {bin:?} ({e}): scripts/test.sh installs it, or \
                     `cargo install s3s-fs@0.14.1 --features binary --locked`"
                )
            });
        let mut server = S3Server { child, addr };
        let start = Instant::now();
        while TcpStream::connect(&server.addr).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{bin} exited with {status} before it listened");
            }
            assert!(start.elapsed() < DEADLINE, "{bin} did not listen in time");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }

    /// For `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment of a client with the right keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
