//! Test support shared by the crates: a real `redis-server` on a free loopback port, stopped on
//! drop, and a real S3 server (`s3::S3Server`, SeaweedFS). Used by tests and load drivers; never
//! by production code.

pub mod kube;
pub mod s3;

/// A scratch directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    #[allow(clippy::expect_used)]
    pub fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("nbplat-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("creating a scratch directory");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis server owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one; panics with a clear message when `redis-server` is missing (run `make test`).
    #[allow(clippy::expect_used)]
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run the tests with `make test`, which installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
