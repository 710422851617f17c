//! Giving up privileges: capabilities, `no_new_privs`, resource limits, dumpability. Safe
//! wrappers (nix, caps) only.

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{Resource, setrlimit};

/// Failures giving up privileges; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{step}: {source}")]
    Caps {
        step: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

fn caps_err(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { step, source }
}

fn sys_err(step: &'static str) -> impl FnOnce(nix::Error) -> PrivilegeError {
    move |source| PrivilegeError::Sys { step, source }
}

/// Empties the bounding set (nothing can be gained at an exec any more), clears the
/// inheritable and ambient sets, and reduces the effective and permitted sets to `keep`. With an empty `keep`, a uid-0 process
/// is an ordinary user (file ownership aside, which Landlock and the mount namespace cover).
pub fn drop_capabilities(keep: &[Capability]) -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set can only shrink while CAP_SETPCAP is effective, so it goes first.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err("bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable set"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("permitted set"))?;
    Ok(())
}

/// Whether the calling thread holds no capability in any set but the bounding one.
pub fn has_no_capabilities() -> bool {
    [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
    ]
    .into_iter()
    .all(|set| caps::read(None, set).is_ok_and(|c| c.is_empty()))
}

/// `no_new_privs`: no exec may ever grant privileges again (setuid files, file capabilities).
pub fn no_new_privileges() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_no_new_privs().map_err(sys_err("no_new_privs"))
}

/// Makes the calling process non-dumpable: processes of the same uid cannot read its memory,
/// environment or descriptors through `/proc`, nor trace it.
pub fn not_dumpable() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_dumpable(false).map_err(sys_err("dumpable"))
}

/// Sets a soft and hard limit (0 leaves it unchanged).
pub fn limit(resource: Resource, value: u64) -> Result<(), PrivilegeError> {
    if value == 0 {
        return Ok(());
    }
    setrlimit(resource, value, value).map_err(sys_err("setrlimit"))
}

/// No core dumps: a crashing kernel must not write its memory (other users' data it read) to
/// disk.
pub fn no_core_dumps() -> Result<(), PrivilegeError> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys_err("setrlimit core"))
}
