//! The kernel's Landlock domain: what it may read, write and where it may make sockets, no TCP
//! but a TCP-only kernel's own bridged ports, and (scopes) no signals or abstract unix sockets outside its own domain. It holds
//! even for a kernel running as uid 0, and is the only filesystem and network fence where the
//! platform gives no namespaces (a container in a pod).

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::policy::JailPolicy;

/// The newest ABI whose rights we ask for; older kernels get what they support (best effort),
/// and the outcome says how much held.
const ABI_WANTED: ABI = ABI::V6;

/// Failures building or enforcing the ruleset.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

/// How much of the domain the running kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RulesOutcome {
    /// File access rules hold (fully or partially).
    pub filesystem: bool,
    /// Every requested right was enforced (this kernel has ABI 6 or later).
    pub complete: bool,
}

/// Restricts the calling thread (and everything it starts afterwards) to `policy`'s paths.
/// Sets `no_new_privs` as a side effect (Landlock requires it without `CAP_SYS_ADMIN`).
pub fn restrict(policy: &JailPolicy) -> Result<RulesOutcome, RulesError> {
    let all_fs = AccessFs::from_all(ABI_WANTED);
    let read = AccessFs::from_read(ABI_WANTED);
    // Everything but making device nodes.
    let write = all_fs & !(AccessFs::MakeChar | AccessFs::MakeBlock);
    let sockets: BitFlags<AccessFs> =
        AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::MakeSock | AccessFs::RemoveFile;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all_fs)?
        // No TCP bind or connect rules but a bridged kernel's ports: every other port is
        // refused.
        .handle_access(AccessNet::from_all(ABI_WANTED))?
        .scope(Scope::from_all(ABI_WANTED))?
        .create()?;
    for path in policy.readable_paths() {
        ruleset = add(ruleset, &path, read)?;
    }
    // /dev: read the random devices, write /dev/null and friends, and use the jail's own
    // pseudo-terminals (which take ioctls).
    ruleset = add(
        ruleset,
        std::path::Path::new("/dev"),
        read | AccessFs::WriteFile | AccessFs::IoctlDev,
    )?;
    for path in policy.writable_paths() {
        ruleset = add(ruleset, &path, write)?;
    }
    ruleset = add(ruleset, policy.ipc_in_jail(), sockets)?;
    for bridged in &policy.bridges {
        ruleset = ruleset.add_rule(NetPort::new(
            bridged.port,
            AccessNet::BindTcp | AccessNet::ConnectTcp,
        ))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(RulesOutcome {
        filesystem: status.ruleset != RulesetStatus::NotEnforced,
        complete: status.ruleset == RulesetStatus::FullyEnforced,
    })
}

/// Adds a rule for `path` if it exists (a missing optional directory is not an error).
fn add(
    ruleset: landlock::RulesetCreated,
    path: &std::path::Path,
    access: BitFlags<AccessFs>,
) -> Result<landlock::RulesetCreated, RulesError> {
    match PathFd::new(path) {
        Ok(fd) => {
            // Directory-only rights on a file are an error; keep the file ones.
            let access = if path.is_dir() {
                access
            } else {
                access & AccessFs::from_file(ABI_WANTED)
            };
            Ok(ruleset.add_rule(PathBeneath::new(fd, access))?)
        }
        Err(_) => Ok(ruleset),
    }
}
