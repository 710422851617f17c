//! The sandbox's layers, what each stops, and the levels a plan can require. Pure: the agent
//! fills a [`Report`] from what it applied and what a self-test observed from inside a jail;
//! [`Report::missing`] decides whether a [`Level`] is met.

use serde::{Deserialize, Serialize};

/// One layer of the kernel's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The kernel runs as a user of its own, not as what serves it.
    OwnUser,
    /// No capabilities and `no_new_privs`: root inside the jail is an ordinary user.
    NoPrivileges,
    /// Its own mount namespace: a read-only view of what it needs; only its workspace, a
    /// private `/tmp` and `/dev/shm` and its ipc directory (sockets only) are writable.
    Filesystem,
    /// Its own PID namespace with its own read-only `/proc`: it sees and signals only its own
    /// processes, and they all end with it.
    Processes,
    /// Its own IPC and UTS namespaces (System V IPC, host name).
    IpcUts,
    /// Its own network namespace (no interfaces) or, where the pod provides the network,
    /// Landlock refusing every TCP bind and connect.
    Network,
    /// Landlock: file access limited to the paths above, even for a uid-0 kernel.
    Landlock,
    /// Landlock scopes: no signals and no abstract unix sockets outside its own domain.
    Scopes,
    /// A seccomp filter refusing what a notebook never needs (namespaces, mounts, io_uring,
    /// keyctl, bpf, ptrace, perf events, kexec, modules, ...).
    Seccomp,
    /// A memory limit (a cgroup, not an address-space limit), reported when hit.
    Memory,
    /// A limit on processes and threads (a pids cgroup, or a per-uid limit for an own user).
    ProcessCount,
    /// A CPU quota (only where the host has the controller).
    Cpu,
    /// The kernel cannot write its own cgroup's limits (no cgroup filesystem in its view).
    CgroupLocked,
    /// A size limit on its workspace.
    WorkspaceQuota,
}

impl Layer {
    /// Every layer, in the order reports list them.
    pub const ALL: [Layer; 14] = [
        Layer::OwnUser,
        Layer::NoPrivileges,
        Layer::Filesystem,
        Layer::Processes,
        Layer::IpcUts,
        Layer::Network,
        Layer::Landlock,
        Layer::Scopes,
        Layer::Seccomp,
        Layer::Memory,
        Layer::ProcessCount,
        Layer::Cpu,
        Layer::CgroupLocked,
        Layer::WorkspaceQuota,
    ];

    /// The name used in logs, flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            Layer::OwnUser => "own_user",
            Layer::NoPrivileges => "no_privileges",
            Layer::Filesystem => "filesystem",
            Layer::Processes => "processes",
            Layer::IpcUts => "ipc_uts",
            Layer::Network => "network",
            Layer::Landlock => "landlock",
            Layer::Scopes => "scopes",
            Layer::Seccomp => "seccomp",
            Layer::Memory => "memory",
            Layer::ProcessCount => "process_count",
            Layer::Cpu => "cpu",
            Layer::CgroupLocked => "cgroup_locked",
            Layer::WorkspaceQuota => "workspace_quota",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plan can require of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing is required; whatever holds is used and logged.
    #[default]
    None,
    /// What an unprivileged container can give itself: no privileges, Landlock, seccomp,
    /// memory and process limits, no network.
    Standard,
    /// Everything but the CPU quota (which depends on the host's controllers): an own user,
    /// every namespace, Landlock with scopes, seccomp, locked cgroups, a workspace quota.
    Strict,
}

impl Level {
    /// The layers this level requires.
    pub fn required(self) -> &'static [Layer] {
        match self {
            Level::None => &[],
            Level::Standard => &[
                Layer::NoPrivileges,
                Layer::Network,
                Layer::Landlock,
                Layer::Seccomp,
                Layer::Memory,
                Layer::ProcessCount,
            ],
            Level::Strict => &[
                Layer::OwnUser,
                Layer::NoPrivileges,
                Layer::Filesystem,
                Layer::Processes,
                Layer::IpcUts,
                Layer::Network,
                Layer::Landlock,
                Layer::Scopes,
                Layer::Seccomp,
                Layer::Memory,
                Layer::ProcessCount,
                Layer::CgroupLocked,
                Layer::WorkspaceQuota,
            ],
        }
    }

    /// The name used in flags and plans.
    pub fn name(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Standard => "standard",
            Level::Strict => "strict",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "" => Ok(Level::None),
            "standard" => Ok(Level::Standard),
            "strict" => Ok(Level::Strict),
            other => Err(format!(
                "unknown sandbox level {other:?} (none, standard, strict)"
            )),
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether one layer holds, and how (or why not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerState {
    pub layer: Layer,
    pub holds: bool,
    /// How it is enforced, or why it is not, in a few words.
    pub detail: String,
}

/// What holds for the kernels one agent starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub layers: Vec<LayerState>,
}

impl Report {
    /// Records a layer (replacing an earlier record of it).
    pub fn set(&mut self, layer: Layer, holds: bool, detail: impl Into<String>) {
        let detail = detail.into();
        match self.layers.iter_mut().find(|l| l.layer == layer) {
            Some(l) => {
                l.holds = holds;
                l.detail = detail;
            }
            None => self.layers.push(LayerState {
                layer,
                holds,
                detail,
            }),
        }
        self.layers.sort_by_key(|l| l.layer);
    }

    /// Whether `layer` holds (a layer never recorded does not).
    pub fn holds(&self, layer: Layer) -> bool {
        self.layers.iter().any(|l| l.layer == layer && l.holds)
    }

    /// The layers `level` requires that do not hold.
    pub fn missing(&self, level: Level) -> Vec<Layer> {
        level
            .required()
            .iter()
            .copied()
            .filter(|l| !self.holds(*l))
            .collect()
    }

    /// The strongest level this report meets.
    pub fn level(&self) -> Level {
        [Level::Strict, Level::Standard]
            .into_iter()
            .find(|l| self.missing(*l).is_empty())
            .unwrap_or(Level::None)
    }

    /// One line per layer, for logs and errors.
    pub fn describe(&self) -> String {
        self.layers
            .iter()
            .map(|l| {
                format!(
                    "{}: {} ({})",
                    l.layer,
                    if l.holds { "holds" } else { "NOT enforced" },
                    l.detail
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_hold() -> Report {
        let mut r = Report::default();
        for l in Layer::ALL {
            r.set(l, true, "test");
        }
        r
    }

    #[test]
    fn levels_are_nested() {
        for layer in Level::Standard.required() {
            assert!(Level::Strict.required().contains(layer), "{layer}");
        }
        assert!(Level::None.required().is_empty());
    }

    #[test]
    fn a_missing_layer_lowers_the_level() {
        let mut r = all_hold();
        assert_eq!(r.level(), Level::Strict);
        // The CPU quota is never required: hosts without the controller still reach strict.
        r.set(Layer::Cpu, false, "no cpu controller");
        assert_eq!(r.level(), Level::Strict);
        r.set(Layer::OwnUser, false, "uid 0");
        assert_eq!(r.level(), Level::Standard);
        assert_eq!(r.missing(Level::Strict), vec![Layer::OwnUser]);
        r.set(Layer::Seccomp, false, "no seccomp");
        assert_eq!(r.level(), Level::None);
        assert_eq!(r.missing(Level::Standard), vec![Layer::Seccomp]);
        assert!(r.missing(Level::None).is_empty());
    }

    #[test]
    fn unrecorded_layers_do_not_hold() {
        let r = Report::default();
        assert_eq!(r.missing(Level::Standard).len(), 6);
        assert_eq!(r.level(), Level::None);
    }

    #[test]
    fn set_replaces_and_keeps_order() {
        let mut r = Report::default();
        r.set(Layer::Seccomp, false, "a");
        r.set(Layer::OwnUser, true, "b");
        r.set(Layer::Seccomp, true, "c");
        assert_eq!(r.layers.len(), 2);
        assert_eq!(r.layers[0].layer, Layer::OwnUser);
        assert!(r.holds(Layer::Seccomp));
        assert!(r.describe().contains("seccomp: holds (c)"));
    }

    #[test]
    fn level_names_round_trip() {
        for l in [Level::None, Level::Standard, Level::Strict] {
            assert_eq!(l.name().parse::<Level>(), Ok(l));
        }
        assert!("paranoid".parse::<Level>().is_err());
    }
}
