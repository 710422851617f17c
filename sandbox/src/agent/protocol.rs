//! What Middleman and the kernel agent say to each other: one JSON object per line over a unix
//! stream socket (a socket pair when Middleman starts the agent itself, a listening socket in
//! the pod's shared ipc volume on Kubernetes). Plain data, no I/O.

use serde::{Deserialize, Serialize};

use crate::layers::Report;

/// Longest line either side accepts; longer lines end the connection.
pub const MAX_LINE: usize = 256 * 1024;

/// Middleman to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start generation `generation` of the kernel. The agent writes `connection` (the
    /// connection file's JSON) as `connection_file` in the ipc directory, owned by the kernel's
    /// user; `argv` names it by its path inside the jail (the `ipc_dir` of [`Event::Ready`]).
    /// `env` is added to the jail's own (home, path, locale); nothing of the agent's or
    /// Middleman's environment reaches the kernel.
    Start {
        generation: u64,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        connection_file: String,
        connection: String,
        /// For a kernel that speaks TCP only: socket file names in the ipc directory, each
        /// bridged to the loopback port the kernel listens on (`kernel_sandbox::bridge`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bridges: Vec<(String, u16)>,
    },
    /// Send a signal to the generation's processes (interrupts: `SIGINT`).
    Signal { generation: u64, signal: i32 },
    /// Kill every process of the generation.
    Kill { generation: u64 },
}

/// Agent to Middleman.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Sent once, first: what holds, and where the kernel sees its ipc directory.
    Ready {
        report: Report,
        /// The ipc directory as the kernel sees it.
        ipc_dir: String,
        /// The kernel's home (its workspace) as the kernel sees it.
        home: String,
    },
    /// The generation's kernel process is running.
    Started { generation: u64 },
    /// The generation could not be started.
    StartFailed { generation: u64, reason: String },
    /// The generation's kernel ended.
    Exited { generation: u64, exit: KernelExit },
}

/// How a kernel ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelExit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// It was killed for using more than its memory limit.
    pub out_of_memory: bool,
    /// The memory limit, MiB (for the message), when one was set.
    pub memory_limit_mib: Option<u64>,
    /// The end of what it wrote to stderr.
    pub stderr_tail: String,
}

impl KernelExit {
    /// A person-readable cause.
    pub fn describe(&self) -> String {
        if self.out_of_memory {
            return match self.memory_limit_mib {
                Some(mib) => format!(
                    "the kernel used more than its memory limit of {mib} MiB and was stopped"
                ),
                None => "the kernel used more than its memory limit and was stopped".into(),
            };
        }
        if let Some(code) = self.code {
            return format!("the kernel process exited with code {code}");
        }
        match self.signal {
            Some(9) => "the kernel was killed (SIGKILL)".into(),
            Some(11) => "the kernel crashed (segmentation fault)".into(),
            Some(6) => "the kernel aborted (SIGABRT)".into(),
            Some(31) => "the kernel made a system call the sandbox forbids (SIGSYS)".into(),
            Some(sig) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                format!("the kernel was terminated by signal {sig} ({name})")
            }
            None => "the kernel exited".into(),
        }
    }

    /// The last non-empty line of stderr, shortened, for death reports.
    pub fn hint(&self) -> Option<String> {
        self.stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().chars().take(300).collect())
    }
}

/// Encodes one message as a line.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_lines() {
        let r = Request::Start {
            generation: 3,
            argv: vec!["python".into(), "-m".into(), "ipykernel".into()],
            env: vec![("A".into(), "b".into())],
            connection_file: "kernel-3.json".into(),
            connection: "{}".into(),
            bridges: vec![("k3-1".into(), 40_001)],
        };
        let line = encode(&r);
        assert_eq!(line.last(), Some(&b'\n'));
        let back: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
        let e = Event::Exited {
            generation: 3,
            exit: KernelExit {
                signal: Some(9),
                out_of_memory: true,
                memory_limit_mib: Some(512),
                ..KernelExit::default()
            },
        };
        let back: Event = serde_json::from_slice(&encode(&e)).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn causes_read_well() {
        let oom = KernelExit {
            signal: Some(9),
            out_of_memory: true,
            memory_limit_mib: Some(512),
            ..KernelExit::default()
        };
        assert_eq!(
            oom.describe(),
            "the kernel used more than its memory limit of 512 MiB and was stopped"
        );
        let killed = KernelExit {
            signal: Some(9),
            ..KernelExit::default()
        };
        assert_eq!(killed.describe(), "the kernel was killed (SIGKILL)");
        let code = KernelExit {
            code: Some(3),
            stderr_tail: "Traceback\nValueError: boom\n\n".into(),
            ..KernelExit::default()
        };
        assert_eq!(code.describe(), "the kernel process exited with code 3");
        assert_eq!(code.hint().as_deref(), Some("ValueError: boom"));
    }
}
