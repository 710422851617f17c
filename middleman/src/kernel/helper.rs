//! The platform's part of an IPython kernel (`nbplat_kernel.py`, the module `_nbplat` in the
//! kernel): table outputs for DataFrames, the `nbplat_request` shell message (table pages, SQL
//! completion) and what SQL cells run. Middleman starts every IPython kernel with it, as one
//! `exec_lines` entry, and the checkpoint helper (`nbplat_checkpoint.py`) as a second; other kernels run without it (their SQL cells fail with a plain
//! `ModuleNotFoundError`, and their tables are their own HTML). A third entry
//! (`nbplat_flush.py`) makes ipykernel's flush of an empty stream return at once: three
//! cross-thread waits a cell, about 1.2 ms of a trivial cell's 4.2 ms.

use base64::Engine as _;

/// The start-up code.
const NBPLAT_KERNEL_PY: &str = include_str!("nbplat_kernel.py");
/// Checkpoints: saving and restoring the user's globals (after the helper, which it extends).
const NBPLAT_CHECKPOINT_PY: &str = include_str!("nbplat_checkpoint.py");
/// ipykernel's stream flush without a thread round trip when there is nothing to send.
const NBPLAT_FLUSH_PY: &str = include_str!("nbplat_flush.py");

/// Whether `argv` starts an IPython kernel (`ipykernel`, `ipykernel_launcher`).
pub(crate) fn is_ipython(argv: &[String]) -> bool {
    argv.iter().any(|a| a.contains("ipykernel"))
}

/// An IPython command-line argument that runs `script` once at start-up, before the first
/// execution, outside the user's namespace (as module `name`). One line of plain characters,
/// whatever the script holds: traitlets parses it as a string; repeated, the entries add up.
pub(crate) fn exec_line(script: &str, name: &str) -> String {
    let code = base64::engine::general_purpose::STANDARD.encode(script);
    format!(
        "--IPKernelApp.exec_lines=exec(__import__('base64').b64decode('{code}').decode(), {{'__name__': '{name}'}})"
    )
}

/// IPython keeps its input history in memory only. Its default, a SQLite file in the kernel's
/// home, is written (with a rollback journal) after every cell: milliseconds a cell on a slow
/// disk, for a history the document already keeps. `%history`, `_i` and `Out` still work within
/// the kernel's life.
const HISTORY_IN_MEMORY: &str = "--HistoryManager.hist_file=:memory:";

/// Adds the helper to an IPython kernel's command line.
pub(crate) fn add_helper(argv: &mut Vec<String>) {
    if is_ipython(argv) {
        argv.push(HISTORY_IN_MEMORY.to_owned());
        argv.push(exec_line(NBPLAT_FLUSH_PY, "_nbplat_flush"));
        argv.push(exec_line(NBPLAT_KERNEL_PY, "_nbplat"));
        argv.push(exec_line(NBPLAT_CHECKPOINT_PY, "_nbplat_checkpoint"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipython_kernels_get_the_helper_as_one_plain_line() {
        let mut argv = vec![
            "python".to_owned(),
            "-m".into(),
            "ipykernel_launcher".into(),
        ];
        add_helper(&mut argv);
        assert_eq!(argv.len(), 7);
        assert_eq!(argv[3], HISTORY_IN_MEMORY);
        for line in &argv[4..] {
            assert!(line.starts_with("--IPKernelApp.exec_lines=exec("));
            assert!(!line.contains('\n') && !line.contains('"'));
        }
        let mut deno = vec!["deno".to_owned(), "jupyter".into()];
        add_helper(&mut deno);
        assert_eq!(deno.len(), 2);
    }
}
