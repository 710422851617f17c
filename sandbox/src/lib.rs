//! The kernel's sandbox. A kernel runs code from strangers, so it is another principal than
//! everything that serves it: Middleman never starts it directly but asks the kernel agent
//! ([`agent`]), which starts each kernel generation in a jail ([`init`]): its own mount, PID,
//! network, IPC, UTS and cgroup namespaces with a read-only view of the system ([`jail_fs`]),
//! its own user where the host allows, no capabilities and `no_new_privs` ([`privileges`]),
//! Landlock rules ([`rules`]), a seccomp filter ([`seccomp`]), a cgroup for memory, processes
//! and CPU ([`cgroup`]) and a size-limited workspace ([`workspace`]). What holds is checked at
//! start by a self-test from inside a jail ([`selftest`]) and reported per layer ([`layers`]),
//! and a plan can require a level. A kernel that speaks TCP only is reached through a bridge in
//! its jail ([`bridge`]).
//!
//! Decisions (layers, levels, policies, the filter's contents) are plain data and unit-tested;
//! the effects need root and a Linux kernel and are tested by Middleman's sandbox tests, which
//! attack from real kernels.

pub mod agent;
pub mod bridge;
pub mod cgroup;
pub mod init;
pub mod jail_fs;
pub mod layers;
pub mod policy;
pub mod privileges;
pub mod rules;
pub mod seccomp;
pub mod selftest;
pub mod stale;
pub mod workspace;

pub use agent::client::{Agent, AgentError, AgentEvent, AgentTarget};
pub use agent::protocol::{Event, KernelExit, Request};
pub use agent::server::{AgentArgs, INIT_ARG, SELFTEST_ARG};
pub use layers::{Layer, Level, Report};

/// Runs a jail stage when this process was started as one (`argv[1]` names it); returns its
/// exit code. Call it first thing in `main`, before any thread or async runtime starts: a jail's
/// init must be single-threaded to make its namespaces.
pub fn run_stage() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(INIT_ARG) => Some(init::main()),
        Some(SELFTEST_ARG) => Some(selftest::main(&args.collect::<Vec<_>>())),
        _ => None,
    }
}
