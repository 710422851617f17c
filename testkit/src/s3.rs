//! A real S3-compatible server for one test: SeaweedFS's `weed` (Apache-2.0; built and cached by
//! scripts/seaweedfs.sh, which `make test` runs), every port a free one on 127.0.0.1, its data
//! in a scratch directory, one static identity (access key and secret; any other credentials
//! and anonymous requests are refused), killed on drop.
//!
//! One process, `weed mini`: master, volume server, filer and S3 gateway, and the admin server
//! with its maintenance worker, which mini always runs; no WebDAV, Iceberg or Lance catalogs,
//! admin UI, metrics or telemetry. Each component listens on an HTTP port and a gRPC port, all
//! set here. (`weed server -s3` starts fewer parts but is slower to be ready for writes: its
//! filer joins the lock ring that S3 writes take a lock from about 8 s after the start, mini's
//! about 4.5 s; writes before that wait up to 5 s for a lock.)
//!
//! `create_bucket` signs its request (AWS Signature Version 4) itself, so that testkit needs no
//! S3 client; tests talk to the server with the `object_store` crate.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::{digest, hmac};

use crate::TempDir;

/// The one identity's access key.
pub const ACCESS_KEY: &str = "nbplat-test-access";
/// Its secret.
pub const SECRET_KEY: &str = "nbplat-test-secret-0123456789abcdef";
/// The region requests are signed for (SeaweedFS accepts any; clients need one).
pub const REGION: &str = "us-east-1";

/// The components of `weed mini`, each with an HTTP port and a gRPC port.
const COMPONENTS: [&str; 5] = ["master", "volume", "filer", "s3", "admin"];
const PORTS: usize = 2 * COMPONENTS.len();

/// A running SeaweedFS owned by one test.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    /// The components' HTTP ports, then their gRPC ports.
    ports: [u16; PORTS],
    log: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    /// Starts one and waits until it takes writes; panics with a clear message when `weed` is
    /// missing (run `make test`) or when it does not come up. Tried three times: another
    /// process may take one of the free ports picked before weed binds it, and weed then exits.
    pub fn start() -> Self {
        for _ in 1..3 {
            let mut server = Self::launch();
            if server.wait_ready().is_ok() {
                return server;
            }
        }
        let mut server = Self::launch();
        if let Err(message) = server.wait_ready() {
            panic!("{message}");
        }
        server
    }

    #[allow(clippy::expect_used)]
    fn launch() -> Self {
        let dir = TempDir::new("s3");
        let ports = free_ports();
        let config = dir.0.join("s3.json");
        std::fs::write(&config, identities()).expect("writing the S3 identities");
        let data = dir.0.join("data");
        std::fs::create_dir(&data).expect("creating the data directory");
        let log = dir.0.join("weed.log");
        let log_file = std::fs::File::create(&log).expect("creating weed.log");
        let path = |p: &Path| p.to_str().expect("a UTF-8 scratch path").to_owned();
        let mut command = Command::new("weed");
        // Everything logged to stderr (weed.log), no log files in /tmp.
        command.args([
            "-logtostderr",
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
        ]);
        command.arg(format!("-dir={}", path(&data)));
        for (i, component) in COMPONENTS.iter().enumerate() {
            command.arg(format!("-{component}.port={}", ports[i]));
            command.arg(format!(
                "-{component}.port.grpc={}",
                ports[COMPONENTS.len() + i]
            ));
        }
        command
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-admin.port.legacy=0",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                // Small volumes (each bucket is a collection with volumes of its own), as many
                // as the disk takes.
                "-master.volumeSizeLimitMB=64",
            ])
            .arg(format!("-s3.config={}", path(&config)))
            // Unix sockets beside the data rather than in /tmp (the gRPC ones are always
            // /tmp/seaweedfs-COMPONENT-grpc-PORT.sock; drop removes them).
            .arg(format!(
                "-filer.localSocket={}",
                path(&dir.0.join("filer.sock"))
            ))
            .arg(format!("-s3.localSocket={}", path(&dir.0.join("s3.sock"))))
            // security.toml's key for SSE-S3, from which the STS signing key is derived (mini
            // would otherwise make one and keep it in the data directory).
            .env(
                "WEED_S3_SSE_KEK",
                "6e62706c61742d746573742d6b656b2d6e62706c61742d746573742d6b656b21",
            )
            .env("WEED_S3_SSE_KEK_PASSPHRASE", "nbplat-test")
            .current_dir(&dir.0)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("weed.log"))
            .stderr(log_file);
        let child = command
            .spawn()
            .expect("weed (SeaweedFS) not found: run the tests with `make test`, which builds it (scripts/seaweedfs.sh)");
        Self {
            child,
            ports,
            log,
            _dir: dir,
        }
    }

    /// Waits until it is ready; an error when weed exits first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "weed exited ({status}) while starting:\n{}",
                    self.log_tail()
                ));
            }
            if self.ready() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not become ready within 30 s (a signed ListBuckets answered, and \
                 the filer and the S3 gateway logged the lock ring):\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The S3 gateway answers a signed ListBuckets (it is connected to the filer and has loaded
    /// the identities), and the filer and the gateway have the lock ring, which every write
    /// takes a lock from. Nothing but the log tells the latter: the lines
    /// `LockRing: filer@… received ring update` and `LockRing: s3@… received ring update`.
    fn ready(&self) -> bool {
        if !matches!(self.request("GET", "/"), Ok((200, _))) {
            return false;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        ["filer", "s3"].iter().all(|c| {
            log.lines().any(|l| {
                l.contains(&format!("LockRing: {c}@")) && l.contains("received ring update")
            })
        })
    }

    /// The last 40 lines of weed's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint (path-style requests, plain HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port())
    }

    /// The S3 endpoint's port.
    pub fn s3_port(&self) -> u16 {
        self.ports[3]
    }

    /// The region to sign requests for.
    pub fn region(&self) -> &'static str {
        REGION
    }

    /// The access key of the server's one identity.
    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }

    /// Its secret.
    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates bucket `name` (S3 CreateBucket); panics unless the server created it.
    pub fn create_bucket(&self, name: &str) {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "bucket names here are lowercase letters, digits and dashes: {name:?}"
        );
        match self.request("PUT", &format!("/{name}")) {
            Ok((200, _)) => {}
            Ok((status, body)) => panic!("CreateBucket {name}: HTTP {status}: {body}"),
            Err(e) => panic!("CreateBucket {name}: {e}"),
        }
    }

    /// One signed S3 request without a body (path-style, no query): its status and body.
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let host = format!("127.0.0.1:{}", self.s3_port());
        let headers = sign_v4(method, &host, path, SystemTime::now());
        http(self.s3_port(), method, path, &headers)
    }
}

/// One HTTP/1.1 request without a body to 127.0.0.1:`port`: its status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // weed is one process; its group would also take anything it started.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
        for (component, port) in COMPONENTS.iter().zip(&self.ports[COMPONENTS.len()..]) {
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{component}-grpc-{port}.sock"));
        }
    }
}

/// Distinct free loopback ports, held open together while they are picked so that none
/// repeats. (SeaweedFS's default gRPC port is its HTTP port + 10000, which may be taken or out
/// of range, and mini moves a default HTTP port that is taken: all are set explicitly. mini
/// exits when an HTTP port set so is taken; a taken gRPC port it moves, and logs it.)
#[allow(clippy::expect_used)]
fn free_ports() -> [u16; PORTS] {
    let listeners: Vec<TcpListener> = (0..PORTS)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    let mut ports = [0u16; PORTS];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().expect("free port").port();
    }
    ports
}

/// SeaweedFS's static S3 configuration: one identity allowed everything, no anonymous access.
fn identities() -> String {
    serde_json::json!({
        "identities": [{
            "name": "nbplat-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]
        }]
    })
    .to_string()
}

/// The headers that sign a bodiless request with AWS Signature Version 4 (service `s3`).
fn sign_v4(method: &str, host: &str, path: &str, now: SystemTime) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let day = &amz_date[..8];
    let payload = hex(digest::digest(&digest::SHA256, b"").as_ref());
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload}"
    );
    let scope = format!("{day}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mac = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
            .as_ref()
            .to_vec()
    };
    let key = mac(format!("AWS4{SECRET_KEY}").as_bytes(), day);
    let key = mac(&key, REGION);
    let key = mac(&key, "s3");
    let key = mac(&key, "aws4_request");
    let signature = hex(&mac(&key, &to_sign));
    vec![
        ("x-amz-date", amz_date.clone()),
        ("x-amz-content-sha256", payload),
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
            ),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` (UTC).
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates() {
        let at = |s| amz_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_440_938_160), "20150830T123600Z");
        assert_eq!(at(1_798_761_599), "20261231T235959Z");
    }
}
