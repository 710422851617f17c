//! Why the kernel session refused a command.

use crate::protocol::ErrorCode;

/// A command the session did not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    /// The kernel is dead (it kept dying, or cannot be started here).
    #[error("the kernel is dead; restart it first")]
    KernelDead,
    /// `queued` executions already wait.
    #[error("{queued} executions are already queued")]
    QueueFull { queued: usize },
    /// No prompt of that execution is waiting for an answer.
    #[error("no prompt is pending for {execution_id}")]
    NoPendingInput { execution_id: String },
    /// The prompt is for whoever ran the execution (a Jupyter client's), not for collaborators.
    #[error("this prompt is for {by}: only they can answer it")]
    PromptForOther { by: String },
    /// The session is shutting down.
    #[error("the session is shutting down")]
    ShuttingDown,
    /// The kernel is starting, restarting or dead.
    #[error("the kernel is not ready")]
    NotReady,
    /// The kernel runs a cell and has no subshell to answer a side question beside it.
    #[error("the kernel is busy running a cell")]
    Busy,
    /// Too many side questions wait for the kernel already.
    #[error("too many questions are waiting for the kernel")]
    TooManyQuestions,
}

impl SessionRefusal {
    /// The protocol's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionRefusal::KernelDead => ErrorCode::KernelDead,
            SessionRefusal::QueueFull { .. } => ErrorCode::QueueFull,
            SessionRefusal::NoPendingInput { .. } => ErrorCode::NoPendingInput,
            SessionRefusal::PromptForOther { .. } => ErrorCode::Forbidden,
            SessionRefusal::ShuttingDown
            | SessionRefusal::NotReady
            | SessionRefusal::Busy
            | SessionRefusal::TooManyQuestions => ErrorCode::Unavailable,
        }
    }
}
