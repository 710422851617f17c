//! The JavaScript heap of a Deno kernel. V8 takes one limit for the whole isolate, and Deno's
//! kernel itself (its runtime and TypeScript support) holds about 80 MiB of old space before any
//! cell runs (measured with `Deno.memoryUsage()` on Deno 2.9.6; the kernel does not start below
//! about 90 MiB). So the plan's limit is the code's own, and V8's is that plus the kernel's
//! share: `--max-old-space-size` of [`DENO_OWN_HEAP_MIB`] + the plan's. Past it V8 ends the
//! process ("Fatal JavaScript out of memory"); Middleman says so in words (`exhausted`).

use kernel_sandbox::KernelExit;

/// The old space Deno's kernel takes for itself, MiB. Measured (`middleman/tests/deno.rs`): with
/// this and a plan's 10, the code held 10 MiB (2 + 8 one-MiB arrays) and the next array ended
/// the kernel; completion, which loads TypeScript's libraries, still fits.
pub(crate) const DENO_OWN_HEAP_MIB: u64 = 81;

/// Sets V8's heap limit for a Deno kernel whose code may use `js_heap_mib` (0: the default).
pub(crate) fn limit_deno(env: &mut Vec<(String, String)>, js_heap_mib: u64) {
    if js_heap_mib == 0 {
        return;
    }
    env.retain(|(k, _)| k != "DENO_V8_FLAGS");
    env.push((
        "DENO_V8_FLAGS".into(),
        format!("--max-old-space-size={}", DENO_OWN_HEAP_MIB + js_heap_mib),
    ));
}

/// What V8 writes to stderr when the heap limit is reached.
const V8_OUT_OF_HEAP: [&str; 2] = [
    "Fatal JavaScript out of memory",
    "JavaScript heap out of memory",
];

/// The words for a kernel V8 ended at its heap limit, if that is how it ended.
pub(crate) fn exhausted(exit: &KernelExit, js_heap_mib: u64) -> Option<String> {
    if !V8_OUT_OF_HEAP
        .iter()
        .any(|needle| exit.stderr_tail.contains(needle))
    {
        return None;
    }
    Some(if js_heap_mib > 0 {
        format!(
            "the code used more than its JavaScript heap of {js_heap_mib} MiB, and the kernel was stopped"
        )
    } else {
        "the kernel ran out of JavaScript heap and was stopped".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_adds_the_kernels_own_share_and_is_said_in_words() {
        let mut env = vec![("DENO_V8_FLAGS".to_owned(), "--x".to_owned())];
        limit_deno(&mut env, 10);
        assert_eq!(
            env,
            vec![(
                "DENO_V8_FLAGS".to_owned(),
                format!("--max-old-space-size={}", DENO_OWN_HEAP_MIB + 10)
            )]
        );
        let mut untouched = Vec::new();
        limit_deno(&mut untouched, 0);
        assert!(untouched.is_empty());
        let exit = KernelExit {
            signal: Some(5),
            stderr_tail: "\n#\n# Fatal JavaScript out of memory: Reached heap limit\n#\n".into(),
            ..KernelExit::default()
        };
        assert_eq!(
            exhausted(&exit, 10).as_deref(),
            Some(
                "the code used more than its JavaScript heap of 10 MiB, and the kernel was stopped"
            )
        );
        assert!(exhausted(&KernelExit::default(), 10).is_none());
    }
}
