//! Middleman's side of the agent: start one (a child process over a socket pair) or connect to
//! one (a socket in a pod's shared volume), then send requests and receive events.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::protocol::{Event, MAX_LINE, Request, encode};
use crate::layers::Report;

/// Failures reaching the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent process could not be started.
    #[error("cannot start the kernel agent {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent's socket could not be reached.
    #[error("cannot reach the kernel agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent closed the connection or said something unexpected.
    #[error("the kernel agent {0}")]
    Protocol(String),
    /// Writing to the agent failed.
    #[error("the kernel agent connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the agent reported (or the end of the connection).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Event(Event),
    /// The connection ended, with why.
    Closed(String),
}

/// How to reach an agent.
#[derive(Debug, Clone)]
pub enum AgentTarget {
    /// Start `program` with `args` (it serves on its standard input).
    Spawn {
        program: PathBuf,
        args: Vec<OsString>,
    },
    /// Connect to the socket at this path.
    Socket(PathBuf),
}

/// A connected agent.
#[derive(Debug)]
pub struct Agent {
    /// Requests, written in order by a task of their own (so sending never waits).
    requests: mpsc::UnboundedSender<Request>,
    /// What holds in the agent's jails.
    pub report: Report,
    /// The ipc directory as kernels see it.
    pub ipc_dir: String,
    /// The kernels' home as they see it.
    pub home: String,
    // Kept for its kill-on-drop: the agent ends when Middleman drops it.
    _child: Option<tokio::process::Child>,
}

impl Agent {
    /// Starts or connects to the agent and waits for its report. Events go to `events`.
    pub async fn open(
        target: &AgentTarget,
        events: mpsc::Sender<AgentEvent>,
    ) -> Result<Self, AgentError> {
        let (stream, child) = match target {
            AgentTarget::Spawn { program, args } => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
                let child = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                        theirs,
                    )))
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| AgentError::Spawn {
                        program: program.clone(),
                        source,
                    })?;
                ours.set_nonblocking(true)?;
                (tokio::net::UnixStream::from_std(ours)?, Some(child))
            }
            AgentTarget::Socket(path) => (connect(path).await?, None),
        };
        let (read, mut write) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(read);
        let mut line = Vec::new();
        if !read_line(&mut reader, &mut line).await? {
            return Err(AgentError::Protocol(
                "ended before it said what holds (its log says why)".into(),
            ));
        }
        let Ok(Event::Ready {
            report,
            ipc_dir,
            home,
        }) = serde_json::from_slice(&line)
        else {
            return Err(AgentError::Protocol(format!(
                "began with {:?}",
                String::from_utf8_lossy(&line)
            )));
        };
        tokio::spawn(async move {
            let mut line = Vec::new();
            let why = loop {
                match read_line(&mut reader, &mut line).await {
                    Ok(true) => match serde_json::from_slice(&line) {
                        Ok(event) => {
                            if events.send(AgentEvent::Event(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => break format!("sent a bad event: {e}"),
                    },
                    Ok(false) => break "closed the connection".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send(AgentEvent::Closed(why)).await;
        });
        let (requests, mut pending) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(request) = pending.recv().await {
                if write.write_all(&encode(&request)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            requests,
            report,
            ipc_dir,
            home,
            _child: child,
        })
    }

    /// The agent's process id, when this Middleman started it (its mount namespace holds the
    /// ipc directory's own filesystem, reached through `/proc/<pid>/root`).
    pub fn pid(&self) -> Option<u32> {
        self._child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Sends a request (in order with every earlier one).
    pub fn send(&self, request: Request) -> Result<(), AgentError> {
        self.requests
            .send(request)
            .map_err(|_| AgentError::Protocol("connection is closed".into()))
    }
}

async fn connect(path: &Path) -> Result<tokio::net::UnixStream, AgentError> {
    // The agent's container may start a moment after Middleman's.
    let mut last = None;
    for _ in 0..50 {
        match tokio::net::UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(AgentError::Connect {
        path: path.to_owned(),
        source: last.unwrap_or_else(|| std::io::Error::other("no attempt")),
    })
}

async fn read_line(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    if n == 0 {
        return Ok(false);
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::other("line too long"));
    }
    Ok(true)
}
