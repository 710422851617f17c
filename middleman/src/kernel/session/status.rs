//! How an execution ends: what the kernel replied, adjusted by what Middleman was doing when it
//! ended (an interrupt or the time limit in progress), and whether the rest of the queue is
//! aborted with it. Pure, unit-tested.

use std::time::Duration;

use jupyter_protocol::ReplyStatus;

use crate::protocol::{ExecutionStatus, KernelState};

/// Why Middleman is stopping the running execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopCause {
    /// Someone interrupted it.
    Interrupt,
    /// It ran past its wall-clock limit.
    Timeout,
}

impl StopCause {
    /// The label of the restart it causes when the code ignores it.
    pub(super) fn label(self) -> &'static str {
        match self {
            StopCause::Interrupt => "interrupt",
            StopCause::Timeout => "timeout",
        }
    }
}

/// The status a kernel's `execute_reply` means.
pub(super) fn from_reply(status: &ReplyStatus) -> ExecutionStatus {
    match status {
        ReplyStatus::Ok => ExecutionStatus::Ok,
        ReplyStatus::Error => ExecutionStatus::Error,
        _ => ExecutionStatus::Aborted,
    }
}

/// The final status and reason of an execution that ended with `status` while `stopping` was
/// under way: an interrupted execution ends `interrupted` (however the kernel reported it), one
/// past its limit `timed_out` with the limit in the reason.
pub(super) fn resolve(
    stopping: Option<StopCause>,
    status: ExecutionStatus,
    reason: Option<String>,
    limit: Duration,
) -> (ExecutionStatus, Option<String>) {
    match (stopping, status) {
        (Some(StopCause::Interrupt), ExecutionStatus::Error | ExecutionStatus::Aborted) => {
            (ExecutionStatus::Interrupted, Some("interrupted".to_owned()))
        }
        (Some(StopCause::Interrupt), ExecutionStatus::KernelDied) => (
            ExecutionStatus::Interrupted,
            Some(reason.unwrap_or_else(|| "interrupted".into())),
        ),
        (
            Some(StopCause::Timeout),
            ExecutionStatus::Error | ExecutionStatus::Aborted | ExecutionStatus::KernelDied,
        ) => (
            ExecutionStatus::TimedOut,
            Some(format!(
                "the execution ran longer than its limit of {} s{}",
                limit.as_secs(),
                reason.map(|r| format!("; {r}")).unwrap_or_default()
            )),
        ),
        (_, s) => (s, reason),
    }
}

/// Whether an execution that ended `status` aborts everything queued behind it.
pub(super) fn stops_the_queue(status: ExecutionStatus, stop_on_error: bool) -> bool {
    match status {
        ExecutionStatus::Error => stop_on_error,
        ExecutionStatus::Interrupted | ExecutionStatus::TimedOut => true,
        _ => false,
    }
}

pub(super) fn status_label(s: ExecutionStatus) -> &'static str {
    match s {
        ExecutionStatus::Ok => "ok",
        ExecutionStatus::Error => "error",
        ExecutionStatus::Aborted => "aborted",
        ExecutionStatus::Interrupted => "interrupted",
        ExecutionStatus::TimedOut => "timed_out",
        ExecutionStatus::KernelDied => "kernel_died",
    }
}

pub(super) fn state_label(s: KernelState) -> &'static str {
    match s {
        KernelState::Starting => "starting",
        KernelState::Idle => "idle",
        KernelState::Busy => "busy",
        KernelState::Restarting => "restarting",
        KernelState::Dead => "dead",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutionStatus::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// Under way, the kernel's status, the reason so far; the status and reason wanted.
    type Case = (
        Option<StopCause>,
        ExecutionStatus,
        Option<String>,
        ExecutionStatus,
        Option<&'static str>,
    );

    #[test]
    fn replies() {
        assert_eq!(from_reply(&ReplyStatus::Ok), Ok);
        assert_eq!(from_reply(&ReplyStatus::Error), Error);
        assert_eq!(from_reply(&ReplyStatus::Aborted), Aborted);
    }

    #[test]
    fn resolution_table() {
        let died = || Some("the kernel was killed (SIGKILL)".to_owned());
        let cases: &[Case] = &[
            // Nothing under way: the kernel's word stands.
            (None, Ok, None, Ok, None),
            (None, Error, None, Error, None),
            (
                None,
                KernelDied,
                died(),
                KernelDied,
                Some("the kernel was killed (SIGKILL)"),
            ),
            // An interrupt: whatever the kernel says about it, it was interrupted.
            (
                Some(StopCause::Interrupt),
                Error,
                None,
                Interrupted,
                Some("interrupted"),
            ),
            (
                Some(StopCause::Interrupt),
                Aborted,
                None,
                Interrupted,
                Some("interrupted"),
            ),
            (
                Some(StopCause::Interrupt),
                KernelDied,
                died(),
                Interrupted,
                Some("the kernel was killed (SIGKILL)"),
            ),
            (
                Some(StopCause::Interrupt),
                KernelDied,
                None,
                Interrupted,
                Some("interrupted"),
            ),
            // It finished just as the interrupt came: it finished.
            (Some(StopCause::Interrupt), Ok, None, Ok, None),
            // The time limit: timed out, with the limit, and why it ended if it did.
            (
                Some(StopCause::Timeout),
                Error,
                None,
                TimedOut,
                Some("the execution ran longer than its limit of 60 s"),
            ),
            (
                Some(StopCause::Timeout),
                KernelDied,
                died(),
                TimedOut,
                Some(
                    "the execution ran longer than its limit of 60 s; the kernel was killed (SIGKILL)",
                ),
            ),
            (Some(StopCause::Timeout), Ok, None, Ok, None),
        ];
        for (stopping, status, reason, want, want_reason) in cases {
            let got = resolve(*stopping, *status, reason.clone(), LIMIT);
            assert_eq!(
                got,
                (*want, want_reason.map(str::to_owned)),
                "{stopping:?} {status:?}"
            );
        }
    }

    #[test]
    fn what_stops_the_queue() {
        assert!(stops_the_queue(Error, true));
        assert!(!stops_the_queue(Error, false));
        assert!(stops_the_queue(Interrupted, false));
        assert!(stops_the_queue(TimedOut, false));
        for s in [Ok, Aborted, KernelDied] {
            assert!(!stops_the_queue(s, true), "{s:?}");
        }
    }
}
