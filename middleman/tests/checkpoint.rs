//! Checkpoints with real parts: real `middleman` processes (so that they can be SIGTERMed and
//! SIGKILLed like a pod), a real ipykernel, the checkpoint store in a directory. Each
//! Middleman has a fresh runtime directory and workspace, as a new pod has; they share only
//! the document store and the checkpoint store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Client, TempDir, require_kernel};
use doc_protocol::{CellState, Resume, ServerEvent};
use session_token::{Claims, Role, SigningKey};

struct Pod {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

struct Shared {
    dir: TempDir,
    key: SigningKey,
    document: String,
}

impl Shared {
    fn new() -> Self {
        require_kernel();
        let dir = TempDir::new("ckpt");
        let key = SigningKey::generate();
        std::fs::write(
            dir.0.join("public.pem"),
            key.verifying_key().to_pem().unwrap(),
        )
        .unwrap();
        Self {
            dir,
            key,
            document: format!("doc-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn token(&self) -> String {
        let claims = Claims::new(
            "test",
            "ada",
            "Ada",
            &self.document,
            "pod-1",
            Role::Editor,
            3600,
        );
        self.key.mint(&claims).unwrap()
    }

    fn store(&self) -> PathBuf {
        self.dir.0.join("checkpoints")
    }

    /// The document's checkpoint directory in the store.
    fn document_dir(&self) -> PathBuf {
        let hex: String = self.document.bytes().map(|b| format!("{b:02x}")).collect();
        self.store().join(hex)
    }

    /// Waits until the document store holds `ran` cells that ran (a pod killed before the
    /// document is saved loses its cells too, checkpoint or not).
    async fn wait_document(&self, ran: usize) {
        for _ in 0..1200 {
            let count = std::fs::read_dir(self.dir.0.join("docs"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .map(|d| {
                    d["runtimes"]
                        .as_object()
                        .map(|r| r.values().filter(|c| c["last_run"].is_object()).count())
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0);
            if count >= ran {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the document was not saved");
    }

    fn manifest(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.document_dir().join("manifest.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until the stored manifest satisfies `done`.
    async fn wait_manifest(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..1200 {
            if let Some(m) = self.manifest().filter(|m| done(m)) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the checkpoint was not stored: {:?}", self.manifest());
    }

    /// A new pod: its own runtime directory (and so workspace), the shared stores.
    async fn pod(&self, name: &str) -> Pod {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_middleman"))
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--document", &self.document, "--pod", "pod-1"])
            .args(["--kernel", "python3"])
            .arg("--public-key")
            .arg(self.dir.0.join("public.pem"))
            .arg("--runtime-root")
            .arg(self.dir.0.join(format!("run-{name}")))
            .arg("--document-store")
            .arg(self.dir.0.join("docs"))
            .arg("--checkpoint-store")
            .arg(self.store())
            .args(["--save-interval", "100ms", "--shutdown-grace", "30s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.0.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        let pod = Pod { child, addr };
        for _ in 0..1200 {
            if common::http_get(pod.addr, "/readyz").await.0 == 200 {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("middleman did not become ready");
    }
}

impl Pod {
    async fn signal(mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
        for _ in 0..1200 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("middleman did not exit after {signal}");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds a cell at the end and runs it; returns its id and what it printed.
async fn cell(c: &mut Client, index: u32, source: &str) -> (String, String) {
    let id = c.insert_cell(index, source).await;
    let execution = c.submit_cell(&id).await;
    let run = c.collect(&execution).await;
    assert_eq!(
        run.status,
        Some(doc_protocol::ExecutionStatus::Ok),
        "{source}: {:?}",
        run.outputs
    );
    (id, run.stdout())
}

/// How the document resumed: from the snapshot when that came first, else the `resumed`
/// event (with every event read before it).
async fn resumed(c: &mut Client) -> (Resume, Vec<ServerEvent>) {
    if let Some(resume) = &c.snapshot().resumed {
        return (resume.clone(), Vec::new());
    }
    let mut seen = c.until(|e| matches!(e, ServerEvent::Resumed(_))).await;
    let Some(ServerEvent::Resumed(resume)) = seen.pop() else {
        unreachable!()
    };
    (resume, seen)
}

fn names(m: &serde_json::Value, key: &str) -> Vec<String> {
    m[key]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Waits until every cell in `ids` is idle (the resume's runs included); `seen` are the
/// events read since the welcome.
async fn settled(c: &mut Client, seen: &[ServerEvent], ids: &[&str]) {
    let mut states: std::collections::HashMap<String, CellState> = c
        .snapshot()
        .cells
        .iter()
        .map(|c| (c.id.clone(), c.runtime.state))
        .collect();
    for e in seen {
        if let ServerEvent::CellState { cell_id, state, .. } = e {
            states.insert(cell_id.clone(), *state);
        }
    }
    while !ids
        .iter()
        .all(|id| states.get(*id) == Some(&CellState::Idle))
    {
        if let ServerEvent::CellState { cell_id, state, .. } = c.next().await.event {
            states.insert(cell_id, state);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigterm_and_only_what_cannot_be_saved_runs_again() {
    let shared = Shared::new();
    let first = shared.pod("a").await;
    let mut ada = Client::connect(first.addr, &shared.token()).await.unwrap();
    let (data, _) = cell(
        &mut ada,
        0,
        "import numpy as np, pandas as pd\nloads = globals().get('loads', 0) + 1\nn = 41\ns = 'text'\nitems = {'a': [1, 2], 'b': (3, 4)}",
    )
    .await;
    // `arr` (800 KB) is written by the kernel's writer thread; it comes back writable.
    let (frames, _) = cell(
        &mut ada,
        1,
        "arr = np.arange(100_000)\ndf = pd.DataFrame({'x': [1, 2, 3], 'y': ['a', 'b', 'c']})\nprint(len(df))",
    )
    .await;
    let (code, _) = cell(
        &mut ada,
        2,
        "def add(k):\n    return k + n\n\nclass Point:\n    def __init__(self, x):\n        self.x = x\n    def norm(self):\n        return abs(self.x) + n\n\np = Point(-2)",
    )
    .await;
    let (live, _) = cell(
        &mut ada,
        3,
        "import threading\nruns = globals().get('runs', 0) + 1\ngen = (i for i in range(3))\nfh = open('/proc/self/status')\nlock = threading.Lock()",
    )
    .await;
    // Workspace files: regular files come back; a link, a fifo and a tool's cache do not.
    let (files, _) = cell(
        &mut ada,
        4,
        "import os\nos.makedirs('data/raw', exist_ok=True)\nopen('data/raw/table.csv', 'w').write('a,b\\n1,2\\n')\nopen('notes.txt', 'w').write('hello')\nos.symlink('/etc/hostname', 'link')\nos.mkfifo('pipe')\nos.makedirs('.cache/x', exist_ok=True)\nopen('.cache/x/junk', 'w').write('j')",
    )
    .await;
    let manifest = shared
        .wait_manifest(|m| {
            m["names"].get("p").is_some()
                && m["recompute"].get("lock").is_some()
                && m["files"].get("notes.txt").is_some()
        })
        .await;
    let mut kept = names(&manifest, "files");
    kept.sort();
    assert_eq!(kept, ["data/raw/table.csv", "notes.txt"], "{manifest}");
    let mut recompute = names(&manifest, "recompute");
    recompute.sort();
    assert_eq!(recompute, ["fh", "gen", "lock"], "{manifest}");
    assert!(
        manifest["recompute"]["fh"]["reason"]
            .as_str()
            .unwrap()
            .contains("open file"),
        "{manifest}"
    );
    // A second collaborator is connected through the preemption: what it had seen.
    let cy = Client::connect(first.addr, &shared.token()).await.unwrap();
    let seen_by_cy: Vec<(String, serde_json::Value)> = cy
        .snapshot()
        .cells
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                serde_json::to_value(&c.runtime.outputs).unwrap(),
            )
        })
        .collect();
    assert!(
        seen_by_cy.iter().any(|(_, o)| o.to_string().contains("3")),
        "{seen_by_cy:?}"
    );
    drop(ada);
    first.signal(nix::sys::signal::Signal::SIGTERM).await;
    drop(cy);

    // A new pod: the names come back, and only the cell of what could not be saved runs.
    let second = shared.pod("b").await;
    let mut bob = Client::connect(second.addr, &shared.token()).await.unwrap();
    // Someone runs code at once, before the resume is announced: it waits for the restore and
    // for the cells run again (`lock` is rebuilt by one), instead of failing.
    let mut dan = Client::connect(second.addr, &shared.token()).await.unwrap();
    let early = dan.run("print(lock.locked(), n)").await;
    assert_eq!(early.stdout(), "False 41\n", "{:?}", early.outputs);
    let before: Vec<(String, Option<u64>, usize)> = bob
        .snapshot()
        .cells
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                c.runtime.execution_count,
                c.runtime.outputs.len(),
            )
        })
        .collect();
    let (
        Resume {
            restored,
            rerun,
            lost,
            fallback,
            files_restored,
            files_lost,
        },
        seen,
    ) = resumed(&mut bob).await;
    assert_eq!(fallback, None);
    assert_eq!((files_restored, files_lost), (2, Vec::new()));
    assert!(lost.is_empty(), "{lost:?}");
    let mut back: Vec<String> = restored.iter().flat_map(|r| r.names.clone()).collect();
    back.sort();
    for name in [
        "add", "arr", "df", "items", "loads", "n", "np", "p", "Point", "pd", "s",
    ] {
        assert!(back.contains(&name.to_owned()), "{name} not in {back:?}");
    }
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert_eq!(rerun[0].cell_id, live);
    let mut rebuilt = rerun[0].names.clone();
    rebuilt.sort();
    assert_eq!(rebuilt, ["fh", "gen", "lock"]);
    settled(&mut bob, &seen, &[&data, &frames, &code, &live, &files]).await;
    let on_disk = bob
        .run("print(repr(open('data/raw/table.csv').read()), open('notes.txt').read(), os.path.lexists('link'), os.path.exists('pipe'), os.path.exists('.cache'))")
        .await;
    assert_eq!(
        on_disk.stdout(),
        "'a,b\\n1,2\\n' hello False False False\n",
        "{:?}",
        on_disk.outputs
    );
    let check = bob
        .run("print(n, s, items, arr.sum(), arr.flags.writeable, df.y.tolist(), add(1), p.norm(), isinstance(p, Point), loads, runs, next(gen), lock.locked())")
        .await;
    assert_eq!(
        check.stdout(),
        "41 text {'a': [1, 2], 'b': (3, 4)} 4999950000 True ['a', 'b', 'c'] 42 43 True 1 2 0 False\n",
        "{:?}",
        check.outputs
    );
    // Functions restored see the live namespace, not a copy of it.
    // The collaborator comes back to the new pod: it is told of the resume, and every output
    // it had seen is there.
    let mut cy = Client::connect(second.addr, &shared.token()).await.unwrap();
    let (told, _) = resumed(&mut cy).await;
    assert_eq!(told.rerun.len(), 1, "{told:?}");
    for (id, outputs) in &seen_by_cy {
        let cell = cy.snapshot().cells.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(
            &serde_json::to_value(&cell.runtime.outputs).unwrap(),
            outputs,
            "cell {id}"
        );
    }
    let live_globals = bob.run("n = 100\nprint(add(1), p.norm())").await;
    assert_eq!(live_globals.stdout(), "101 102\n");
    // The restored cells kept their counts and outputs; only the re-run one changed.
    let now = Client::connect(second.addr, &shared.token()).await.unwrap();
    for (id, count, outputs) in &before {
        let cell = now.snapshot().cells.iter().find(|c| c.id == *id).unwrap();
        if *id == live {
            assert_ne!(cell.runtime.execution_count, *count);
        } else {
            assert_eq!(
                (cell.runtime.execution_count, cell.runtime.outputs.len()),
                (*count, *outputs),
                "cell {id}"
            );
            assert_eq!(cell.runtime.state, CellState::Idle, "cell {id}");
        }
    }
    drop(second);
}

/// Where a file named `name` is under `dir`, once something creates it.
async fn appears(dir: &std::path::Path, name: &str) -> PathBuf {
    fn find(dir: &std::path::Path, name: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if entry.file_name() == name {
                return Some(path);
            }
            if entry.file_type().is_ok_and(|t| t.is_dir())
                && let Some(found) = find(&path, name)
            {
                return Some(found);
            }
        }
        None
    }
    for _ in 0..60_000 {
        if let Some(found) = find(dir, name) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{name} did not appear under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_starts_while_a_name_is_written_stops_the_write_so_nothing_half_changed_is_kept()
 {
    let shared = Shared::new();
    let first = shared.pod("a").await;
    let mut ada = Client::connect(first.addr, &shared.token()).await.unwrap();
    // 160 MB: the kernel's writer takes a while over it once the kernel is idle.
    cell(
        &mut ada,
        0,
        "import numpy as np\nbig = np.zeros(20_000_000)",
    )
    .await;
    // While it is being written (its temporary file is there), code changes it in place.
    let writing = appears(&shared.dir.0.join("run-a"), ".big.w.tmp").await;
    let change = ada.run("big[:] = 7").await;
    assert_eq!(change.status, Some(doc_protocol::ExecutionStatus::Ok));
    // The write that was under way is thrown away; `big` is written again, changed.
    let manifest = shared
        .wait_manifest(|m| m["names"].get("big").is_some())
        .await;
    assert!(!writing.exists(), "{}", writing.display());
    shared.wait_document(1).await;
    drop(ada);
    first.signal(nix::sys::signal::Signal::SIGKILL).await;

    let second = shared.pod("b").await;
    let mut bob = Client::connect(second.addr, &shared.token()).await.unwrap();
    let (Resume { rerun, lost, .. }, _) = resumed(&mut bob).await;
    assert!(
        rerun.is_empty() && lost.is_empty(),
        "{rerun:?} {lost:?} {manifest}"
    );
    let check = bob.run("print(big.min(), big.max(), big.size)").await;
    assert_eq!(check.stdout(), "7.0 7.0 20000000\n", "{:?}", check.outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_resumes_from_the_last_cell_checkpoint_and_bad_objects_are_rebuilt() {
    let shared = Shared::new();
    let first = shared.pod("a").await;
    let mut ada = Client::connect(first.addr, &shared.token()).await.unwrap();
    let (a, _) = cell(
        &mut ada,
        0,
        "x = 6\nruns_a = globals().get('runs_a', 0) + 1",
    )
    .await;
    let (b, _) = cell(
        &mut ada,
        1,
        "y = [x] * 7\nruns_b = globals().get('runs_b', 0) + 1",
    )
    .await;
    let manifest = shared
        .wait_manifest(|m| m["names"].get("runs_b").is_some())
        .await;
    shared.wait_document(2).await;
    drop(ada);
    first.signal(nix::sys::signal::Signal::SIGKILL).await;

    // The object of `y` is damaged in the store: it must not be restored as it is.
    let sha = manifest["names"]["y"]["sha256"].as_str().unwrap();
    std::fs::write(shared.document_dir().join("objects").join(sha), b"garbage").unwrap();

    let second = shared.pod("b").await;
    let mut bob = Client::connect(second.addr, &shared.token()).await.unwrap();
    let (
        Resume {
            rerun, fallback, ..
        },
        seen,
    ) = resumed(&mut bob).await;
    assert_eq!(fallback, None);
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert_eq!(rerun[0].cell_id, b);
    assert!(rerun[0].reason.contains("corrupt"), "{rerun:?}");
    settled(&mut bob, &seen, &[&a, &b]).await;
    let check = bob.run("print(x, y, runs_a, runs_b)").await;
    assert_eq!(check.stdout(), "6 [6, 6, 6, 6, 6, 6, 6] 1 2\n");

    // A manifest that says it is another document's is refused; the cells that ran run again.
    second.signal(nix::sys::signal::Signal::SIGKILL).await;
    let path = shared.document_dir().join("manifest.json");
    let mut foreign: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    foreign["document"] = "someone-elses".into();
    std::fs::write(&path, serde_json::to_vec(&foreign).unwrap()).unwrap();
    let third = shared.pod("c").await;
    let mut cleo = Client::connect(third.addr, &shared.token()).await.unwrap();
    let (
        Resume {
            rerun, fallback, ..
        },
        seen,
    ) = resumed(&mut cleo).await;
    let fallback = fallback.expect("the foreign checkpoint is refused");
    assert!(fallback.contains("belongs to document"), "{fallback}");
    let ids: Vec<&str> = rerun.iter().map(|r| r.cell_id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    settled(&mut cleo, &seen, &[&a, &b]).await;
    assert_eq!(cleo.run("print(x, runs_a)").await.stdout(), "6 1\n");
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_empties_the_checkpoint_so_a_resume_does_not_bring_back_what_it_cleared() {
    let shared = Shared::new();
    let first = shared.pod("a").await;
    let mut ada = Client::connect(first.addr, &shared.token()).await.unwrap();
    cell(&mut ada, 0, "x = 1").await;
    shared
        .wait_manifest(|m| m["names"].get("x").is_some())
        .await;
    ada.restart().await;
    shared
        .wait_manifest(|m| m["names"].as_object().is_some_and(|n| n.is_empty()))
        .await;
    drop(ada);
    drop(first);
}

/// A checkpoint store that fails: cells keep running, clients are told once, saving retries,
/// and when the store is back the checkpoint catches up and clients are told again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_reported_retried_and_caught_up_while_cells_keep_running() {
    let shared = Shared::new();
    let pod = shared.pod("a").await;
    let mut ada = Client::connect(pod.addr, &shared.token()).await.unwrap();
    cell(&mut ada, 0, "a = 1").await;
    shared
        .wait_manifest(|m| m["names"].get("a").is_some())
        .await;
    // The store breaks: where its directory was, a file.
    let away = shared.dir.0.join("checkpoints-away");
    std::fs::rename(shared.store(), &away).unwrap();
    std::fs::write(shared.store(), b"not a directory").unwrap();
    // (Not collected: the status follows the cell's end, and collecting would pass it by.)
    let id = ada.insert_cell(1, "b = a + 1").await;
    ada.submit_cell(&id).await;
    let told = ada
        .until(|e| matches!(e, ServerEvent::CheckpointStatus { failing: true, .. }))
        .await;
    let Some(ServerEvent::CheckpointStatus { reason, .. }) = told.last() else {
        unreachable!()
    };
    assert!(
        reason.as_deref().is_some_and(|r| !r.is_empty()),
        "{reason:?}"
    );
    let (_, out) = cell(&mut ada, 2, "c = b + 1\nprint(c)").await;
    assert_eq!(out, "3\n", "the document keeps working");
    // The store comes back: the retries store what was waiting, and clients hear of it.
    std::fs::remove_file(shared.store()).unwrap();
    std::fs::rename(&away, shared.store()).unwrap();
    ada.until(|e| matches!(e, ServerEvent::CheckpointStatus { failing: false, .. }))
        .await;
    shared
        .wait_manifest(|m| ["a", "b", "c"].iter().all(|n| m["names"].get(*n).is_some()))
        .await;
    drop(pod);
}
