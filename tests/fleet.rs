//! A fleet on existing infrastructure: several nodes' mounts behind the
//! nginx slice cache tier of `deploy/nginx/modelfs-cache.conf`, run as it
//! is, in front of the tests' origin server. Every mount reads the right
//! bytes, and the origin sends the file about once.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::*;

const MIB: u64 = 1 << 20;
const NODES: usize = 4;

/// nginx running the deploy file, in a directory of its own; stopped when dropped.
struct CacheTier {
    child: Child,
    addr: String,
}

impl CacheTier {
    fn start(dir: &Path, origin: &str) -> CacheTier {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "nginx is needed for the fleet test (.ci/run installs it: apt-get install nginx)",
            );
        let addr = free_addr();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/modelfs-cache.conf");
        let snippet = std::fs::read_to_string(deploy)
            .unwrap()
            .replace("@LISTEN@", &addr)
            .replace("@ORIGIN@", origin)
            .replace("@CACHE_DIR@", &dir.join("cache").display().to_string());
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(dir.join("modelfs-cache.conf"), snippet).unwrap();
        // The main configuration a distribution ships, reduced to what the
        // tier needs; workers as root, to write the test's directory.
        let main = format!(
            "user root;\nworker_processes 2;\npid {0}/nginx.pid;\nerror_log {0}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; include {0}/modelfs-cache.conf; }}\n",
            dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx)
            .args(["-p"])
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let tier = CacheTier { child, addr };
        wait_for("nginx to listen", || {
            std::net::TcpStream::connect(&tier.addr).is_ok()
        });
        tier
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CacheTier {
    /// SIGTERM: the master stops its workers (SIGKILL would orphan them).
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn four_mounts_behind_the_slice_cache_tier_cost_the_origin_one_copy() {
    let ws = Workspace::new();
    let size = 512 * MIB as usize;
    let data = sample_bytes(size, 5);
    ws.add_file("m", "model.safetensors", &data);
    let origin = RangeServer::start(&ws.models());
    let tier = CacheTier::start(&ws.path("nginx"), &origin.url());
    ws.write_manifest(&[ws.entry("m", "m", &[format!("{}/m", tier.url())], MIB)]);
    let mounts: Vec<Mount> = (0..NODES)
        .map(|i| {
            let cache = ws.path(&format!("node-{i}-cache"));
            let cache = cache.to_str().unwrap();
            Mount::start_on(
                &ws,
                &ws.path(&format!("node-{i}")),
                &["--cache-dir", cache],
                &[],
            )
        })
        .collect();
    // Every node reads the cold file at once.
    let want = sha256_hex(&data);
    std::thread::scope(|s| {
        for m in &mounts {
            let want = &want;
            s.spawn(move || {
                let got = std::fs::read(m.path("m/model.safetensors")).unwrap();
                assert_eq!(
                    &sha256_hex(&got),
                    want,
                    "wrong bytes on {}",
                    m.path("").display()
                );
            });
        }
    });
    let sent = origin.bytes_sent();
    eprintln!(
        "fleet: the origin sent {:.3} copies of the file for {NODES} nodes",
        sent as f64 / size as f64
    );
    assert!(
        sent as f64 <= 1.05 * size as f64,
        "the origin sent {sent} bytes for a file of {size}"
    );
}
