//! What the sandbox tests share: root, a uid of their own for kernels, and a kernel agent in a
//! process of its own (the Kubernetes layout).

/// The sandbox needs root, as on the fresh machines `make test` runs on.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the sandbox tests need root (the local backend's agent builds namespaces)"
    );
}

/// A uid of its own for a test binary's kernels: `base` plus this process's id (below
/// 100,000), so that test binaries running at once differ by their bases.
pub fn own_uid(base: u32) -> String {
    (base + std::process::id() % 100_000).to_string()
}

/// A kernel agent in a process of its own, listening on a socket: the Kubernetes layout (the
/// kernel container's entrypoint), here without namespaces, as an unprivileged container has
/// none.
pub struct AgentProcess {
    child: std::process::Child,
    pub socket: std::path::PathBuf,
    pub ipc: std::path::PathBuf,
}

impl AgentProcess {
    pub fn start(dir: &std::path::Path, allow_uid: u32) -> Self {
        let socket = dir.join("agent.sock");
        let ipc = dir.join("ipc");
        std::fs::create_dir_all(&ipc).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_middleman"))
            .arg("kernel-agent")
            .arg("--socket")
            .arg(&socket)
            .args(["--allow-uid", &allow_uid.to_string()])
            .arg("--ipc-dir")
            .arg(&ipc)
            .arg("--workspace")
            .arg(dir.join("work"))
            .args(["--container", "--namespaces", "off"])
            .args(["--max-open-files", "256"])
            .spawn()
            .unwrap();
        Self { child, socket, ipc }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
