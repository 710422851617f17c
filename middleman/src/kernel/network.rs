//! A kernel without network, said plainly. When the sandbox cut the kernel off the network
//! (its own network namespace, or Landlock refusing TCP), `pip install` would retry for ten
//! seconds and blame the kernel, and `requests.get` would fail with a resolver error. Middleman
//! tells the kernel instead: environment variables for every process it starts (pip does not
//! look for an index; `NBPLAT_PLAN_NOTE` says what the plan allows) and, for IPython kernels,
//! `no_network.py` run at start-up, which makes `%pip`/`!pip install`, name lookups and
//! connections to anything but loopback fail at once with that message. Not a security
//! boundary (the sandbox is): a convenience on top of it.

use kernel_sandbox::{Layer, Report};

/// The start-up code for IPython kernels.
const NO_NETWORK_PY: &str = include_str!("no_network.py");

/// Whether the sandbox took the network away.
pub(crate) fn network_off(report: &Report) -> bool {
    report
        .layers
        .iter()
        .any(|l| l.layer == Layer::Network && l.holds)
}

/// Adds what tells a kernel without network so: to its environment, and, for an IPython kernel
/// (an `ipykernel` command line), one `exec_lines` entry that runs `no_network.py`.
pub(crate) fn say_no_network(argv: &mut Vec<String>, env: &mut Vec<(String, String)>, note: &str) {
    let set = |env: &mut Vec<(String, String)>, key: &str, value: &str| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    };
    set(env, "NBPLAT_NETWORK", "off");
    set(env, "NBPLAT_PLAN_NOTE", note);
    // pip installs from local files only, and does not retry what cannot work.
    set(env, "PIP_NO_INDEX", "1");
    set(env, "PIP_RETRIES", "0");
    set(env, "PIP_DISABLE_PIP_VERSION_CHECK", "1");
    if super::helper::is_ipython(argv) {
        argv.push(super::helper::exec_line(NO_NETWORK_PY, "nbplat"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipython_kernels_get_the_start_up_code_and_every_kernel_the_environment() {
        let mut argv = vec![
            "python".to_owned(),
            "-m".into(),
            "ipykernel_launcher".into(),
        ];
        let mut env = vec![("PIP_NO_INDEX".to_owned(), "0".to_owned())];
        say_no_network(&mut argv, &mut env, "Pro plans reach PyPI.");
        assert_eq!(argv.len(), 4);
        assert!(argv[3].starts_with("--IPKernelApp.exec_lines=exec("));
        assert!(!argv[3].contains('\n') && !argv[3].contains('"'));
        assert!(env.contains(&("PIP_NO_INDEX".into(), "1".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "PIP_NO_INDEX").count(), 1);
        assert!(env.contains(&("NBPLAT_PLAN_NOTE".into(), "Pro plans reach PyPI.".into())));
        let mut deno = vec!["deno".to_owned(), "jupyter".into()];
        say_no_network(&mut deno, &mut Vec::new(), "");
        assert_eq!(deno.len(), 2);
    }
}
