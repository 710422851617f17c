//! Leftovers of processes that died without cleaning up: directories (cgroups, runtime
//! directories) named `<prefix><pid>-...` after the process that made them.

use std::path::{Path, PathBuf};

/// The entries of `dir` named `<prefix><pid>-...` whose process no longer runs (never the
/// calling process's own).
pub fn of_dead_processes(dir: &Path, prefix: &str) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry
                .file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .split('-')
                .next()?
                .parse::<u32>()
                .ok()?;
            let dead =
                pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists();
            dead.then(|| (entry.path(), pid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_owners_and_matching_names() {
        let dir = std::env::temp_dir().join(format!("sbx-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A pid beyond pid_max cannot run; our own pid does.
        for name in [
            "mm-4194305-a".to_owned(),
            format!("mm-{}-b", std::process::id()),
            "other-4194305-c".to_owned(),
            "mm-notapid-d".to_owned(),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        let found = of_dead_processes(&dir, "mm-");
        assert_eq!(found, vec![(dir.join("mm-4194305-a"), 4_194_305)]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
