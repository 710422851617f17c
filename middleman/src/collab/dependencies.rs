//! The document's dependency graph, kept current as its code and SQL cells change: each cell's
//! analysis (in the kernel's language, Python or JavaScript/TypeScript, or SQL's:
//! `crate::sql`) is cached with the kind and source it was made from, so an edit re-analyses
//! only the edited cell and rebuilds the graph reusing what did not change. It reports what the
//! reactor needs to know: which cells were edited, which were deleted, the names only those
//! defined, and what depended on them.

use std::collections::{HashMap, HashSet};

use crate::document::CellKind;
use crate::graph::{CellAnalysis, Graph, GraphRule, Language, analyse_for};

/// What changed in the graph after an edit.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Regraphed {
    /// The graph as clients see it changed (announce it).
    pub(super) changed: bool,
    /// Code cells whose source changed, with the new source, in document order.
    pub(super) edited: Vec<(String, String)>,
    /// Code cells that are gone (deleted, or no longer code).
    pub(super) deleted: Vec<String>,
    /// The global names only the deleted cells defined.
    pub(super) names: Vec<String>,
    /// The cells still present that depended on the deleted ones.
    pub(super) dependents: Vec<String>,
    /// Cells not edited whose parents changed (a move, the rule, another cell's edit that
    /// takes or gives up a definition between them and their old parent).
    pub(super) reparented: Vec<String>,
}

/// Analyses and graph of the document's code cells.
#[derive(Debug, Default)]
pub(super) struct Dependencies {
    /// Each code cell's analysis, with the kind and source it was made from.
    analyses: HashMap<String, ((CellKind, String), CellAnalysis)>,
    pub(super) graph: Graph,
    /// The rule and the code cells' order the graph was built with.
    rule: GraphRule,
    order: Vec<String>,
    /// The language code cells are analysed in: the kernel's (a document's kernel does not
    /// change language).
    language: Language,
}

impl Dependencies {
    /// The graph of a document whose code cells are in `language`.
    pub(super) fn new(language: Language) -> Self {
        Self {
            language,
            ..Self::default()
        }
    }

    /// The language code cells are analysed in.
    pub(super) fn language(&self) -> Language {
        self.language
    }

    /// Brings the graph up to date with `sources` (every cell, in document order) under `rule`.
    /// `None` when no code cell, their order or the rule changed.
    pub(super) fn update(
        &mut self,
        sources: &[(String, CellKind, String)],
        rule: GraphRule,
    ) -> Option<Regraphed> {
        let mut edited = Vec::new();
        let mut present = HashSet::new();
        for (id, kind, source) in sources {
            if !kind.runs() {
                continue;
            }
            present.insert(id.clone());
            if self
                .analyses
                .get(id)
                .is_none_or(|((k, s), _)| k != kind || s != source)
            {
                let analysis = match kind {
                    CellKind::Sql => crate::sql::analyse(source),
                    _ => analyse_for(self.language, source),
                };
                self.analyses
                    .insert(id.clone(), ((*kind, source.clone()), analysis));
                edited.push((id.clone(), source.clone()));
            }
        }
        let removed: Vec<(String, Vec<String>)> = self
            .analyses
            .iter()
            .filter(|(id, _)| !present.contains(*id))
            .map(|(id, (_, a))| (id.clone(), a.defs.iter().cloned().collect()))
            .collect();
        let order: Vec<&String> = sources
            .iter()
            .filter(|(_, kind, _)| kind.runs())
            .map(|(id, _, _)| id)
            .collect();
        let order_changed = !order.iter().copied().eq(self.order.iter());
        if edited.is_empty() && removed.is_empty() && !order_changed && rule == self.rule {
            return None;
        }
        self.rule = rule;
        self.order = order.into_iter().cloned().collect();
        // What depended on a deleted cell, from the graph it was still in (one walk for all of
        // them: an import replaces thousands at once).
        let removed_ids: Vec<&str> = removed.iter().map(|(id, _)| id.as_str()).collect();
        let mut dependents = self.graph.descendants_of_all(&removed_ids);
        for (id, _) in &removed {
            self.analyses.remove(id);
        }
        let order: Vec<(&str, &CellAnalysis)> = sources
            .iter()
            .filter_map(|(id, _, _)| self.analyses.get(id).map(|(_, a)| (id.as_str(), a)))
            .collect();
        let changed_ids: HashSet<&str> = edited.iter().map(|(id, _)| id.as_str()).collect();
        let old_parents: HashMap<String, Vec<String>> = self
            .graph
            .cells()
            .iter()
            .map(|c| (c.id.clone(), c.parents.clone()))
            .collect();
        let (graph, changed) = Graph::rebuild(
            std::mem::take(&mut self.graph),
            &order,
            |id| changed_ids.contains(id),
            rule,
        );
        self.graph = graph;
        let reparented: Vec<String> = self
            .graph
            .cells()
            .iter()
            .filter(|c| {
                !changed_ids.contains(c.id.as_str())
                    && old_parents.get(&c.id).is_some_and(|p| *p != c.parents)
            })
            .map(|c| c.id.clone())
            .collect();
        let still_defined: HashSet<&str> = self
            .analyses
            .values()
            .flat_map(|(_, a)| a.defs.iter().map(String::as_str))
            .collect();
        let mut names: Vec<String> = removed
            .iter()
            .flat_map(|(_, defs)| defs.iter())
            .filter(|n| !still_defined.contains(n.as_str()))
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        dependents.retain(|c| present.contains(c));
        dependents.dedup();
        Some(Regraphed {
            changed,
            edited,
            deleted: removed.into_iter().map(|(id, _)| id).collect(),
            names,
            dependents,
            reparented,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(cells: &[(&str, &str)]) -> Vec<(String, CellKind, String)> {
        cells
            .iter()
            .map(|(id, src)| ((*id).to_owned(), CellKind::Code, (*src).to_owned()))
            .collect()
    }

    impl Dependencies {
        fn update_strict(&mut self, sources: &[(String, CellKind, String)]) -> Option<Regraphed> {
            self.update(sources, GraphRule::Strict)
        }
    }

    #[test]
    fn a_move_reparents_under_the_positional_rule() {
        let mut deps = Dependencies::default();
        let positional = GraphRule::Positional;
        deps.update(
            &code(&[("a", "x = 1"), ("b", "x = 2"), ("c", "print(x)")]),
            positional,
        )
        .unwrap();
        assert!(
            deps.update(
                &code(&[("a", "x = 1"), ("b", "x = 2"), ("c", "print(x)")]),
                positional
            )
            .is_none()
        );
        let moved = deps
            .update(
                &code(&[("b", "x = 2"), ("a", "x = 1"), ("c", "print(x)")]),
                positional,
            )
            .unwrap();
        assert!(moved.changed && moved.edited.is_empty());
        assert_eq!(moved.reparented, ["c"]);
        assert_eq!(deps.graph.get("c").unwrap().parents, ["a"]);
        // The same cells under the strict rule: x is defined twice.
        let strict = deps
            .update(
                &code(&[("b", "x = 2"), ("a", "x = 1"), ("c", "print(x)")]),
                GraphRule::Strict,
            )
            .unwrap();
        assert!(strict.changed);
        assert!(deps.graph.get("a").unwrap().error.is_some());
    }

    #[test]
    fn only_what_changed_is_reported() {
        let mut deps = Dependencies::default();
        let first = deps
            .update_strict(&code(&[
                ("a", "x = 1"),
                ("b", "y = x + 1"),
                ("c", "print(y)"),
            ]))
            .unwrap();
        assert!(first.changed);
        assert_eq!(first.edited.len(), 3);
        assert!(
            deps.update_strict(&code(&[
                ("a", "x = 1"),
                ("b", "y = x + 1"),
                ("c", "print(y)")
            ]))
            .is_none()
        );
        let edit = deps
            .update_strict(&code(&[
                ("a", "x = 2"),
                ("b", "y = x + 1"),
                ("c", "print(y)"),
            ]))
            .unwrap();
        assert_eq!(edit.edited, vec![("a".to_owned(), "x = 2".to_owned())]);
        assert!(
            !edit.changed,
            "same names, same edges: clients need no new graph"
        );
    }

    #[test]
    fn code_cells_are_analysed_in_the_kernels_language() {
        let cells = code(&[
            ("a", "const rows = await load()"),
            ("b", "const total = rows.reduce((s, r) => s + r.v, 0)"),
        ]);
        let mut deps = Dependencies::new(Language::JavaScript);
        deps.update_strict(&cells).unwrap();
        assert_eq!(deps.graph.get("b").unwrap().parents, ["a"]);
        assert!(deps.graph.get("a").unwrap().error.is_none());
        assert!(deps.update_strict(&cells).is_none());
        // The same sources in a Python document do not parse.
        let mut python = Dependencies::new(Language::Python);
        python.update_strict(&cells).unwrap();
        assert!(python.graph.get("a").unwrap().error.is_some());
    }

    #[test]
    fn a_deleted_cell_reports_the_names_it_alone_defined_and_its_dependents() {
        let mut deps = Dependencies::default();
        deps.update_strict(&code(&[
            ("a", "x = 1\nz = 0"),
            ("b", "y = x + 1"),
            ("c", "print(y)"),
            ("d", "z = 5"),
        ]));
        let gone = deps
            .update_strict(&code(&[
                ("b", "y = x + 1"),
                ("c", "print(y)"),
                ("d", "z = 5"),
            ]))
            .unwrap();
        assert_eq!(gone.deleted, ["a"]);
        // `z` is still defined by d: only `x` leaves the kernel.
        assert_eq!(gone.names, ["x"]);
        assert_eq!(gone.dependents, ["b", "c"]);
        // A cell that stops being code is gone from the graph too.
        let mut sources = code(&[("b", "y = x + 1"), ("c", "print(y)")]);
        sources.push(("d".into(), CellKind::Markdown, "z = 5".into()));
        let gone = deps.update_strict(&sources).unwrap();
        assert_eq!(gone.deleted, ["d"]);
        assert_eq!(gone.names, ["z"]);
        assert!(gone.dependents.is_empty());
    }
}
