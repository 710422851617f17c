//! The kernel adapter: finding, launching (through the kernel agent, in its sandbox) and talking
//! to one Jupyter kernel over ZeroMQ (our own ZMTP peer, on the kernel's `ipc://` sockets or a
//! TCP connection its jail hands over), and the session actor that owns it.

mod channels;
mod heap;
mod helper;
pub mod launcher;
mod network;
mod runtime_dir;
mod session;
mod sockets;
pub mod spec;
mod wire;
mod zmtp;

use std::path::PathBuf;

pub use launcher::{AgentPid, LaunchError, LauncherSettings};
pub use runtime_dir::RuntimeDir;
pub use session::{
    AnswerSender, CommEvent, CommParent, CommReceiver, Command, EventSender, ExecOptions, Forward,
    KernelSession, Question, Quiet, Refusal, SessionHandle, SessionRefusal, SessionSettings,
    SessionSnapshot,
};
pub use spec::KernelSpec;

/// Failures of the kernel adapter.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No kernelspec of that name in any searched directory.
    #[error("kernel {name:?} not found (available: {available:?}; searched: {searched:?})")]
    KernelNotFound {
        name: String,
        available: Vec<String>,
        searched: Vec<PathBuf>,
    },
    /// A `kernel.json` exists but cannot be used.
    #[error("kernelspec {path} is invalid: {reason}")]
    BadKernelspec { path: PathBuf, reason: String },
    /// The private runtime directory could not be prepared.
    #[error("runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A kernel channel could not be opened or used.
    #[error("kernel socket {channel}: {reason}")]
    Socket {
        channel: &'static str,
        reason: String,
    },
}
