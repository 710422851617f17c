//! The checkpoint's manifest and the decisions made from it (pure: no I/O). The manifest says,
//! for one document, which of the kernel's names can be restored (an object by its SHA-256, or a
//! module imported by name), which must be rebuilt by running their cell again and why, and it
//! is bound to its document. The kernel's reports are applied to it here, checked first: a
//! kernel is not trusted, so a report that is not well formed changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// The manifest's format; a manifest of another version is not used.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The document it belongs to: a checkpoint is never restored into another.
    pub document: String,
    /// Names that can be restored.
    pub names: BTreeMap<String, Saved>,
    /// Names that cannot, and why: their cells run again on resume.
    pub recompute: BTreeMap<String, Recompute>,
    /// Workspace files, by their path in the workspace (`files.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, SavedFile>,
    /// Workspace files not kept, and why (past the cap).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files_skipped: BTreeMap<String, String>,
}

/// A workspace file's bytes, stored by their SHA-256 like a name's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    pub sha256: String,
    pub bytes: u64,
}

/// A restorable name and the cell that last defined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    #[serde(flatten)]
    pub object: Object,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Object {
    /// cloudpickle's bytes, stored by their SHA-256 (lowercase hex).
    Pickle { sha256: String, bytes: u64 },
    /// A module, imported again by name.
    Module { module: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recompute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    pub reason: String,
}

/// One name of the kernel's `checkpoint_save` report.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reported {
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Reported {
    /// A name to rebuild on resume, and why.
    pub fn recompute(name: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: "recompute".to_owned(),
            sha256: None,
            bytes: None,
            module: None,
            reason: Some(reason.to_owned()),
        }
    }
}

/// What a report asks of the store: objects to upload (SHA-256, bytes).
pub type Uploads = Vec<(String, u64)>;

/// Whether `name` can be a Python global (ASCII identifiers; the kernel's reports are checked).
pub fn is_python_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256
}

pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Longest reason kept from a kernel's report.
const MAX_REASON: usize = 300;

impl Manifest {
    pub fn new(document: &str) -> Self {
        Self {
            version: VERSION,
            document: document.to_owned(),
            ..Self::default()
        }
    }

    /// Bytes of every stored object the manifest names.
    pub fn bytes(&self) -> u64 {
        self.names
            .values()
            .map(|s| match &s.object {
                Object::Pickle { bytes, .. } => *bytes,
                Object::Module { .. } => 0,
            })
            .sum()
    }

    /// Every object the manifest names (names' and files').
    pub fn objects(&self) -> BTreeSet<&str> {
        self.names
            .values()
            .filter_map(|s| match &s.object {
                Object::Pickle { sha256, .. } => Some(sha256.as_str()),
                Object::Module { .. } => None,
            })
            .chain(self.files.values().map(|f| f.sha256.as_str()))
            .collect()
    }

    /// Applies a save's report for `cell` (none for the whole namespace at shutdown). A report
    /// of the whole namespace (`full`) also drops names it does not mention (deleted). Objects
    /// that would take the manifest past `max_bytes` are not kept: their names are recomputed.
    /// Returns the objects new to the manifest, which must be uploaded before it is written.
    pub fn apply(
        &mut self,
        cell: Option<&str>,
        report: &[Reported],
        full: bool,
        max_bytes: u64,
    ) -> Uploads {
        let known: BTreeSet<String> = self.objects().into_iter().map(str::to_owned).collect();
        let mut uploads: Uploads = Vec::new();
        let mut seen = BTreeSet::new();
        for r in report {
            if !is_python_name(&r.name) {
                continue;
            }
            seen.insert(r.name.clone());
            let cell = cell
                .map(str::to_owned)
                .or_else(|| self.cell_of(&r.name).map(str::to_owned));
            match (r.status.as_str(), &r.sha256, r.bytes, &r.module) {
                ("saved" | "unchanged", Some(sha), Some(bytes), _) if is_sha256(sha) => {
                    let previous = self.names.remove(&r.name);
                    let fits = self.bytes() + bytes <= max_bytes;
                    if !fits {
                        self.recompute.insert(
                            r.name.clone(),
                            Recompute {
                                cell,
                                reason: format!(
                                    "the document's checkpoint would pass its limit of {max_bytes} bytes"
                                ),
                            },
                        );
                        continue;
                    }
                    let stored = known.contains(sha.as_str())
                        || uploads.iter().any(|(s, _)| s == sha)
                        || previous.is_some_and(
                            |p| matches!(&p.object, Object::Pickle { sha256, .. } if sha256 == sha),
                        );
                    if !stored {
                        uploads.push((sha.clone(), bytes));
                    }
                    self.recompute.remove(&r.name);
                    self.names.insert(
                        r.name.clone(),
                        Saved {
                            cell,
                            object: Object::Pickle {
                                sha256: sha.clone(),
                                bytes,
                            },
                        },
                    );
                }
                ("module", _, _, Some(module))
                    if module.split('.').all(is_python_name) && !module.is_empty() =>
                {
                    self.recompute.remove(&r.name);
                    self.names.insert(
                        r.name.clone(),
                        Saved {
                            cell,
                            object: Object::Module {
                                module: module.clone(),
                            },
                        },
                    );
                }
                ("recompute", ..) => {
                    self.names.remove(&r.name);
                    let reason = r
                        .reason
                        .as_deref()
                        .unwrap_or("it could not be saved")
                        .chars()
                        .take(MAX_REASON)
                        .collect();
                    self.recompute
                        .insert(r.name.clone(), Recompute { cell, reason });
                }
                ("absent", ..) => {
                    self.names.remove(&r.name);
                    self.recompute.remove(&r.name);
                }
                // Malformed: the name keeps what the manifest had.
                _ => {}
            }
        }
        if full {
            self.names.retain(|n, _| seen.contains(n));
            self.recompute.retain(|n, _| seen.contains(n));
        }
        uploads
    }

    /// An object could not be stored: the names that need it are recomputed.
    pub fn lost_object(&mut self, sha: &str, reason: &str) {
        let names: Vec<String> = self
            .names
            .iter()
            .filter(|(_, s)| matches!(&s.object, Object::Pickle { sha256, .. } if sha256 == sha))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if let Some(saved) = self.names.remove(&name) {
                self.recompute.insert(
                    name,
                    Recompute {
                        cell: saved.cell,
                        reason: reason.to_owned(),
                    },
                );
            }
        }
    }

    fn cell_of(&self, name: &str) -> Option<&str> {
        self.names
            .get(name)
            .and_then(|s| s.cell.as_deref())
            .or_else(|| self.recompute.get(name).and_then(|r| r.cell.as_deref()))
    }
}

/// A code cell as the resume plan sees it, in document order.
#[derive(Debug, Clone)]
pub struct PlanCell<'a> {
    pub id: &'a str,
    pub defs: &'a BTreeSet<String>,
    pub refs: &'a BTreeSet<String>,
    /// It ran, and succeeded, in the kernel the checkpoint was taken from: what it defined was
    /// in that kernel.
    pub ran: bool,
}

/// What a resume runs again, in order, and what it cannot bring back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rerun {
    /// Cell ids in document order among independent cells, each after the cells it needs,
    /// with the names each rebuilds and why.
    pub cells: Vec<(String, Vec<String>, String)>,
    /// Names no cell defines any more: (name, cell, reason).
    pub lost: Vec<(String, Option<String>, String)>,
}

/// The cells to run again after a restore: those that define a name that was not restored
/// (`missing`: name to reason) or that ran and defined names the checkpoint does not have
/// (killed before their checkpoint), and the cells those need for names that are not back
/// either. `order` puts a set of cell ids in dependency order (the graph's).
pub fn rerun(
    cells: &[PlanCell<'_>],
    manifest: &Manifest,
    missing: &BTreeMap<String, (Option<String>, String)>,
    order: impl Fn(&std::collections::HashSet<String>) -> Vec<String>,
) -> Rerun {
    let restored = |name: &str| manifest.names.contains_key(name) && !missing.contains_key(name);
    // Names to rebuild, with why, and the cell each is rebuilt by.
    let mut rebuild: BTreeMap<String, String> = BTreeMap::new();
    let mut by_cell: HashMap<&str, Vec<String>> = HashMap::new();
    let mut why: HashMap<&str, String> = HashMap::new();
    let mut lost = Vec::new();
    let definer = |name: &str, hint: Option<&str>| -> Option<&PlanCell<'_>> {
        hint.and_then(|h| cells.iter().find(|c| c.id == h && c.defs.contains(name)))
            .or_else(|| cells.iter().rev().find(|c| c.defs.contains(name)))
    };
    for (name, (cell, reason)) in missing {
        rebuild.insert(name.clone(), reason.clone());
        match definer(name, cell.as_deref()) {
            Some(c) => {
                by_cell.entry(c.id).or_default().push(name.clone());
                why.entry(c.id).or_insert_with(|| reason.clone());
            }
            None => lost.push((
                name.clone(),
                cell.clone(),
                format!("{reason}; no cell defines it any more"),
            )),
        }
    }
    for c in cells.iter().filter(|c| c.ran) {
        let absent: Vec<String> = c
            .defs
            .iter()
            .filter(|n| {
                !restored(n) && !manifest.recompute.contains_key(*n) && !missing.contains_key(*n)
            })
            .cloned()
            .collect();
        if !absent.is_empty() {
            why.entry(c.id)
                .or_insert_with(|| "it ran after the last checkpoint".to_owned());
            by_cell.entry(c.id).or_default().extend(absent);
        }
    }
    // What the chosen cells need and is not back: the cells defining it, transitively.
    let mut chosen: std::collections::HashSet<String> =
        by_cell.keys().map(|s| (*s).to_owned()).collect();
    let mut stack: Vec<String> = chosen.iter().cloned().collect();
    while let Some(id) = stack.pop() {
        let Some(cell) = cells.iter().find(|c| c.id == id) else {
            continue;
        };
        for name in cell.refs.iter().filter(|n| !restored(n)) {
            if let Some(d) = cells
                .iter()
                .take_while(|c| c.id != cell.id)
                .filter(|c| c.defs.contains(name))
                .last()
                .filter(|d| d.ran || rebuild.contains_key(name))
                && chosen.insert(d.id.to_owned())
            {
                why.entry(d.id)
                    .or_insert_with(|| format!("cell {} needs {name}", cell.id));
                stack.push(d.id.to_owned());
            }
        }
    }
    let cells_out = order(&chosen)
        .into_iter()
        .map(|id| {
            let names = by_cell.get(id.as_str()).cloned().unwrap_or_default();
            let reason = why.get(id.as_str()).cloned().unwrap_or_default();
            (id, names, reason)
        })
        .collect();
    Rerun {
        cells: cells_out,
        lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(name: &str, sha: char, bytes: u64) -> Reported {
        Reported {
            name: name.into(),
            status: "saved".into(),
            sha256: Some(sha.to_string().repeat(64)),
            bytes: Some(bytes),
            module: None,
            reason: None,
        }
    }

    fn recompute(name: &str, reason: &str) -> Reported {
        Reported {
            name: name.into(),
            status: "recompute".into(),
            sha256: None,
            bytes: None,
            module: None,
            reason: Some(reason.into()),
        }
    }

    #[test]
    fn a_report_updates_names_and_asks_only_for_new_objects() {
        let mut m = Manifest::new("doc");
        let up = m.apply(
            Some("c1"),
            &[saved("x", 'a', 10), saved("y", 'a', 10)],
            false,
            1000,
        );
        assert_eq!(up, vec![("a".repeat(64), 10)]);
        let up = m.apply(
            Some("c2"),
            &[saved("x", 'a', 10), recompute("g", "TypeError")],
            false,
            1000,
        );
        assert!(up.is_empty());
        assert_eq!(m.names["x"].cell.as_deref(), Some("c2"));
        assert_eq!(m.recompute["g"].reason, "TypeError");
        // The name comes back once it can be saved.
        m.apply(Some("c2"), &[saved("g", 'b', 5)], false, 1000);
        assert!(!m.recompute.contains_key("g"));
        assert_eq!(m.bytes(), 25);
    }

    #[test]
    fn malformed_reports_change_nothing() {
        let mut m = Manifest::new("doc");
        m.apply(Some("c"), &[saved("x", 'a', 10)], false, 1000);
        let before = m.clone();
        let mut bad = saved("x", 'a', 10);
        bad.sha256 = Some("../../etc/passwd".into());
        let mut module = saved("os", 'a', 1);
        module.status = "module".into();
        module.module = Some("os; rm -rf".into());
        let up = m.apply(
            Some("c"),
            &[
                bad,
                saved("not a name", 'b', 1),
                saved("a/b", 'b', 1),
                module,
            ],
            false,
            1000,
        );
        assert!(up.is_empty());
        assert_eq!(m, before);
    }

    #[test]
    fn the_document_limit_makes_names_recompute() {
        let mut m = Manifest::new("doc");
        m.apply(Some("c"), &[saved("x", 'a', 600)], false, 1000);
        let up = m.apply(Some("d"), &[saved("y", 'b', 600)], false, 1000);
        assert!(up.is_empty());
        assert!(m.recompute["y"].reason.contains("limit of 1000 bytes"));
        // Replacing a name frees what it held.
        let up = m.apply(Some("c"), &[saved("x", 'c', 900)], false, 1000);
        assert_eq!(up.len(), 1);
    }

    #[test]
    fn a_full_save_forgets_deleted_names() {
        let mut m = Manifest::new("doc");
        m.apply(
            Some("c"),
            &[saved("x", 'a', 1), saved("y", 'b', 1)],
            false,
            1000,
        );
        m.apply(None, &[saved("x", 'a', 1)], true, 1000);
        assert!(m.names.contains_key("x") && !m.names.contains_key("y"));
        assert_eq!(m.names["x"].cell.as_deref(), Some("c"), "the cell is kept");
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn doc_order(
        ids: &'static [&'static str],
    ) -> impl Fn(&std::collections::HashSet<String>) -> Vec<String> {
        move |chosen| {
            ids.iter()
                .filter(|i| chosen.contains(**i))
                .map(|i| (*i).to_owned())
                .collect()
        }
    }

    #[test]
    fn only_the_cells_of_what_was_not_restored_run_again_with_what_they_need() {
        // a: data = load(); b: g = (x for x in data); c: model = fit(data); d: n = next(g)
        let (da, db, dc, dd) = (set(&["data"]), set(&["g"]), set(&["model"]), set(&["n"]));
        let (ra, rb, rc, rd) = (set(&[]), set(&["data"]), set(&["data"]), set(&["g"]));
        let cells = [
            PlanCell {
                id: "a",
                defs: &da,
                refs: &ra,
                ran: true,
            },
            PlanCell {
                id: "b",
                defs: &db,
                refs: &rb,
                ran: true,
            },
            PlanCell {
                id: "c",
                defs: &dc,
                refs: &rc,
                ran: true,
            },
            PlanCell {
                id: "d",
                defs: &dd,
                refs: &rd,
                ran: true,
            },
        ];
        let mut m = Manifest::new("doc");
        m.apply(Some("a"), &[saved("data", 'a', 1)], false, 100);
        m.apply(
            Some("b"),
            &[recompute(
                "g",
                "TypeError: cannot pickle 'generator' object",
            )],
            false,
            100,
        );
        m.apply(Some("c"), &[saved("model", 'c', 1)], false, 100);
        m.apply(Some("d"), &[saved("n", 'd', 1)], false, 100);
        let mut missing = BTreeMap::new();
        for (n, r) in &m.recompute {
            missing.insert(n.clone(), (r.cell.clone(), r.reason.clone()));
        }
        let plan = rerun(&cells, &m, &missing, doc_order(&["a", "b", "c", "d"]));
        assert_eq!(
            plan.cells,
            vec![(
                "b".to_owned(),
                vec!["g".to_owned()],
                "TypeError: cannot pickle 'generator' object".to_owned()
            )]
        );
        // `data` fails to load as well: a runs first, and b after it.
        missing.insert("data".into(), (Some("a".into()), "EOFError".into()));
        let plan = rerun(&cells, &m, &missing, doc_order(&["a", "b", "c", "d"]));
        let ids: Vec<&str> = plan.cells.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn cells_that_ran_after_the_last_checkpoint_run_again_and_gone_names_are_lost() {
        let (da, db) = (set(&["x"]), set(&["y"]));
        let (ra, rb) = (set(&[]), set(&["x"]));
        let cells = [
            PlanCell {
                id: "a",
                defs: &da,
                refs: &ra,
                ran: true,
            },
            PlanCell {
                id: "b",
                defs: &db,
                refs: &rb,
                ran: true,
            },
        ];
        let mut m = Manifest::new("doc");
        m.apply(Some("a"), &[saved("x", 'a', 1)], false, 100);
        let mut missing = BTreeMap::new();
        missing.insert(
            "z".to_owned(),
            (Some("gone".to_owned()), "TypeError".to_owned()),
        );
        let plan = rerun(&cells, &m, &missing, doc_order(&["a", "b"]));
        assert_eq!(plan.cells.len(), 1);
        assert_eq!(plan.cells[0].0, "b");
        assert_eq!(plan.cells[0].2, "it ran after the last checkpoint");
        assert_eq!(plan.lost.len(), 1);
        assert_eq!(plan.lost[0].0, "z");
    }
}
