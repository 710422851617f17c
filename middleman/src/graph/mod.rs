//! The reactive cell graph: what each cell defines and references (static analysis with a
//! real parser: Python's in `analysis.rs`, JavaScript and TypeScript's in `javascript.rs`, the
//! document's kernel deciding which: [`Language`]), the dependency edges between cells (here),
//! and the rules that decide what runs (`reactor.rs`). Pure logic: no I/O, no kernel, no lock.
//! One file for the graph: its build and its walks share the index vectors.

pub mod analysis;
pub mod ipython;
pub mod javascript;
pub mod reactor;

pub use analysis::{CellAnalysis, analyse};
pub use doc_protocol::{GraphCell, GraphError, GraphRule};

use std::collections::{BTreeSet, HashMap};

/// The language of a document's code cells: its kernel's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Language {
    /// IPython (and every kernel that is not JavaScript's).
    #[default]
    Python,
    /// JavaScript or TypeScript, as Deno's kernel runs them.
    JavaScript,
}

impl Language {
    /// The language of a kernel whose `language` (its kernelspec's, or its `language_info`'s
    /// name) is `kernel_language`.
    pub fn of(kernel_language: &str) -> Self {
        match kernel_language.to_ascii_lowercase().as_str() {
            "typescript" | "javascript" | "ts" | "js" => Self::JavaScript,
            _ => Self::Python,
        }
    }
}

impl Language {
    /// The code that removes `names` from the kernel's globals when the only cell defining them
    /// is deleted. `None` in JavaScript: Deno runs cells as strict code whose top-level
    /// bindings (`let`, `const`, `class`, `function`, `var`, imports) cannot be removed, so
    /// they keep their last value in the kernel until it restarts.
    pub fn forget_code(self, names: &[String]) -> Option<String> {
        match self {
            Self::Python => {
                let list = serde_json::to_string(names).ok()?;
                Some(format!(
                    "for _n in {list}:\n    globals().pop(_n, None)\ndel _n"
                ))
            }
            Self::JavaScript => None,
        }
    }
}

/// Analyses a code cell written in `language`.
pub fn analyse_for(language: Language, source: &str) -> CellAnalysis {
    match language {
        Language::Python => analyse(source),
        Language::JavaScript => javascript::analyse(source),
    }
}

/// The dependency graph of a document's code cells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    cells: Vec<GraphCell>,
    index: HashMap<String, usize>,
    parent_idx: Vec<Vec<usize>>,
    child_idx: Vec<Vec<usize>>,
}

impl Graph {
    /// Builds the graph of `cells` (code cells in document order) under `rule`. An edge runs
    /// from the cell that defines a name to each cell that reads it: under the positional rule
    /// the nearest defining cell above the reader, under the strict rule the one defining cell.
    pub fn build(cells: &[(&str, &CellAnalysis)], rule: GraphRule) -> Self {
        Self::rebuild(Self::default(), cells, |_| true, rule).0
    }

    /// Like [`Self::build`], reusing what did not change in `prev` (an edit changes a few
    /// cells of the graph; the others are moved, not rebuilt). `edited` says which cells'
    /// analyses may differ from those `prev` was built from. Returns whether anything changed.
    pub fn rebuild(
        prev: Graph,
        cells: &[(&str, &CellAnalysis)],
        edited: impl Fn(&str) -> bool,
        rule: GraphRule,
    ) -> (Self, bool) {
        let n = cells.len();
        // Strict: the first definer of each name; names with several are kept apart (rare).
        let mut first: FastMap<&str, usize> = FastMap::default();
        let mut several: FastMap<&str, Vec<usize>> = FastMap::default();
        if rule == GraphRule::Strict {
            first.reserve(n * 2);
        }
        for (i, (_, a)) in cells
            .iter()
            .enumerate()
            .filter(|_| rule == GraphRule::Strict)
        {
            for d in &a.defs {
                match first.entry(d.as_str()) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(i);
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        several
                            .entry(d.as_str())
                            .or_insert_with(|| vec![*o.get()])
                            .push(i);
                    }
                }
            }
        }
        let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut errors: Vec<Option<GraphError>> = vec![None; n];
        let mut warnings: Vec<Vec<String>> = vec![Vec::new(); n];
        // Positional: the nearest definition above each cell, as the cells are walked in order;
        // names read before any definition, checked against the last definitions at the end.
        let mut above: FastMap<&str, usize> = FastMap::default();
        if rule == GraphRule::Positional {
            above.reserve(n * 2);
        }
        let mut unresolved: Vec<(usize, &str)> = Vec::new();
        for (i, (_, a)) in cells.iter().enumerate() {
            if let Some(message) = &a.error {
                errors[i] = Some(GraphError::Syntax {
                    message: message.clone(),
                });
            }
            if a.star_import {
                warnings[i].push("`import *` defines names the graph cannot see".to_owned());
            }
            match rule {
                GraphRule::Strict => {
                    for r in &a.refs {
                        let Some(&d) = first.get(r.as_str()) else {
                            continue;
                        };
                        match several.get(r.as_str()) {
                            None => {
                                if d != i {
                                    parents[i].push(d);
                                }
                            }
                            Some(ds) => parents[i].extend(ds.iter().copied().filter(|&d| d != i)),
                        }
                    }
                }
                GraphRule::Positional => {
                    for r in &a.refs {
                        match above.get(r.as_str()) {
                            Some(&d) => parents[i].push(d),
                            // Its own definition (read after it, or `x = x + 1` with
                            // nothing above) is no warning.
                            None if a.defs.contains(r) => {}
                            None => unresolved.push((i, r.as_str())),
                        }
                    }
                    for d in &a.defs {
                        above.insert(d.as_str(), i);
                    }
                }
            }
            parents[i].sort_unstable();
            parents[i].dedup();
            let (before, rest) = parents.split_at(i);
            debug_assert!(before.len() == i);
            for &p in &rest[0] {
                children[p].push(i);
            }
        }
        // Read here, defined only further down: the kernel has whatever ran last, and the graph
        // says so. (`above` now holds each name's last definition.)
        for (i, name) in unresolved {
            if above.get(name).is_some_and(|&d| d > i) {
                match warnings[i].last_mut() {
                    Some(w) if w.starts_with(BELOW) => {
                        w.push_str(", ");
                        w.push_str(name);
                    }
                    _ => warnings[i].push(format!("{BELOW}{name}")),
                }
            }
        }
        // Strict: a name defined in several cells is an error on each of them. (Under the
        // positional rule every edge points down the document, so there are no cycles either.)
        if rule == GraphRule::Strict && !several.is_empty() {
            for (i, (_, a)) in cells.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                let mut names = Vec::new();
                let mut others = BTreeSet::new();
                for d in &a.defs {
                    if let Some(ds) = several.get(d.as_str()) {
                        names.push(d.clone());
                        others.extend(ds.iter().filter(|&&j| j != i).copied());
                    }
                }
                if !names.is_empty() {
                    errors[i] = Some(GraphError::MultipleDefinitions {
                        names,
                        cells: others.iter().map(|&j| cells[j].0.to_owned()).collect(),
                    });
                }
            }
        }
        // Cycles: Kahn's algorithm finds whether any exist; Tarjan's names them only then.
        if rule == GraphRule::Strict && !acyclic(&parents, &children) {
            for scc in strongly_connected(&children) {
                if scc.len() > 1 {
                    let ids: Vec<String> = scc.iter().map(|&j| cells[j].0.to_owned()).collect();
                    for &j in &scc {
                        if errors[j].is_none() {
                            errors[j] = Some(GraphError::Cycle { cells: ids.clone() });
                        }
                    }
                }
            }
        }
        let same_ids =
            prev.cells.len() == n && prev.cells.iter().zip(cells).all(|(c, (id, _))| c.id == *id);
        let mut changed = !same_ids;
        let Graph {
            cells: prev_cells,
            index: prev_index,
            parent_idx: prev_parents,
            child_idx: prev_children,
        } = prev;
        let mut reusable: Vec<Option<GraphCell>> = if same_ids {
            prev_cells.into_iter().map(Some).collect()
        } else {
            Vec::new()
        };
        let out: Vec<GraphCell> = cells
            .iter()
            .enumerate()
            .map(|(i, (id, a))| {
                if let Some(old) = reusable.get_mut(i).and_then(Option::take)
                    && prev_parents[i] == parents[i]
                    && prev_children[i] == children[i]
                    && old.error == errors[i]
                    && old.warnings == warnings[i]
                    && (!edited(id)
                        || (old.defs.len() == a.defs.len()
                            && old.defs.iter().zip(&a.defs).all(|(x, y)| x == y)
                            && old.refs.iter().eq(a.refs.difference(&a.defs))))
                {
                    return old;
                }
                changed = true;
                GraphCell {
                    id: (*id).to_owned(),
                    defs: a.defs.iter().cloned().collect(),
                    refs: a.refs.difference(&a.defs).cloned().collect(),
                    parents: parents[i].iter().map(|&j| cells[j].0.to_owned()).collect(),
                    children: children[i].iter().map(|&j| cells[j].0.to_owned()).collect(),
                    error: errors[i].take(),
                    warnings: std::mem::take(&mut warnings[i]),
                }
            })
            .collect();
        let index = if same_ids {
            prev_index
        } else {
            out.iter()
                .enumerate()
                .map(|(i, c)| (c.id.clone(), i))
                .collect()
        };
        (
            Self {
                cells: out,
                index,
                parent_idx: parents,
                child_idx: children,
            },
            changed,
        )
    }

    /// Every cell, in document order.
    pub fn cells(&self) -> &[GraphCell] {
        &self.cells
    }

    pub fn get(&self, id: &str) -> Option<&GraphCell> {
        self.index.get(id).map(|&i| &self.cells[i])
    }

    /// The cells that depend on `id`, directly or not, in an order that runs every cell after
    /// the cells it depends on (document order among independent cells).
    pub fn descendants(&self, id: &str) -> Vec<String> {
        self.descendants_of_all(&[id])
    }

    /// The cells that depend on any of `ids` (themselves excluded), in dependency order: one
    /// walk for all of them.
    pub fn descendants_of_all(&self, ids: &[&str]) -> Vec<String> {
        self.topological(&self.reach(ids, &self.child_idx))
    }

    /// The cells `id` depends on, directly or not.
    pub fn ancestors(&self, id: &str) -> Vec<String> {
        self.ancestor_ids(id)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The ids of the cells `id` depends on, borrowed (the reactor asks for every cell it
    /// dispatches).
    pub fn ancestor_ids(&self, id: &str) -> Vec<&str> {
        let seen = self.reach(&[id], &self.parent_idx);
        (0..self.cells.len())
            .filter(|&i| seen[i])
            .map(|i| self.cells[i].id.as_str())
            .collect()
    }

    /// Which cells `ids` reach along `edges` (children or parents), themselves excluded.
    fn reach(&self, ids: &[&str], edges: &[Vec<usize>]) -> Vec<bool> {
        let mut seen = vec![false; self.cells.len()];
        let starts: Vec<usize> = ids
            .iter()
            .filter_map(|id| self.index.get(*id).copied())
            .collect();
        let mut stack = starts.clone();
        while let Some(i) = stack.pop() {
            for &j in &edges[i] {
                if !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        for i in starts {
            seen[i] = false;
        }
        seen
    }

    /// `ids` in dependency order.
    pub fn order_of(&self, ids: &std::collections::HashSet<String>) -> Vec<String> {
        let include: Vec<bool> = self.cells.iter().map(|c| ids.contains(&c.id)).collect();
        self.topological(&include)
    }

    /// The cells marked in `include`, ordered so that each comes after its parents.
    fn topological(&self, include: &[bool]) -> Vec<String> {
        let mut indegree: Vec<usize> = self
            .parent_idx
            .iter()
            .enumerate()
            .map(|(i, ps)| {
                if include[i] {
                    ps.iter().filter(|&&p| include[p]).count()
                } else {
                    0
                }
            })
            .collect();
        let mut ready: BTreeSet<usize> = (0..self.cells.len())
            .filter(|&i| include[i] && indegree[i] == 0)
            .collect();
        let mut order = Vec::new();
        while let Some(i) = ready.pop_first() {
            order.push(self.cells[i].id.clone());
            for &j in &self.child_idx[i] {
                if include[j] {
                    indegree[j] -= 1;
                    if indegree[j] == 0 {
                        ready.insert(j);
                    }
                }
            }
        }
        // Cells in a cycle never reach indegree 0; they do not run.
        order
    }
}

/// The start of the warning on a cell that reads names defined only below it.
const BELOW: &str = "defined only below this cell: ";

/// A map keyed by short names with FNV-1a hashing: much cheaper than SipHash for identifiers,
/// and the keys come from one document's own code.
type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Whether the graph has no cycle (Kahn's algorithm).
fn acyclic(parents: &[Vec<usize>], children: &[Vec<usize>]) -> bool {
    let mut indegree: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..parents.len()).filter(|&i| indegree[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(c);
            }
        }
    }
    done == parents.len()
}

/// Tarjan's strongly connected components (iterative).
fn strongly_connected(children: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = children.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        work.push((root, children[root].to_vec()));
        while let Some((v, pending)) = work.last_mut() {
            let v = *v;
            if let Some(w) = pending.pop() {
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, children[w].to_vec()));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some((parent, _)) = work.last() {
                low[*parent] = low[*parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut scc = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                scc.sort_unstable();
                out.push(scc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(cells: &[(&str, &str)], rule: GraphRule) -> Graph {
        let analyses: Vec<(String, CellAnalysis)> = cells
            .iter()
            .map(|(id, src)| ((*id).to_owned(), analyse(src)))
            .collect();
        let refs: Vec<(&str, &CellAnalysis)> =
            analyses.iter().map(|(id, a)| (id.as_str(), a)).collect();
        Graph::build(&refs, rule)
    }

    fn graph(cells: &[(&str, &str)]) -> Graph {
        build(cells, GraphRule::Strict)
    }

    fn build_in(language: Language, cells: &[(&str, &str)], rule: GraphRule) -> Graph {
        let analyses: Vec<(String, CellAnalysis)> = cells
            .iter()
            .map(|(id, src)| ((*id).to_owned(), analyse_for(language, src)))
            .collect();
        let refs: Vec<(&str, &CellAnalysis)> =
            analyses.iter().map(|(id, a)| (id.as_str(), a)).collect();
        Graph::build(&refs, rule)
    }

    #[test]
    fn the_kernels_language_picks_the_analysis() {
        for deno in ["typescript", "javascript", "TypeScript", "ts", "js"] {
            assert_eq!(Language::of(deno), Language::JavaScript, "{deno}");
        }
        for other in ["python", "Python 3", "sql", "R", ""] {
            assert_eq!(Language::of(other), Language::Python, "{other}");
        }
        assert_eq!(Language::default(), Language::Python);
        let js = analyse_for(Language::JavaScript, "const x = y");
        assert_eq!(js.defs.iter().collect::<Vec<_>>(), ["x"]);
        assert!(analyse_for(Language::Python, "const x = y").error.is_some());
    }

    #[test]
    fn forgetting_names_is_said_in_the_kernels_language() {
        let names = ["x".to_owned(), "rows".to_owned()];
        assert_eq!(
            Language::Python.forget_code(&names).as_deref(),
            Some("for _n in [\"x\",\"rows\"]:\n    globals().pop(_n, None)\ndel _n")
        );
        assert_eq!(Language::JavaScript.forget_code(&names), None);
    }

    /// A JavaScript document gets the edges, order, cycles and duplicate definitions a Python
    /// one gets, under both rules.
    #[test]
    fn a_javascript_document_builds_the_same_graph_as_python() {
        let js = Language::JavaScript;
        let g = build_in(
            js,
            &[
                ("c", "console.log(summary)"),
                (
                    "a",
                    "import * as d3 from \"npm:d3\"\nconst rows: Row[] = await load()",
                ),
                ("t", "interface Row { v: number }"),
                (
                    "b",
                    "const summary = d3.sum(rows, (r: Row) => r.v)\nfunction scale(k) { return summary * k }",
                ),
                (
                    "d",
                    "const view = rows.map((row) => ({ ...row, s: scale(row.v) }))",
                ),
            ],
            GraphRule::Strict,
        );
        assert_eq!(g.get("a").unwrap().parents, ["t"]);
        assert_eq!(g.get("b").unwrap().parents, ["a", "t"]);
        assert_eq!(g.get("c").unwrap().parents, ["b"]);
        assert_eq!(g.get("d").unwrap().parents, ["a", "b"]);
        assert_eq!(g.get("b").unwrap().refs, ["Row", "d3", "rows"]);
        // Each after what it reads: `c`, above `b` in the document, runs after it.
        assert_eq!(g.descendants("a"), ["b", "c", "d"]);
        assert!(g.cells().iter().all(|c| c.error.is_none()), "{g:?}");

        // The same cells as the Python test `edges_order_and_errors`, in JavaScript: the same
        // errors on the same cells.
        let python = graph(&[
            ("a", "x = 1"),
            ("b", "x = 2"),
            ("c", "p = q"),
            ("d", "q = p"),
        ]);
        let javascript = build_in(
            js,
            &[
                ("a", "let x = 1"),
                ("b", "x = 2"),
                ("c", "var p = q"),
                ("d", "var q = p"),
            ],
            GraphRule::Strict,
        );
        for id in ["a", "b", "c", "d"] {
            assert_eq!(
                javascript.get(id).unwrap().error,
                python.get(id).unwrap().error,
                "{id}"
            );
        }
        assert!(matches!(
            javascript.get("a").unwrap().error,
            Some(GraphError::MultipleDefinitions { ref names, ref cells }) if names == &["x"] && cells == &["b"]
        ));
        assert!(matches!(
            javascript.get("c").unwrap().error,
            Some(GraphError::Cycle { ref cells }) if cells == &["c", "d"]
        ));
        // A syntax error is a graph error, as in Python.
        let g = build_in(js, &[("a", "const = 1")], GraphRule::Strict);
        assert!(matches!(
            g.get("a").unwrap().error,
            Some(GraphError::Syntax { .. })
        ));

        // Positional: `x = x + 1` chains run in document order; reading a name defined only
        // below is a warning.
        let g = build_in(
            js,
            &[
                ("load", "let df = await load()"),
                ("clean", "df = df.filter((r) => r.ok)"),
                ("show", "console.log(df)"),
                ("early", "console.log(later)"),
                ("late", "const later = 1"),
            ],
            GraphRule::Positional,
        );
        assert_eq!(g.get("clean").unwrap().parents, ["load"]);
        assert_eq!(g.get("show").unwrap().parents, ["clean"]);
        assert_eq!(
            g.get("early").unwrap().warnings,
            ["defined only below this cell: later"]
        );
        assert_eq!(g.descendants("load"), ["clean", "show"]);
    }

    fn positional(cells: &[(&str, &str)]) -> Graph {
        build(cells, GraphRule::Positional)
    }

    #[test]
    fn positional_references_depend_on_the_nearest_definition_above() {
        let g = positional(&[
            ("load", "df = load()"),
            ("clean", "df = df.dropna()"),
            ("show", "print(df)"),
            ("fresh", "df = other()\nfig, ax = plot(df)"),
            ("again", "fig, ax = plot(df)"),
            ("early", "print(later)"),
            ("own", "later = 0\nprint(later)"),
            ("late", "later = 1"),
        ]);
        let parents = |id: &str| g.get(id).unwrap().parents.clone();
        assert_eq!(parents("clean"), ["load"]);
        assert_eq!(parents("show"), ["clean"]);
        // Reads its own `df` after binding it; the earlier definition is a (harmless) parent.
        assert_eq!(parents("fresh"), ["clean"]);
        assert_eq!(parents("again"), ["fresh"]);
        assert!(parents("early").is_empty());
        assert_eq!(
            g.get("early").unwrap().warnings,
            ["defined only below this cell: later"]
        );
        assert!(g.get("own").unwrap().warnings.is_empty());
        assert_eq!(parents("late"), Vec::<String>::new());
        assert!(g.cells().iter().all(|c| c.error.is_none()), "{g:?}");
        // Re-running the first definition reruns the chain in order, and stops where the name
        // is defined afresh without being read.
        assert_eq!(g.descendants("load"), ["clean", "show", "fresh", "again"]);
        let g = positional(&[("a", "x = 1"), ("b", "x = 2"), ("c", "y = x")]);
        assert_eq!(g.descendants("a"), Vec::<String>::new());
        assert_eq!(g.descendants("b"), ["c"]);
        // What strict calls a cycle is an order.
        let g = positional(&[("c", "p = q"), ("d", "q = p")]);
        assert!(g.cells().iter().all(|c| c.error.is_none()));
        assert_eq!(g.get("d").unwrap().parents, ["c"]);
    }

    #[test]
    fn edges_order_and_errors() {
        let g = graph(&[
            ("c", "print(y)"),
            ("a", "x = 1"),
            ("b", "y = x + 1"),
            ("d", "z = x * 2"),
        ]);
        assert_eq!(g.get("b").unwrap().parents, vec!["a"]);
        assert_eq!(g.get("a").unwrap().children, vec!["b", "d"]);
        let order = g.descendants("a");
        let pos = |id: &str| order.iter().position(|c| c == id).unwrap();
        assert!(pos("b") < pos("c"), "{order:?}");
        assert_eq!(order.len(), 3);

        let g = graph(&[
            ("a", "x = 1"),
            ("b", "x = 2"),
            ("c", "p = q"),
            ("d", "q = p"),
        ]);
        assert!(matches!(
            g.get("a").unwrap().error,
            Some(GraphError::MultipleDefinitions { .. })
        ));
        assert!(matches!(
            g.get("b").unwrap().error,
            Some(GraphError::MultipleDefinitions { .. })
        ));
        assert!(matches!(
            g.get("c").unwrap().error,
            Some(GraphError::Cycle { .. })
        ));
        assert!(matches!(
            g.get("d").unwrap().error,
            Some(GraphError::Cycle { .. })
        ));
        let g = graph(&[("a", "from os import *")]);
        assert_eq!(g.get("a").unwrap().warnings.len(), 1);
    }
}
