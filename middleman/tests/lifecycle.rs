//! Middleman as a process: shutdown cleans up, a crash leaves nothing a restart does not sweep,
//! floods keep memory bounded, and a thousand executions leak no tasks or descriptors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use doc_protocol::{ExecutionStatus, ServerEvent};
use session_token::{Claims, Role, SigningKey};
use tokio::io::{AsyncBufReadExt as _, BufReader};

struct Proc {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    key: SigningKey,
    runtime_root: std::path::PathBuf,
}

async fn spawn_binary(dir: &TempDir, extra: &[&str]) -> Proc {
    spawn_logging(dir, extra, true).await
}

/// Starts `middleman serve`; with `keep_log` false, its log pipe is closed once it listens.
async fn spawn_logging(dir: &TempDir, extra: &[&str], keep_log: bool) -> Proc {
    require_kernel();
    let key = SigningKey::generate();
    let public = dir
        .0
        .join(format!("public-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&public, key.verifying_key().to_pem().unwrap()).unwrap();
    let runtime_root = dir.0.join("run");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_middleman"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--document",
            "d",
            "--pod",
            "p",
            "--public-key",
        ])
        .arg(&public)
        .arg("--runtime-root")
        .arg(&runtime_root)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("middleman exited before listening");
    })
    .await
    .unwrap();
    if keep_log {
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    } else {
        drop(lines);
    }
    let p = Proc {
        child,
        addr,
        key,
        runtime_root,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(addr, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

impl Proc {
    async fn client(&self) -> Client {
        let token = self
            .key
            .mint(&Claims::new("t", "ada", "Ada", "d", "p", Role::Editor, 600))
            .unwrap();
        Client::connect(self.addr, &token).await.unwrap()
    }
    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }
    fn runtime_dirs(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&self.runtime_root)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn proc_status(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Every process Middleman started, as the host numbers them: its kernel agent, the jail's
/// init and the kernel (which calls itself pid 3 inside its own PID namespace).
async fn descendants_of(p: &Proc) -> Vec<i32> {
    // A run makes sure the kernel is up.
    let mut c = p.client().await;
    assert_eq!(c.run("1").await.status, Some(ExecutionStatus::Ok));
    let parent_of = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![p.pid()];
    loop {
        let more: Vec<i32> = all
            .iter()
            .copied()
            .filter(|pid| {
                !found.contains(pid) && parent_of(*pid).is_some_and(|pp| found.contains(&pp))
            })
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found.retain(|pid| *pid != p.pid());
    assert!(found.len() >= 3, "agent, init and kernel: {found:?}");
    found
}

async fn wait_gone(pids: &[i32]) -> bool {
    for _ in 0..200 {
        if pids.iter().all(|pid| !alive(*pid)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_and_cleans_up() {
    let dir = TempDir::new("term");
    let mut p = spawn_binary(&dir, &[]).await;
    let kernel = descendants_of(&p).await;
    let mut c = p.client().await;
    assert_eq!(p.runtime_dirs().len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let e = c.until(|e| matches!(e, ServerEvent::Shutdown { .. })).await;
    assert!(matches!(e.last(), Some(ServerEvent::Shutdown { .. })));
    let status = tokio::time::timeout(WAIT, p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(wait_gone(&kernel).await, "kernel {kernel:?} still running");
    assert!(
        p.runtime_dirs().is_empty(),
        "runtime dir removed: {:?}",
        p.runtime_dirs()
    );
}

/// A log nobody reads any more (a closed pipe: a collector gone, `| head`) costs log lines,
/// not the shutdown: every log line now fails, the one the signal handler writes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_middleman_whose_log_is_gone() {
    let dir = TempDir::new("term-nolog");
    let mut p = spawn_logging(&dir, &[], false).await;
    let mut c = p.client().await;
    assert_eq!(c.run("print(1)").await.stdout(), "1\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, p.child.wait())
        .await
        .expect("middleman did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_nothing_behind() {
    let dir = TempDir::new("crash");
    let mut p = spawn_binary(&dir, &[]).await;
    let kernel = descendants_of(&p).await;
    let stale = p.runtime_dirs();
    assert_eq!(stale.len(), 1);
    p.child.start_kill().unwrap(); // SIGKILL: no cleanup code runs.
    p.child.wait().await.unwrap();
    // The kernel agent sees its connection close and ends; the jail's init sees the agent
    // gone and ends, and with it the jail's PID namespace and the kernel.
    assert!(
        wait_gone(&kernel).await,
        "orphaned processes {kernel:?} still running"
    );
    // The next Middleman on the same root sweeps the dead one's runtime directory.
    let p2 = spawn_binary(&dir, &[]).await;
    assert!(!stale[0].exists(), "stale runtime dir swept");
    assert_eq!(p2.runtime_dirs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_flood_keeps_memory_bounded_and_others_served() {
    let dir = TempDir::new("flood");
    let p = spawn_binary(&dir, &[]).await;
    let mut flooder = p.client().await;
    let mut other = p.client().await;
    // The other collaborator reads as a browser does, all along: both floods' ends reach it.
    let watcher = tokio::spawn(async move {
        let mut finished = 0;
        let _ = other
            .until(|e| {
                if matches!(e, ServerEvent::ExecutionFinished { .. }) {
                    finished += 1;
                }
                finished == 2
            })
            .await;
        other
    });
    // 300 MB of output in 3,000 messages of 100 kB, as fast as the kernel can send them.
    let id = flooder
        .submit("import sys\nchunk = ('x' * 999 + '\\n') * 100\nfor i in range(3000):\n    sys.stdout.write(chunk); sys.stdout.flush()")
        .await;
    let run = flooder.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert!(run.truncated);
    assert!(run.stdout().len() <= 4 * 1024 * 1024);
    // Memory is bounded by the cap and the largest single message, not by the volume.
    let peak = proc_status(p.pid(), "VmHWM:").unwrap();
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB after 300 MB of output"
    );
    // One 100 MB message (ipykernel batches a tight loop into one): costs about its size, once.
    let run = flooder
        .run(
            "import sys\nline = 'x' * 999 + '\\n'\nfor i in range(100_000): sys.stdout.write(line)",
        )
        .await;
    assert!(run.truncated);
    assert!(
        run.stdout().starts_with("xxx"),
        "prefix of the oversized batch kept"
    );
    let peak = proc_status(p.pid(), "VmHWM:").unwrap();
    assert!(
        peak < 180 * 1024,
        "peak RSS {peak} KiB after one 100 MB message"
    );
    // The other client received the capped streams and the server still answers it.
    let mut other = watcher.await.unwrap();
    assert_eq!(other.run("1+1").await.status, Some(ExecutionStatus::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_executions_leak_nothing() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    for _ in 0..20 {
        assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    }
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let (fds_before, tasks_before) = (fds(), tasks());
    for i in 0..1000 {
        let run = c.run(&format!("print({i})")).await;
        assert_eq!(run.stdout(), format!("{i}\n"));
    }
    let (fds_after, tasks_after) = (fds(), tasks());
    // A leak of one per execution would show as a thousand; a couple of descriptors or tasks
    // may come and go with timers and the allocator.
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    assert!(
        tasks_after <= tasks_before + 2,
        "tasks {tasks_before} -> {tasks_after}"
    );
    server.stop().await;
}
