//! The kernel's sandbox, attacked from cells as a stranger would, on the local backend's set-up
//! (a root Middleman whose agent jails each kernel). Every attack runs in both modes: the
//! kernel under a uid of its own, and forced uid-0 operation (uid 0 without any privilege).
//! And what people do all day still works inside: plots, frames, `input()`, interrupts,
//! restarts, files in the workspace, and the memory, disk and process limits say so when hit.
//!
//! One file over 500 lines: the attack battery is one list, run against one set-up in both modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::agent::{AgentProcess, own_uid, require_root};
use common::*;
use middleman::protocol::{ExecutionStatus, Output, ServerEvent};
use session_token::Role;

/// Where a server's kernel ipc directory is on the host.
fn ipc_dir(server: &TestServer) -> std::path::PathBuf {
    let run = std::fs::read_dir(&server.dir.0)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .expect("runtime root")
        .path();
    let rt = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("mm-"))
        .expect("runtime dir")
        .path();
    rt.join("ipc")
}

/// Runs `code`, which prints one `name: ok ...` or `name: LEAK ...` line per check, and
/// fails listing every leak.
async fn expect_no_leaks(c: &mut Client, code: &str) -> String {
    let run = c.run(code).await;
    let errors: Vec<&Output> = run
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::Error { .. }))
        .collect();
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{errors:?}");
    let out = run.stdout();
    let leaks: Vec<&str> = out.lines().filter(|l| l.contains("LEAK")).collect();
    assert!(
        leaks.is_empty(),
        "the sandbox leaked:\n{}\n\nall:\n{out}",
        leaks.join("\n")
    );
    // Every check reported (a check that raised would be missing, not passing).
    let checks: std::collections::BTreeSet<&str> = code
        .split("report(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let checks = checks.len();
    let reported = out.lines().filter(|l| l.contains(": ok")).count();
    assert_eq!(reported, checks, "some checks did not report:\n{out}");
    out
}

/// Python helpers every attack uses.
const PRELUDE: &str = r#"
import os, socket, ctypes, errno, signal, sysconfig
libc = ctypes.CDLL(None, use_errno=True)
def report(name, leak):
    print(f"{name}: LEAK {leak}" if leak else f"{name}: ok")
def read(path):
    try:
        with open(path, 'rb') as f:
            return f"read {len(f.read())} bytes of {path}"
    except OSError:
        return None
def write(path, data=b'x'):
    try:
        with open(path, 'ab') as f:
            f.write(data)
        return f"wrote {path}"
    except OSError:
        return None
def syscall_refused(nr, *args, want=errno.EPERM):
    r = libc.syscall(nr, *args)
    e = ctypes.get_errno()
    return None if r == -1 and e == want else f"syscall {nr} returned {r} errno {e}"
"#;

async fn attack_battery(mode: &[&str]) {
    require_root();
    let host = TempDir::new("host-secrets");
    let secret = host.0.join("signing.pem");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .unwrap();
        f.write_all(b"SECRET-KEY").unwrap();
    }
    let world = host.0.join("world.txt");
    std::fs::write(&world, "anyone on the host may read this").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let unix_path = host.0.join("host.sock");
    let _unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
    let abstract_name = format!("nbplat-test-{}", uuid::Uuid::new_v4().simple());
    let _abstract = {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let marker = format!("nbplat-attack-{}", uuid::Uuid::new_v4().simple());

    let victim = TestServer::start(mode).await;
    let attacker = TestServer::start(mode).await;
    let victim_ipc = ipc_dir(&victim);
    let victim_docs = victim.dir.0.join("docs");
    let mut v = victim.client("victim", Role::Editor).await;
    assert_eq!(
        v.run("victim_state = 42").await.status,
        Some(ExecutionStatus::Ok)
    );
    // The victim's document is saved before the attack.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut a = attacker.client("mallory", Role::Editor).await;

    let code = format!(
        r#"{PRELUDE}
# Secrets of the host: the signing key, any file, the repository, other pods and documents.
report("signing key", read({secret:?}))
report("world-readable host file", read({world:?}))
report("repository", os.path.exists({repo:?}) and "the repository is visible")
report("other pod's connection file", read({victim_ipc:?} + "/kernel-1.json"))
try:
    listing = os.listdir({victim_ipc:?})
    report("other pod's ipc directory", f"listed {{listing}}")
except OSError:
    report("other pod's ipc directory", None)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({victim_ipc:?} + "/k1-1")
    report("other kernel's shell socket", "connected")
except OSError:
    report("other kernel's shell socket", None)
try:
    docs = os.listdir({victim_docs:?})
    report("saved documents", f"listed {{docs}}")
except OSError:
    report("saved documents", None)
report("write a saved document", write({victim_docs:?} + "/planted.json"))
# What serves the kernel: its environment, its processes, its command lines.
leaked = [k for k in ("CARGO_MANIFEST_DIR", "CARGO", "JUPYTER_PATH", "RUST_LOG", "NBP_CACHE") if k in os.environ]
report("inherited environment", leaked and f"sees {{leaked}}")
others = []
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            cmd = open(f'/proc/{{p}}/cmdline', 'rb').read()
        except OSError:
            continue
        if b'middleman' in cmd or b'cargo' in cmd or b'sandbox-' in cmd:
            others.append((p, cmd[:80]))
report("host processes", others and f"sees {{others}}")
try:
    os.kill({test_pid}, 0)
    report("signal the host", f"process {test_pid} is reachable")
except OSError:
    report("signal the host", None)
# kill(-1) reaches every process the caller may signal: only its own jail.
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
report("kill(-1) survived", None)
# Code every later kernel would run.
purelib = sysconfig.get_paths()['purelib']
report("plant a .pth in the shared environment", write(purelib + '/zz_planted.pth', b'import os\n'))
report("plant in the shared IPython startup", write('/root/.ipython/profile_default/startup/00-planted.py', b'print(1)\n'))
report("plant in the kernelspec", write(os.path.dirname(purelib) + '/../../share/jupyter/kernels/python3/kernel.json', b' '))
report("rewrite the system", write('/usr/lib/planted'))
report("rewrite /etc/passwd", write('/etc/passwd'))
# Limits it could raise, and the kernel surface.
report("cgroup filesystem", os.path.exists('/sys/fs/cgroup') and "visible")
report("sysfs", os.path.exists('/sys/kernel') and "visible")
report("write /proc/sys", write('/proc/sys/kernel/hostname'))
report("sysrq", write('/proc/sysrq-trigger', b'h'))
report("kernel memory", read('/proc/kcore'))
report("block devices", (os.path.exists('/dev/vda') or os.path.exists('/dev/sda') or os.path.exists('/dev/mem')) and "visible")
report("user namespace", syscall_refused(272, 0x10000000))
report("mount", syscall_refused(165, b"none", b"/tmp", b"tmpfs", 0, None))
report("setns", syscall_refused(308, 0, 0))
report("io_uring", syscall_refused(425, 1, ctypes.create_string_buffer(256)))
report("keyctl", syscall_refused(250, 0, 0, 0))
report("bpf", syscall_refused(321, 0, 0, 0))
report("ptrace", syscall_refused(101, 0, 0, 0, 0))
report("perf events", syscall_refused(298, 0, 0, -1, -1, 0))
report("kexec", syscall_refused(246, 0, 0, 0, 0))
report("clone3", syscall_refused(435, 0, 0, want=errno.ENOSYS))
status = open('/proc/self/status').read()
caps = [l for l in status.splitlines() if l.startswith(('CapEff', 'CapPrm', 'CapAmb', 'CapBnd')) and not l.endswith('0000000000000000')]
report("capabilities", caps and f"holds {{caps}}")
report("no_new_privs", 'NoNewPrivs:\t1' not in status and "unset")
report("seccomp", 'Seccomp:\t2' not in status and "no filter")
# The network and every socket outside the jail.
try:
    socket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)
    report("host loopback", "connected")
except OSError:
    report("host loopback", None)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({unix_path:?})
    report("host unix socket", "connected")
except OSError:
    report("host unix socket", None)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0" + {abstract_name:?})
    report("host abstract socket", "connected")
except OSError:
    report("host abstract socket", None)
try:
    socket.socket().bind(('0.0.0.0', 8888))
    l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
    report("listen on a port", "listening")
except OSError:
    report("listen on a port", None)
report("host name", socket.gethostname() != 'kernel' and socket.gethostname())
# Socket files in the ipc directory (the only thing Landlock lets it make there) are bounded.
made = []
try:
    for i in range(2000):
        p = f'/run/nbplat/ipc/flood-{{i}}'
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(p)
        s.close()
        made.append(p)
    report("socket files in the ipc directory", f"made {{len(made)}}")
except OSError:
    report("socket files in the ipc directory", None)
for p in made:
    os.remove(p)
# A private /tmp; the workspace is its own.
report("private tmp", write('/tmp/{marker}', b'x') is None and "cannot write its own /tmp")
report("home", write(os.path.expanduser('~/{marker}'), b'x') is None and "cannot write its home")
"#,
        secret = secret.display().to_string(),
        world = world.display().to_string(),
        repo = env!("CARGO_MANIFEST_DIR"),
        victim_ipc = victim_ipc.display().to_string(),
        victim_docs = victim_docs.display().to_string(),
        test_pid = std::process::id(),
        unix_path = unix_path.display().to_string(),
    );
    let out = expect_no_leaks(&mut a, &code).await;
    assert!(out.contains("kill(-1) survived: ok"), "{out}");
    drop(tcp);

    // Its own uid, when given one.
    let uid = a.run("import os\nprint(os.getuid())").await.stdout();
    match mode.iter().position(|m| *m == "--kernel-uid") {
        Some(i) => assert_eq!(uid.trim(), mode[i + 1]),
        None => assert_eq!(uid.trim(), "0"),
    }
    // The host's /tmp and the victim's did not get the attacker's file.
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
    let seen = v
        .run(&format!(
            "import os\nprint(os.path.exists('/tmp/{marker}'))"
        ))
        .await;
    assert_eq!(seen.stdout(), "False\n");
    // The victim's kernel, state and saved document are untouched.
    assert_eq!(v.run("print(victim_state)").await.stdout(), "42\n");
    assert!(!victim_docs.join("planted.json").exists());
    let planted = std::fs::read_dir(&victim_ipc).unwrap().count();
    assert!(
        planted <= 12,
        "{planted} files in the victim's ipc directory"
    );
    // The attacker's Middleman still serves.
    assert_eq!(a.run("print(6 * 7)").await.stdout(), "42\n");
    attacker.stop().await;
    victim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_fail_with_an_own_uid() {
    let uid = own_uid(300_000);
    attack_battery(&["--kernel-uid", &uid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_fail_as_uid_0() {
    attack_battery(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_the_document() {
    require_root();
    let token = format!("300.{}", std::process::id());
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // A daemon that leaves the kernel's process group and session.
    let code = format!(
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '{token}'])\n    os._exit(0)\nos.wait()\nprint('spawned')"
    );
    assert_eq!(c.run(&code).await.stdout(), "spawned\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sleeping(&token) {
        assert!(std::time::Instant::now() < deadline, "the daemon never ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;
    // Stopping Middleman ends the jail and everything in it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sleeping(&token) {
        assert!(
            std::time::Instant::now() < deadline,
            "a process outlived its document"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Whether a `sleep <token>` runs anywhere on the host.
fn sleeping(token: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c);
            c.starts_with("sleep\0") && c.contains(token)
        }) && !std::fs::read_to_string(e.path().join("stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_and_cleaned_up() {
    require_root();
    let token = format!("301.{}", std::process::id());
    let server = TestServer::start(&["--kernel-max-processes", "48"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // Children leave the kernel's process group (setsid): only the jail finds them.
    let bomb = format!(
        "import os, time\nkids = 0\ntry:\n    for i in range(1000):\n        pid = os.fork()\n        if pid == 0:\n            os.setsid(); os.execv('/bin/sleep', ['sleep', '{token}'])\n        kids += 1\nexcept OSError as e:\n    print('refused', type(e).__name__)\nprint(kids)"
    );
    let run = c.run(&bomb).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    let out = run.stdout();
    assert!(
        out.starts_with("refused BlockingIOError"),
        "the fork bomb was not stopped: {out}"
    );
    let kids: usize = out.lines().nth(1).unwrap_or("0").trim().parse().unwrap();
    assert!(kids > 0 && kids < 48, "{kids} children");
    assert!(sleeping(&token));
    // The kernel still answers (with its budget spent it may not start threads, so the cell may
    // fail), and the server is unaffected.
    assert!(c.run("1+1").await.status.is_some());
    // Restarting the kernel takes every escaped child with it.
    c.restart().await;
    assert!(!sleeping(&token), "escaped children survived the restart");
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_disk_and_tmp_limits_are_reported_when_hit() {
    require_root();
    let uid = own_uid(300_000);
    // 512 MiB is enough to start and work (an address-space limit of that size was not).
    let server = TestServer::start(&[
        "--kernel-uid",
        &uid,
        "--kernel-memory-mib",
        "512",
        "--workspace-quota-mib",
        "32",
        "--kernel-tmp-mib",
        "16",
    ])
    .await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = c
        .run("import pandas as pd\nprint(pd.DataFrame({'a': [1, 2]}).a.sum())")
        .await;
    assert_eq!(run.stdout(), "3\n", "{run:?}");
    // The workspace has its quota: a clear error in the cell, and the kernel lives on.
    let fill = |path: &str| {
        format!(
            "try:\n    with open('{path}', 'wb') as f:\n        for _ in range(64):\n            f.write(b'x' * (1 << 20))\n    print('wrote it all')\nexcept OSError as e:\n    print('refused', e.strerror)"
        )
    };
    assert_eq!(
        c.run(&fill("/home/kernel/big")).await.stdout(),
        "refused No space left on device\n"
    );
    assert_eq!(
        c.run(&fill("/tmp/big")).await.stdout(),
        "refused No space left on device\n"
    );
    // Freeing space makes it usable again.
    let again = c
        .run("import os\nos.remove('/home/kernel/big')\nopen('/home/kernel/small', 'w').write('ok')\nprint(open('/home/kernel/small').read())")
        .await;
    assert_eq!(again.stdout(), "ok\n");
    // Memory past the limit stops the kernel and says why; the next kernel works.
    let run = c
        .run("x = bytearray(1 << 30)\nfor i in range(0, len(x), 4096): x[i] = 1")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::KernelDied), "{run:?}");
    let reason = run.reason.unwrap_or_default();
    assert!(
        reason.contains("used more than its memory limit of 512 MiB"),
        "{reason}"
    );
    c.until(|e| {
        matches!(
            e,
            ServerEvent::KernelStatus {
                state: middleman::protocol::KernelState::Idle,
                ..
            }
        )
    })
    .await;
    // Files in the workspace outlive the kernel.
    assert_eq!(
        c.run("print(open('/home/kernel/small').read())")
            .await
            .stdout(),
        "ok\n"
    );
    // A plain kill is not called a memory problem.
    let run = c
        .run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::KernelDied));
    let reason = run.reason.unwrap_or_default();
    assert!(
        reason.contains("SIGKILL") && !reason.contains("memory"),
        "{reason}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyday_work_runs_in_the_sandbox() {
    require_root();
    let uid = own_uid(300_000);
    let server = TestServer::start(&["--kernel-uid", &uid, "--kernel-memory-mib", "1024"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // A plot, shown and saved to the workspace.
    let run = c
        .run("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.savefig('plot.png')\nplt.show()")
        .await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    assert!(
        run.outputs.iter().any(
            |o| matches!(o, Output::DisplayData { data, .. } if data.contains_key("image/png"))
        ),
        "{run:?}"
    );
    // A frame, shown as a table.
    let run = c
        .run("import pandas as pd\ndf = pd.DataFrame({'x': range(3), 'y': list('abc')})\ndf")
        .await;
    assert!(
        run.outputs.iter().any(
            |o| matches!(o, Output::ExecuteResult { data, .. } if data.contains_key("text/html"))
        ),
        "{run:?}"
    );
    // Files in the workspace, listed from the kernel's home.
    let run = c
        .run("import os\nprint(os.getcwd(), sorted(os.listdir('.')))")
        .await;
    assert!(run.stdout().starts_with("/home/kernel ["), "{run:?}");
    assert!(run.stdout().contains("plot.png"), "{run:?}");
    // input()
    let id = c
        .submit("name = input('who? ')\nprint('hello', name)")
        .await;
    let events = c
        .until(|e| matches!(e, ServerEvent::InputRequest { .. }))
        .await;
    let Some(ServerEvent::InputRequest { execution_id, .. }) = events.last() else {
        panic!("no prompt: {events:?}");
    };
    c.send(&middleman::protocol::ClientMessage::InputReply {
        execution_id: execution_id.clone(),
        value: "ada".into(),
    })
    .await;
    assert_eq!(c.collect(&id).await.stdout(), "hello ada\n");
    // An interrupt stops a loop and keeps the kernel.
    let id = c
        .submit("print('looping', flush=True)\nwhile True: pass")
        .await;
    c.until(|e| matches!(e, ServerEvent::Output { .. })).await;
    c.send(&middleman::protocol::ClientMessage::Interrupt).await;
    assert_eq!(
        c.collect(&id).await.status,
        Some(ExecutionStatus::Interrupted)
    );
    assert_eq!(c.run("print(len(df))").await.stdout(), "3\n");
    // A restart clears the state, keeps the files.
    c.restart().await;
    let run = c
        .run("import os\nprint('df' in globals(), os.path.exists('plot.png'))")
        .await;
    assert_eq!(run.stdout(), "False True\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_layout_holds_without_namespaces() {
    require_root();
    let dir = TempDir::new("agent-layout");
    let agent = AgentProcess::start(&dir.0, nix::unistd::geteuid().as_raw());
    // Not under /tmp (nor the target directory, which a checkout under /tmp puts there):
    // without namespaces the kernel's /tmp is the host's here (in a pod it is the kernel
    // container's own).
    let secret_dir = std::path::Path::new("/var/tmp");
    std::fs::create_dir_all(secret_dir).unwrap();
    let secret = secret_dir.join(format!(
        "nbplat-middleman-secret-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&secret, "only Middleman reads this").unwrap();
    let socket = agent.socket.display().to_string();
    let ipc = agent.ipc.display().to_string();
    let server = TestServer::start(&["--kernel-agent", &socket, "--kernel-ipc-dir", &ipc]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // The pod's network is shared with Middleman, and Middleman's container is another
    // process tree: Landlock, seccomp and no privileges are what stand between them.
    let code = format!(
        r#"{PRELUDE}
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2)
    report("Middleman's port", "connected")
except OSError:
    report("Middleman's port", None)
report("Middleman's files", read({secret:?}))
try:
    os.kill({middleman}, 0)
    report("signal Middleman", "reachable")
except OSError:
    report("signal Middleman", None)
report("user namespace", syscall_refused(272, 0x10000000))
report("ptrace", syscall_refused(101, 0, 0, 0, 0))
status = open('/proc/self/status').read()
report("no_new_privs", 'NoNewPrivs:\t1' not in status and "unset")
caps = [l for l in status.splitlines() if l.startswith(('CapEff', 'CapPrm')) and not l.endswith('0000000000000000')]
report("capabilities", caps and f"holds {{caps}}")
"#,
        port = server.addr.port(),
        secret = secret.display().to_string(),
        middleman = std::process::id(),
    );
    expect_no_leaks(&mut c, &code).await;
    // Interrupts and restarts go through the agent too.
    let id = c
        .submit("print('looping', flush=True)\nwhile True: pass")
        .await;
    c.until(|e| matches!(e, ServerEvent::Output { .. })).await;
    c.send(&middleman::protocol::ClientMessage::Interrupt).await;
    assert_eq!(
        c.collect(&id).await.status,
        Some(ExecutionStatus::Interrupted)
    );
    c.restart().await;
    assert_eq!(c.run("print(1 + 1)").await.stdout(), "2\n");
    server.stop().await;
    let _ = std::fs::remove_file(&secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_only_middlemans_uid() {
    require_root();
    let dir = TempDir::new("agent-uid");
    // An agent that expects another uid than ours (Middleman's in a pod is 10001).
    let agent = AgentProcess::start(&dir.0, 4242);
    let (events, _rx) = tokio::sync::mpsc::channel(4);
    let refused = kernel_sandbox::Agent::open(
        &kernel_sandbox::AgentTarget::Socket(agent.socket.clone()),
        events,
    )
    .await;
    assert!(refused.is_err(), "a process of another uid was served");
}

/// A plan without network says so at once: `%pip install`, `!pip install`, a lookup and a
/// connection fail with the plan's note instead of retrying and blaming the kernel; what needs
/// no network (`%pip list`, `!echo`) still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_is_said_plainly() {
    require_root();
    let server = TestServer::start(&["--plan-note", "Team plans can reach PyPI."]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let refused = |run: &common::Run| {
        run.outputs.iter().any(|o| {
            // urllib wraps it in a URLError, with the message.
            matches!(o, Output::Error { evalue, .. }
                if evalue.contains("This notebook has no network")
                    && evalue.contains("Team plans can reach PyPI."))
        })
    };
    for code in [
        "%pip install surely-not-installed-package",
        "!pip install surely-not-installed-package",
        "!python -m pip install --upgrade numpy",
        "import urllib.request\nurllib.request.urlopen('https://pypi.org/simple/', timeout=60)",
        "import socket\nsocket.create_connection(('1.1.1.1', 443), timeout=60)",
    ] {
        let run = c.run(code).await;
        assert_eq!(run.status, Some(ExecutionStatus::Error), "{code}");
        assert!(refused(&run), "{code}: {:?}", run.stdout());
    }
    // A package the environment lacks says it cannot be installed here, and stays catchable.
    let run = c.run("import surely_not_installed_module").await;
    assert!(
        run.outputs
            .iter()
            .any(|o| matches!(o, Output::Error { ename, evalue, .. }
            if ename == "ModuleNotFoundError"
                && evalue.contains("'surely_not_installed_module'")
                && evalue.contains("no network to install it")
                && evalue.contains("Team plans can reach PyPI."))),
        "{:?}",
        run.stdout()
    );
    let run = c
        .run("try:\n    import surely_not_installed_module\nexcept ImportError:\n    print('caught')")
        .await;
    assert_eq!(run.stdout(), "caught\n", "{run:?}");
    let run = c.run("%pip list").await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");
    assert!(run.stdout().contains("ipykernel"), "{run:?}");
    // Shell commands run through a pseudo-terminal of the jail's own.
    let run = c.run("!echo shell ok").await;
    assert_eq!(run.stdout().trim_end(), "shell ok", "{run:?}");
    server.stop().await;
}
