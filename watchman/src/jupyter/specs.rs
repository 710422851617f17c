//! Kernelspecs: one per plan. The spec's name is the plan's; the kernel's own name (`python3`,
//! `deno`) also finds a plan when exactly one plan runs it, so a notebook saved elsewhere with
//! `python3` opens here. `argv` is empty: nothing is launched from a spec, a pod is allocated.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::plan::Plan;

/// The language and display name of a kernel the platform ships; others are taken as Python.
fn language(kernel: &str) -> (&'static str, &'static str) {
    match kernel {
        "deno" => ("typescript", "TypeScript (Deno)"),
        _ => ("python", "Python 3"),
    }
}

/// The spec of `plan`.
pub(super) fn spec(plan: &Plan) -> Value {
    let (language, kernel_display) = language(&plan.kernel);
    json!({
        "name": plan.name,
        "spec": {
            "argv": [],
            "display_name": format!("{kernel_display} · {}", plan.name),
            "language": language,
            "interrupt_mode": "message",
            "env": {},
            "metadata": {
                "nbplat": {
                    "plan": plan.name,
                    "kernel": plan.kernel,
                    "cpu": plan.resources.cpu_limit,
                    "memory": plan.resources.memory_limit,
                    "kernel_memory_mib": plan.limits.memory_mib,
                    "execution_timeout_secs": plan.limits.execution_timeout.as_secs(),
                    "sandbox": plan.sandbox.to_string(),
                },
            },
        },
        "resources": {},
    })
}

/// Every plan that can start, with the default: `preferred` when it is one of them, else the
/// first.
pub(super) fn all(
    plans: &BTreeMap<String, Plan>,
    usable: impl Fn(&str) -> bool,
    preferred: Option<&str>,
) -> Value {
    let specs: serde_json::Map<String, Value> = plans
        .values()
        .filter(|p| usable(&p.name))
        .map(|p| (p.name.clone(), spec(p)))
        .collect();
    let default = preferred
        .filter(|p| specs.contains_key(*p))
        .map(str::to_owned)
        .or_else(|| specs.keys().next().cloned())
        .unwrap_or_default();
    json!({ "default": default, "kernelspecs": specs })
}

/// The plan a spec name means: a plan's name, or the kernel of exactly one plan.
pub(super) fn plan_for<'a>(plans: &'a BTreeMap<String, Plan>, name: &str) -> Option<&'a Plan> {
    if let Some(plan) = plans.get(name) {
        return Some(plan);
    }
    let mut running = plans.values().filter(|p| p.kernel == name);
    match (running.next(), running.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}
