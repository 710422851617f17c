//! The kernel's seccomp filter, compiled with `seccompiler` (Firecracker's maintained
//! compiler). A deny list: a notebook runs arbitrary libraries, so an allow list would break
//! someone's work on every upgrade, while these calls are never needed by notebook code and
//! are the usual doors out of a sandbox (new namespaces and mounts, io_uring, the kernel
//! keyring, eBPF, tracing other processes, perf events, loading kernels or modules).
//!
//! Denied calls fail with `EPERM`, which libraries already handle, except `clone3`: its flags
//! live in memory a filter cannot read, so it fails with `ENOSYS` and the C library falls back
//! to `clone`, whose namespace flags the filter does see. Calls of another architecture (32-bit
//! `int 0x80`) kill the process (seccompiler's architecture check).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Failures building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no filter.
    #[error("no seccomp filter for this architecture")]
    UnsupportedArch,
    /// seccompiler refused the rules or the kernel refused the program.
    #[error("seccomp: {0}")]
    Filter(#[from] seccompiler::Error),
    /// A rule could not be built.
    #[error("seccomp rule: {0}")]
    Backend(#[from] seccompiler::BackendError),
}

/// Every namespace a `clone` could create.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | 0x80) as u64; // CLONE_NEWTIME

/// Calls refused outright, with why.
#[cfg(target_arch = "x86_64")]
pub const DENIED: &[(i64, &str)] = &[
    (libc::SYS_unshare, "new namespaces"),
    (libc::SYS_setns, "entering namespaces"),
    (libc::SYS_mount, "mounts"),
    (libc::SYS_umount2, "mounts"),
    (libc::SYS_pivot_root, "mounts"),
    (libc::SYS_chroot, "mounts"),
    (libc::SYS_open_tree, "mounts"),
    (libc::SYS_move_mount, "mounts"),
    (libc::SYS_fsopen, "mounts"),
    (libc::SYS_fsconfig, "mounts"),
    (libc::SYS_fsmount, "mounts"),
    (libc::SYS_fspick, "mounts"),
    (libc::SYS_mount_setattr, "mounts"),
    (libc::SYS_io_uring_setup, "io_uring"),
    (libc::SYS_io_uring_enter, "io_uring"),
    (libc::SYS_io_uring_register, "io_uring"),
    (libc::SYS_keyctl, "kernel keyring"),
    (libc::SYS_add_key, "kernel keyring"),
    (libc::SYS_request_key, "kernel keyring"),
    (libc::SYS_bpf, "eBPF"),
    (libc::SYS_perf_event_open, "perf events"),
    (libc::SYS_ptrace, "tracing processes"),
    (libc::SYS_process_vm_readv, "other processes' memory"),
    (libc::SYS_process_vm_writev, "other processes' memory"),
    (libc::SYS_pidfd_getfd, "other processes' files"),
    (libc::SYS_kcmp, "comparing other processes"),
    (libc::SYS_kexec_load, "loading kernels"),
    (libc::SYS_kexec_file_load, "loading kernels"),
    (libc::SYS_init_module, "kernel modules"),
    (libc::SYS_finit_module, "kernel modules"),
    (libc::SYS_delete_module, "kernel modules"),
    (libc::SYS_reboot, "rebooting"),
    (libc::SYS_swapon, "swap"),
    (libc::SYS_swapoff, "swap"),
    (libc::SYS_acct, "process accounting"),
    (libc::SYS_quotactl, "quotas"),
    (libc::SYS_quotactl_fd, "quotas"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_open_by_handle_at, "opening files by handle"),
    (libc::SYS_name_to_handle_at, "file handles"),
    (libc::SYS_settimeofday, "the clock"),
    (libc::SYS_clock_settime, "the clock"),
    (libc::SYS_clock_adjtime, "the clock"),
    (libc::SYS_syslog, "the kernel log"),
    (libc::SYS_vhangup, "terminals"),
    (libc::SYS_iopl, "I/O ports"),
    (libc::SYS_ioperm, "I/O ports"),
    (libc::SYS_sethostname, "host name"),
    (libc::SYS_setdomainname, "host name"),
    (libc::SYS_lookup_dcookie, "profiling"),
    (libc::SYS_fanotify_init, "watching the filesystem"),
    (libc::SYS_uselib, "obsolete"),
];

#[cfg(not(target_arch = "x86_64"))]
pub const DENIED: &[(i64, &str)] = &[];

/// `__X32_SYSCALL_BIT`: on kernels with the x32 ABI, the same calls under other numbers.
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

/// The compiled filter: two programs, installed together by [`Filter::apply`].
#[derive(Debug, Clone)]
pub struct Filter {
    /// `clone3` fails with `ENOSYS`.
    clone3: BpfProgram,
    /// The deny list and `clone` with namespace flags fail with `EPERM`.
    deny: BpfProgram,
}

impl Filter {
    /// Builds the filter: every call allowed except those in [`DENIED`], `clone` with a
    /// namespace flag, and `clone3`.
    pub fn build() -> Result<Self, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| SeccompError::UnsupportedArch)?;
        if DENIED.is_empty() {
            return Err(SeccompError::UnsupportedArch);
        }
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, _) in DENIED {
            rules.insert(*nr, Vec::new());
            #[cfg(target_arch = "x86_64")]
            rules.insert(*nr | X32_BIT, Vec::new());
        }
        // clone(flags, ...): one rule per namespace flag (rules of a call are alternatives).
        let mut clone_rules = Vec::new();
        for bit in 0..64 {
            let flag = 1u64 << bit;
            if NAMESPACE_FLAGS & flag != 0 {
                clone_rules.push(SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )?])?);
            }
        }
        rules.insert(libc::SYS_clone, clone_rules);
        let deny = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )?
        .try_into()?;
        // clone3 must fail with ENOSYS, not EPERM, so that the C library falls back to clone.
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?
        .try_into()?;
        Ok(Self { clone3, deny })
    }

    /// Installs the filter on the calling thread (and so on every process it starts). Needs
    /// `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn apply(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.deny)?;
        seccompiler::apply_filter(&self.clone3)?;
        Ok(())
    }

    /// Instructions in all (for tests and logs).
    pub fn len(&self) -> usize {
        self.clone3.len() + self.deny.len()
    }

    /// Whether the filter is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_and_names_every_call_once() {
        let program = Filter::build().unwrap();
        assert!(program.len() > DENIED.len());
        let mut numbers: Vec<i64> = DENIED.iter().map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        let before = numbers.len();
        numbers.dedup();
        assert_eq!(before, numbers.len(), "a call is listed twice");
        for (nr, _) in DENIED {
            assert_ne!(*nr, libc::SYS_clone3, "clone3 has its own answer");
        }
    }

    #[test]
    fn the_usual_doors_are_listed() {
        for nr in [
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_io_uring_setup,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_ptrace,
            libc::SYS_perf_event_open,
            libc::SYS_kexec_load,
            libc::SYS_setns,
        ] {
            assert!(DENIED.iter().any(|(n, _)| *n == nr), "{nr}");
        }
    }
}
