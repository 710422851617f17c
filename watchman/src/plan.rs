//! Plans: what a tier of users gets (kernel, resources, warm buffer, limits), from a TOML file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Failures loading the plans file. Every problem is reported at once.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("plans file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("plans file {path}: {message}")]
    Parse { path: String, message: String },
    /// The values do not make sense.
    #[error("plans file {path} is invalid:\n  - {}", problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    plans: BTreeMap<String, RawPlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default = "default_kernel")]
    kernel: String,
    #[serde(default)]
    kernel_path: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<Toleration>,
    #[serde(default)]
    runtime_class: String,
    warm: WarmPolicy,
    #[serde(default = "default_idle")]
    idle_timeout: String,
    #[serde(default = "default_lifetime")]
    max_lifetime: String,
    /// How long a document's kernel checkpoint is kept after it was last saved (`never`: as
    /// long as the document).
    #[serde(default = "default_checkpoint_ttl")]
    checkpoint_ttl: String,
    #[serde(default)]
    limits: RawLimits,
    /// The sandbox level the plan's kernels require (none, standard, strict).
    #[serde(default)]
    sandbox: Option<String>,
    /// Runs without a browser (docs/jobs.md).
    #[serde(default)]
    jobs: RawJobs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    concurrency: Option<u32>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    result_ttl: Option<String>,
    max_code_kib: Option<u64>,
    max_notebook_kib: Option<u64>,
    user_concurrent_runs: Option<u32>,
    user_runs_per_day: Option<u32>,
    user_cpu_seconds_per_day: Option<u64>,
}

fn default_kernel() -> String {
    "python3".into()
}
fn default_idle() -> String {
    "30m".into()
}
fn default_lifetime() -> String {
    "12h".into()
}
fn default_checkpoint_ttl() -> String {
    "7d".into()
}

/// CPU and memory as Kubernetes quantities (`500m`, `1Gi`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu_request: String,
    #[serde(default)]
    pub cpu_limit: String,
    #[serde(default)]
    pub memory_request: String,
    #[serde(default)]
    pub memory_limit: String,
    #[serde(default)]
    pub ephemeral_storage: String,
}

/// A Kubernetes toleration (spot nodes carry taints).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    pub key: String,
    #[serde(default = "default_op")]
    pub operator: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub effect: String,
}

fn default_op() -> String {
    "Equal".into()
}

/// `target_warm = clamp(ceil(ratio x allocated), min, max)`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarmPolicy {
    pub ratio: f64,
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    execution_timeout: Option<String>,
    max_output_bytes: Option<u64>,
    memory_mib: Option<u64>,
    js_heap_mib: Option<u64>,
    max_processes: Option<u64>,
    max_open_files: Option<u64>,
    workspace_mib: Option<u64>,
    checkpoint_name_mib: Option<u64>,
    checkpoint_mib: Option<u64>,
    checkpoint_files_mib: Option<u64>,
}

/// Limits handed to Middleman and to the kernel's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionLimits {
    pub execution_timeout: Duration,
    pub max_output_bytes: u64,
    pub memory_mib: u64,
    /// The JavaScript heap a JS/TS (Deno) kernel's code may use, MiB (0: the engine's
    /// default); V8's limit is this plus the kernel's own share (docs/sandbox.md).
    pub js_heap_mib: u64,
    pub max_processes: u64,
    pub max_open_files: u64,
    /// Size limit of the workspace, MiB (0: none).
    pub workspace_mib: u64,
    /// Kernel checkpoints (docs/checkpoints.md): the largest one name may be, the whole
    /// checkpoint of a document, and the workspace files kept with it (0: none), MiB.
    pub checkpoint_name_mib: u64,
    pub checkpoint_mib: u64,
    pub checkpoint_files_mib: u64,
}

impl ExecutionLimits {
    /// Middleman's flags for the checkpoint limits.
    pub fn checkpoint_args(&self) -> Vec<String> {
        vec![
            "--checkpoint-max-name-mib".to_owned(),
            self.checkpoint_name_mib.to_string(),
            "--checkpoint-max-mib".to_owned(),
            self.checkpoint_mib.to_string(),
            "--checkpoint-max-files-mib".to_owned(),
            self.checkpoint_files_mib.to_string(),
        ]
    }
}

/// The largest `max_notebook_kib` (Middleman imports up to 32 MiB).
pub const MAX_NOTEBOOK_BYTES: u64 = 32 << 20;

/// How the plan runs jobs (docs/jobs.md): its queue, retries, how long results are kept, and
/// what each user may use. Quotas count per user and plan; 0 means no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsPolicy {
    /// Runs of the plan at once on one replica; the rest wait in its queue.
    pub concurrency: u32,
    /// Attempts of a run at most (infrastructure failures only are retried).
    pub max_attempts: u32,
    /// The first retry's backoff; it doubles per attempt (capped at 30 s), with jitter.
    pub retry_backoff: Duration,
    /// How long a finished run (its outputs and receipt) is kept.
    pub result_ttl: Duration,
    pub max_code_bytes: u64,
    /// The largest uploaded `.ipynb` of a notebook run.
    pub max_notebook_bytes: u64,
    pub user_concurrent_runs: u32,
    pub user_runs_per_day: u32,
    /// Charged as run time x the plan's CPUs (1 when `cpu_limit` is unset).
    pub user_cpu_seconds_per_day: u64,
}

/// One plan, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    /// The kernelspec name its pods run (Middleman's `--kernel`).
    pub kernel: String,
    /// Jupyter data directories searched for that kernelspec before the pod's `JUPYTER_PATH`
    /// (Middleman's `--kernel-path`): where another Python environment keeps its kernelspec.
    /// Empty: the kernel's environment of the host or image (docs/kernel-environment.md).
    pub kernel_path: Vec<PathBuf>,
    /// The Middleman image of its Kubernetes pods (empty: `--pod-image`); both containers run
    /// it, so it holds the environments the plan's kernelspec may name.
    pub image: String,
    pub resources: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// Kubernetes RuntimeClass of the plan's pods (`gvisor`); empty: the cluster default.
    pub runtime_class: String,
    pub warm: WarmPolicy,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// How long a document's checkpoint is kept after its last save; `None`: never expires.
    pub checkpoint_ttl: Option<Duration>,
    pub limits: ExecutionLimits,
    /// The sandbox level its kernels require; pods of the plan are not started where the
    /// host cannot give it.
    pub sandbox: kernel_sandbox::Level,
    pub jobs: JobsPolicy,
}

impl Plan {
    /// Middleman's arguments that choose the kernel: `--kernel`, and `--kernel-path` when the
    /// plan names where its kernelspec is.
    pub fn kernel_args(&self) -> Vec<String> {
        let mut args = vec!["--kernel".to_owned(), self.kernel.clone()];
        if !self.kernel_path.is_empty() {
            let dirs: Vec<String> = self
                .kernel_path
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            args.extend(["--kernel-path".to_owned(), dirs.join(":")]);
        }
        if self.limits.js_heap_mib > 0 {
            args.extend([
                "--kernel-js-heap-mib".to_owned(),
                self.limits.js_heap_mib.to_string(),
            ]);
        }
        args
    }

    /// CPUs of the kernel from `resources.cpu_limit` (`500m`, `2`); 0 when unset.
    pub fn cpus(&self) -> f64 {
        let q = self.resources.cpu_limit.trim();
        let value = match q.strip_suffix('m') {
            Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
            None => q.parse::<f64>(),
        };
        value
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .unwrap_or(0.0)
    }

    /// How many warm (or starting) pods this plan should keep with `allocated` pods in use.
    pub fn target_warm(&self, allocated: u32) -> u32 {
        let wanted = (self.warm.ratio * f64::from(allocated)).ceil();
        let wanted = if wanted.is_finite() && wanted > 0.0 {
            wanted.min(f64::from(u32::MAX)) as u32
        } else {
            0
        };
        wanted.clamp(self.warm.min, self.warm.max.max(self.warm.min))
    }
}

/// A Kubernetes quantity as plans write them: a decimal number with an optional SI or binary
/// suffix (`250m`, `1.5`, `512Mi`, `2G`).
fn is_quantity(q: &str) -> bool {
    let split = q
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    num.parse::<f64>().is_ok_and(|v| v.is_finite() && v >= 0.0)
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti"
        )
}

pub use telemetry::{DurationError, parse_duration};

/// Loads and validates the plans in `text` (read from `path`).
pub fn parse_plans(path: &str, text: &str) -> Result<BTreeMap<String, Plan>, PlanError> {
    let file: PlansFile = toml::from_str(text).map_err(|e| PlanError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut problems = Vec::new();
    let mut plans = BTreeMap::new();
    if file.plans.is_empty() {
        problems.push("no plans defined".to_owned());
    }
    for (name, raw) in file.plans {
        let mut dur = |what: &str, v: &str| match parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("plans.{name}.{what}: {e}"));
                Duration::ZERO
            }
        };
        let idle_timeout = dur("idle_timeout", &raw.idle_timeout);
        let max_lifetime = dur("max_lifetime", &raw.max_lifetime);
        let checkpoint_ttl = match raw.checkpoint_ttl.as_str() {
            "never" => None,
            ttl => Some(dur("checkpoint_ttl", ttl)).filter(|d| !d.is_zero()),
        };
        let execution_timeout = dur(
            "limits.execution_timeout",
            raw.limits.execution_timeout.as_deref().unwrap_or("10m"),
        );
        let retry_backoff = dur(
            "jobs.retry_backoff",
            raw.jobs.retry_backoff.as_deref().unwrap_or("500ms"),
        );
        let result_ttl = dur(
            "jobs.result_ttl",
            raw.jobs.result_ttl.as_deref().unwrap_or("7d"),
        );
        if !(raw.warm.ratio.is_finite() && raw.warm.ratio >= 0.0) {
            problems.push(format!("plans.{name}.warm.ratio must be a number >= 0"));
        }
        if raw.warm.min > raw.warm.max {
            problems.push(format!(
                "plans.{name}.warm.min ({}) is above max ({})",
                raw.warm.min, raw.warm.max
            ));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || name.is_empty()
            || name.len() > 40
        {
            problems.push(format!(
                "plan name {name:?}: use letters, digits and '-', at most 40"
            ));
        }
        for (what, q) in [
            ("cpu_request", &raw.resources.cpu_request),
            ("cpu_limit", &raw.resources.cpu_limit),
            ("memory_request", &raw.resources.memory_request),
            ("memory_limit", &raw.resources.memory_limit),
            ("ephemeral_storage", &raw.resources.ephemeral_storage),
        ] {
            if !q.is_empty() && !is_quantity(q) {
                problems.push(format!(
                    "plans.{name}.resources.{what}: {q:?} is not a Kubernetes quantity (250m, 1, 512Mi, 2Gi)"
                ));
            }
        }
        if raw.kernel.is_empty()
            || !raw
                .kernel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            problems.push(format!(
                "plans.{name}.kernel {:?}: a kernelspec name is letters, digits, '.', '_' and '-'",
                raw.kernel
            ));
        }
        for dir in &raw.kernel_path {
            if !dir.starts_with('/') || dir.contains(':') {
                problems.push(format!(
                    "plans.{name}.kernel_path: {dir:?} is not an absolute path without ':'"
                ));
            }
        }
        let sandbox = match raw.sandbox.as_deref().unwrap_or("none").parse() {
            Ok(level) => level,
            Err(e) => {
                problems.push(format!("plans.{name}.sandbox: {e}"));
                kernel_sandbox::Level::None
            }
        };
        let j = &raw.jobs;
        let jobs = JobsPolicy {
            concurrency: j.concurrency.unwrap_or(8),
            max_attempts: j.max_attempts.unwrap_or(3),
            retry_backoff,
            result_ttl,
            max_code_bytes: j.max_code_kib.unwrap_or(256) * 1024,
            max_notebook_bytes: j.max_notebook_kib.unwrap_or(4096).saturating_mul(1024),
            user_concurrent_runs: j.user_concurrent_runs.unwrap_or(4),
            user_runs_per_day: j.user_runs_per_day.unwrap_or(1000),
            user_cpu_seconds_per_day: j.user_cpu_seconds_per_day.unwrap_or(0),
        };
        if jobs.concurrency == 0 || jobs.max_attempts == 0 || jobs.max_attempts > 10 {
            problems.push(format!(
                "plans.{name}.jobs: concurrency must be at least 1 and max_attempts 1-10"
            ));
        }
        if jobs.result_ttl.is_zero() || jobs.max_code_bytes == 0 || jobs.max_code_bytes > 4 << 20 {
            problems.push(format!(
                "plans.{name}.jobs: result_ttl must be above 0 and max_code_kib 1-4096"
            ));
        }
        if jobs.max_notebook_bytes == 0 || jobs.max_notebook_bytes > MAX_NOTEBOOK_BYTES {
            problems.push(format!(
                "plans.{name}.jobs: max_notebook_kib must be 1-{}",
                MAX_NOTEBOOK_BYTES / 1024
            ));
        }
        let limits = ExecutionLimits {
            execution_timeout,
            max_output_bytes: raw.limits.max_output_bytes.unwrap_or(4 * 1024 * 1024),
            memory_mib: raw.limits.memory_mib.unwrap_or(1024),
            js_heap_mib: raw.limits.js_heap_mib.unwrap_or(0),
            max_processes: raw.limits.max_processes.unwrap_or(64),
            max_open_files: raw.limits.max_open_files.unwrap_or(1024),
            workspace_mib: raw.limits.workspace_mib.unwrap_or(1024),
            checkpoint_name_mib: raw.limits.checkpoint_name_mib.unwrap_or(1024),
            checkpoint_mib: raw.limits.checkpoint_mib.unwrap_or(4096),
            checkpoint_files_mib: raw.limits.checkpoint_files_mib.unwrap_or(1024),
        };
        plans.insert(
            name.clone(),
            Plan {
                name,
                kernel: raw.kernel,
                kernel_path: raw.kernel_path.into_iter().map(PathBuf::from).collect(),
                image: raw.image,
                resources: raw.resources,
                node_selector: raw.node_selector,
                tolerations: raw.tolerations,
                runtime_class: raw.runtime_class,
                warm: raw.warm,
                idle_timeout,
                max_lifetime,
                checkpoint_ttl,
                limits,
                sandbox,
                jobs,
            },
        );
    }
    if problems.is_empty() {
        Ok(plans)
    } else {
        Err(PlanError::Invalid {
            path: path.into(),
            problems,
        })
    }
}

/// Reads and validates a plans file.
pub fn load_plans(path: &std::path::Path) -> Result<BTreeMap<String, Plan>, PlanError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_plans(&shown, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../plans.example.toml");

    #[test]
    fn example_parses() {
        let plans = parse_plans("example", EXAMPLE).unwrap();
        assert!(plans.contains_key("free"));
        assert_eq!(plans["free"].kernel, "python3");
    }

    #[test]
    fn checkpoint_limits_and_expiry_are_the_plans() {
        let plans = parse_plans(
            "t",
            "[plans.a]\nwarm = { ratio = 0.0, min = 0, max = 0 }\ncheckpoint_ttl = \"2d\"\n\
             [plans.a.limits]\ncheckpoint_name_mib = 8\ncheckpoint_mib = 64\ncheckpoint_files_mib = 0\n\
             [plans.b]\nwarm = { ratio = 0.0, min = 0, max = 0 }\n",
        )
        .unwrap();
        let a = &plans["a"];
        assert_eq!(a.checkpoint_ttl, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(
            a.limits.checkpoint_args(),
            [
                "--checkpoint-max-name-mib",
                "8",
                "--checkpoint-max-mib",
                "64",
                "--checkpoint-max-files-mib",
                "0"
            ]
        );
        let b = &plans["b"];
        assert_eq!(b.checkpoint_ttl, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            (
                b.limits.checkpoint_name_mib,
                b.limits.checkpoint_mib,
                b.limits.checkpoint_files_mib
            ),
            (1024, 4096, 1024)
        );
    }

    #[test]
    fn target_formula() {
        let mut p = parse_plans("example", EXAMPLE)
            .unwrap()
            .remove("free")
            .unwrap();
        p.warm = WarmPolicy {
            ratio: 0.2,
            min: 2,
            max: 10,
        };
        assert_eq!(p.target_warm(0), 2);
        assert_eq!(p.target_warm(11), 3); // ceil(2.2)
        assert_eq!(p.target_warm(1000), 10);
    }

    #[test]
    fn cpus_from_the_cpu_limit() {
        let mut p = parse_plans("example", EXAMPLE)
            .unwrap()
            .remove("free")
            .unwrap();
        for (limit, cpus) in [
            ("1", 1.0),
            ("500m", 0.5),
            ("2.5", 2.5),
            ("", 0.0),
            ("x", 0.0),
        ] {
            p.resources.cpu_limit = limit.into();
            assert_eq!(p.cpus(), cpus, "{limit}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let bad = r#"
[plans.a]
warm = { ratio = -1.0, min = 5, max = 2 }
idle_timeout = "soon"
sandbox = "paranoid"
[plans."b c"]
warm = { ratio = 1.0, min = 0, max = 1 }
"#;
        match parse_plans("bad", bad) {
            Err(PlanError::Invalid { problems, .. }) => {
                assert_eq!(problems.len(), 5, "{problems:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_plans(
                "x",
                "[plans.a]\nwarm = { ratio = 1.0, min = 0, max = 1 }\ncolour = 1"
            ),
            Err(PlanError::Parse { .. })
        ));
    }

    #[test]
    fn a_plan_names_its_kernels_environment() {
        let plans = parse_plans(
            "envs",
            r#"
[plans.default]
warm = { ratio = 0.0, min = 0, max = 1 }
[plans.geo]
kernel = "geo-3.11"
kernel_path = ["/opt/envs/geo/share/jupyter", "/srv/jupyter"]
image = "registry.example.com/middleman-geo:1"
warm = { ratio = 0.0, min = 0, max = 1 }
"#,
        )
        .unwrap();
        assert_eq!(plans["default"].kernel_args(), ["--kernel", "python3"]);
        assert!(plans["default"].image.is_empty());
        let geo = &plans["geo"];
        assert_eq!(
            geo.kernel_args(),
            [
                "--kernel",
                "geo-3.11",
                "--kernel-path",
                "/opt/envs/geo/share/jupyter:/srv/jupyter"
            ]
        );
        assert_eq!(geo.image, "registry.example.com/middleman-geo:1");

        let bad = r#"
[plans.a]
kernel = "../python3"
kernel_path = ["share/jupyter", "/a:/b"]
warm = { ratio = 0.0, min = 0, max = 1 }
"#;
        match parse_plans("bad", bad) {
            Err(PlanError::Invalid { problems, .. }) => {
                assert_eq!(problems.len(), 3, "{problems:?}");
                assert!(problems[0].contains("kernelspec name"), "{problems:?}");
                assert!(problems[1].contains("\"share/jupyter\""), "{problems:?}");
                assert!(problems[2].contains("\"/a:/b\""), "{problems:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
