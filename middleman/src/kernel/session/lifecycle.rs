//! The kernel's lifecycle: starting a generation through the agent, stopping it, and the one
//! restart path every cause takes (a death, a kernel that ignored an interrupt, a person's
//! request). Which restarts wait and when the kernel is given up is [`CrashWindow`]'s decision,
//! pure and unit-tested.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use super::status::StopCause;
use super::{Actor, Phase};
use crate::kernel::launcher::{LaunchError, Launched};
use crate::kernel::sockets::{self, KernelEvent, StartupError, Tagged};
use crate::protocol::{ExecutionStatus, KernelState};

/// Why the kernel restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Restart {
    /// It died, could not start, or stopped answering: `cause` labels the metric.
    Lost { cause: &'static str, reason: String },
    /// It did not stop within the grace period after an interrupt or the time limit.
    Unresponsive(StopCause),
    /// Someone asked for it.
    Requested { by: String },
}

/// What to do after a kernel was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Start again after this pause (longer the more it died recently, so a kernel that dies
    /// at start does not spin).
    After(Duration),
    /// It died this many times within the window: show it dead until someone restarts it.
    GiveUp(usize),
}

/// Deaths within the restart window.
#[derive(Debug, Clone)]
pub(super) struct CrashWindow {
    deaths: VecDeque<Instant>,
    max_restarts: u32,
    window: Duration,
}

impl CrashWindow {
    pub(super) fn new(max_restarts: u32, window: Duration) -> Self {
        Self {
            deaths: VecDeque::new(),
            max_restarts,
            window,
        }
    }

    /// Records a death at `now` and decides.
    pub(super) fn record(&mut self, now: Instant) -> Recovery {
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.deaths.pop_front();
        }
        let n = self.deaths.len();
        if n > self.max_restarts as usize {
            Recovery::GiveUp(n)
        } else {
            Recovery::After(Duration::from_millis(200 * (1u64 << n.min(5))))
        }
    }

    /// A person's restart starts the count afresh.
    pub(super) fn forgive(&mut self) {
        self.deaths.clear();
    }

    pub(super) fn window(&self) -> Duration {
        self.window
    }
}

impl Actor {
    /// Starts the next generation through the agent and connects to it in the background.
    pub(super) async fn start_kernel(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.restart_at = None;
        let Launched { endpoints } =
            match self.launcher.launch(&self.settings.spec, generation).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::error!(%error, "kernel launch failed");
                    if matches!(error, LaunchError::Level { .. }) {
                        // Retrying cannot help: the host does not give what the plan requires.
                        self.set_state(
                            KernelState::Dead,
                            Some(format!("the kernel cannot be started: {error}")),
                        );
                        return;
                    }
                    self.restart(Restart::Lost {
                        cause: "launch_failed",
                        reason: format!("the kernel could not be started: {error}"),
                    })
                    .await;
                    return;
                }
            };
        let tx = self.kernel_tx.clone();
        let timeout = self.settings.startup_timeout;
        let max_message = usize::try_from(self.settings.max_output_bytes).unwrap_or(usize::MAX);
        let starter = tokio::spawn(
            async move {
                let result = match tokio::time::timeout(
                    timeout,
                    sockets::connect(&endpoints, generation, tx.clone(), max_message),
                )
                .await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(StartupError::Connect(e)),
                    Err(_) => Err(StartupError::Timeout(timeout)),
                };
                let _ = tx
                    .send(Tagged {
                        generation,
                        event: KernelEvent::Started(result),
                    })
                    .await;
            }
            .in_current_span(),
        );
        self.phase = Phase::Starting {
            tasks: vec![starter.abort_handle()],
        };
    }

    /// Has the agent kill the generation's jail and forgets its tasks; later events of this
    /// generation are ignored.
    pub(super) fn stop_kernel(&mut self) {
        self.waiting.clear();
        match std::mem::replace(&mut self.phase, Phase::Down) {
            Phase::Down => {}
            Phase::Starting { tasks } | Phase::Ready { tasks, .. } => {
                // The agent kills the whole jail (its PID namespace and cgroup).
                self.launcher.kill(self.generation);
                for t in tasks {
                    t.abort();
                }
            }
        }
        self.generation += 1;
    }

    /// The one way a kernel restarts: stop it, end what ran and what waited with the reason,
    /// then start again at once (a person's request, an unresponsive kernel) or after a pause
    /// (a death), unless it keeps dying.
    pub(super) async fn restart(&mut self, why: Restart) {
        let (label, ended, reason) = match &why {
            Restart::Lost { cause, reason } => {
                tracing::warn!(cause, %reason, "kernel lost");
                (*cause, ExecutionStatus::KernelDied, reason.clone())
            }
            Restart::Unresponsive(cause) => {
                tracing::warn!(?cause, "kernel ignored the interrupt; restarting it");
                (
                    cause.label(),
                    ExecutionStatus::KernelDied,
                    format!(
                        "the code did not stop within {} s of the interrupt, so the kernel was restarted",
                        self.settings.interrupt_grace.as_secs_f64()
                    ),
                )
            }
            Restart::Requested { by } => {
                tracing::info!(%by, "restart requested");
                (
                    "requested",
                    ExecutionStatus::Aborted,
                    format!("the kernel was restarted by {by}"),
                )
            }
        };
        metrics::counter!("middleman_kernel_restarts_total", "cause" => label).increment(1);
        self.stop_kernel();
        self.finish_current(ended, Some(reason.clone()));
        let recovery = match why {
            Restart::Lost { .. } => {
                self.abort_queue("the kernel restarted");
                self.crashes.record(Instant::now())
            }
            Restart::Unresponsive(_) => {
                self.abort_queue(&reason);
                Recovery::After(Duration::ZERO)
            }
            Restart::Requested { .. } => {
                self.abort_queue(&reason);
                self.crashes.forgive();
                Recovery::After(Duration::ZERO)
            }
        };
        match recovery {
            Recovery::GiveUp(deaths) => {
                let reason = format!(
                    "{reason}; it died {deaths} times within {} s, so it was not restarted. Restart it to try again.",
                    self.crashes.window().as_secs()
                );
                self.set_state(KernelState::Dead, Some(reason));
            }
            Recovery::After(pause) if pause.is_zero() => {
                self.set_state(KernelState::Restarting, Some(reason));
                Box::pin(self.start_kernel()).await;
            }
            Recovery::After(pause) => {
                self.set_state(KernelState::Restarting, Some(reason));
                self.restart_at = Some(Instant::now() + pause);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_keeps_dying_is_given_up_and_backs_off_meanwhile() {
        let mut w = CrashWindow::new(3, Duration::from_secs(600));
        let t0 = Instant::now();
        assert_eq!(w.record(t0), Recovery::After(Duration::from_millis(400)));
        assert_eq!(w.record(t0), Recovery::After(Duration::from_millis(800)));
        assert_eq!(w.record(t0), Recovery::After(Duration::from_millis(1600)));
        assert_eq!(w.record(t0), Recovery::GiveUp(4));
        // A person's restart starts afresh.
        w.forgive();
        assert_eq!(w.record(t0), Recovery::After(Duration::from_millis(400)));
    }

    #[test]
    fn deaths_outside_the_window_are_forgotten() {
        let mut w = CrashWindow::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(matches!(w.record(t0), Recovery::After(_)));
        assert_eq!(w.record(t0 + Duration::from_secs(30)), Recovery::GiveUp(2));
        let mut w = CrashWindow::new(1, Duration::from_secs(60));
        assert!(matches!(w.record(t0), Recovery::After(_)));
        assert!(matches!(
            w.record(t0 + Duration::from_secs(61)),
            Recovery::After(_)
        ));
    }

    #[test]
    fn the_pause_stops_growing() {
        let mut w = CrashWindow::new(100, Duration::from_secs(600));
        let t0 = Instant::now();
        let mut last = Recovery::GiveUp(0);
        for _ in 0..10 {
            last = w.record(t0);
        }
        assert_eq!(last, Recovery::After(Duration::from_millis(6400)));
    }
}
