//! The notebook: cells in a `yrs` CRDT laid out like jupyter_ydoc (`cells`: a Y.Array of Y.Map
//! `{id, cell_type, source: Y.Text}`), and each cell's runtime (outputs, count, state) beside it,
//! outside the CRDT. One file: every operation keeps the CRDT and the runtimes in step, and a
//! third of it is tests.

use std::collections::HashMap;

use yrs::updates::decoder::Decode as _;
use yrs::{
    Any, Array as _, ArrayRef, Doc, GetString as _, Map as _, MapPrelim, MapRef, Out, ReadTxn,
    StateVector, Text as _, TextPrelim, TextRef, Transact as _, Update,
};

use crate::protocol::{CellKind, CellRuntime, CellState, CellView, StateCause};

/// Errors of document operations. Messages are safe to show a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    /// No cell has that id.
    #[error("no cell {0:?}")]
    NoSuchCell(String),
    /// A document always keeps at least one cell.
    #[error("a document keeps at least one cell")]
    LastCell,
    /// An index beyond the end.
    #[error("index {index} is out of range (the document has {len} cells)")]
    OutOfRange { index: u32, len: u32 },
    /// A Yjs update that does not decode or apply.
    #[error("invalid update: {0}")]
    BadUpdate(String),
    /// An imported notebook that is not nbformat 4.
    #[error("not an nbformat 4 notebook: {0}")]
    BadNotebook(String),
}

/// The document. Cheap operations; callers serialise access (one actor owns it).
pub struct Notebook {
    doc: Doc,
    cells: ArrayRef,
    /// The notebook's own fields (the `.ipynb` metadata an import kept).
    meta: MapRef,
    runtime: HashMap<String, CellRuntime>,
    /// Lazy reactivity: dependents are marked stale instead of run.
    pub lazy: bool,
    /// How the graph resolves names defined in several cells.
    pub graph_rule: crate::graph::GraphRule,
}

impl std::fmt::Debug for Notebook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notebook")
            .field("cells", &self.len())
            .finish_non_exhaustive()
    }
}

/// The key, in a cell's map and in the `meta` map, of the `.ipynb` fields the document keeps
/// without using them (metadata, attachments, an unknown cell type's own fields), as JSON text:
/// kept byte for byte, and left alone by editors that do not know it.
pub(crate) const EXTRAS: &str = "nbformat";

/// A fresh cell id: 12 url-safe characters (nbformat 4.5 allows `[a-zA-Z0-9-_]{1,64}`).
pub(crate) fn new_cell_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn out_str(v: Option<Out>) -> Option<String> {
    match v {
        Some(Out::Any(Any::String(s))) => Some(s.to_string()),
        _ => None,
    }
}

/// A cell map's id, type and, when `want_source(id)`, its source text.
fn read_cell<T: ReadTxn>(
    txn: &T,
    v: Out,
    want_source: impl Fn(&str) -> bool,
) -> Option<(String, CellKind, String)> {
    let Out::YMap(m) = v else { return None };
    let id = out_str(m.get(txn, "id"))?;
    let kind = out_str(m.get(txn, "cell_type"))
        .and_then(|k| CellKind::parse(&k))
        .unwrap_or(CellKind::Code);
    let source = match m.get(txn, "source") {
        Some(Out::YText(t)) if want_source(&id) => t.get_string(txn),
        _ => String::new(),
    };
    Some((id, kind, source))
}

impl Default for Notebook {
    fn default() -> Self {
        Self::new()
    }
}

impl Notebook {
    /// An empty document: one empty code cell.
    pub fn new() -> Self {
        let mut nb = Self::empty();
        nb.insert_cell(0, CellKind::Code, "").ok();
        nb
    }

    /// No cells at all (only for building a document up, e.g. on import).
    pub(crate) fn empty() -> Self {
        // Offsets in UTF-16 code units, as Yjs (JavaScript) counts them.
        let doc = Doc::with_options(yrs::Options {
            offset_kind: yrs::OffsetKind::Utf16,
            ..yrs::Options::default()
        });
        let cells = doc.get_or_insert_array("cells");
        let meta = doc.get_or_insert_map("meta");
        Self {
            doc,
            cells,
            meta,
            runtime: HashMap::new(),
            lazy: false,
            graph_rule: crate::graph::GraphRule::default(),
        }
    }

    /// Number of cells.
    pub fn len(&self) -> u32 {
        self.cells.len(&self.doc.transact())
    }

    /// Whether there are no cells (only transiently, while building).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cell_maps(&self) -> Vec<(String, MapRef)> {
        let txn = self.doc.transact();
        self.cells
            .iter(&txn)
            .filter_map(|v| match v {
                Out::YMap(m) => out_str(m.get(&txn, "id")).map(|id| (id, m)),
                _ => None,
            })
            .collect()
    }

    fn index_of(&self, id: &str) -> Result<u32, DocumentError> {
        self.cell_maps()
            .iter()
            .position(|(cid, _)| cid == id)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| DocumentError::NoSuchCell(id.to_owned()))
    }

    /// Each cell's id, type and (when `with_source`) source, in order, in one pass.
    fn scan(&self, with_source: bool) -> Vec<(String, CellKind, String)> {
        let txn = self.doc.transact();
        self.cells
            .iter(&txn)
            .filter_map(|v| read_cell(&txn, v, |_| with_source))
            .collect()
    }

    /// The cells in order.
    pub fn cells(&self) -> Vec<CellView> {
        self.cells_deferring(&HashMap::new())
    }

    /// The cells in order, leaving out the outputs of the cells in `deferred` (a snapshot's
    /// large ones) without copying them.
    pub fn cells_deferring(
        &self,
        deferred: &HashMap<String, crate::protocol::DeferredOutputs>,
    ) -> Vec<CellView> {
        self.scan(true)
            .into_iter()
            .map(|(id, kind, source)| {
                let left_out = deferred.get(&id).copied();
                let runtime = match (self.runtime.get(&id), left_out) {
                    (Some(r), Some(_)) => CellRuntime {
                        outputs: Vec::new(),
                        execution_count: r.execution_count,
                        state: r.state,
                        truncated: r.truncated,
                        disabled: r.disabled,
                        cause: r.cause.clone(),
                        last_run: r.last_run.clone(),
                    },
                    (Some(r), None) => r.clone(),
                    (None, _) => CellRuntime::default(),
                };
                CellView {
                    id,
                    kind,
                    source,
                    runtime,
                    deferred: left_out,
                }
            })
            .collect()
    }

    /// Each cell's id and type, in order (cheaper than [`Self::cells`]: no text, no outputs).
    pub fn headers(&self) -> Vec<(String, CellKind)> {
        self.scan(false)
            .into_iter()
            .map(|(id, kind, _)| (id, kind))
            .collect()
    }

    /// Every cell's id, type and source, in order, in one pass.
    pub fn sources(&self) -> Vec<(String, CellKind, String)> {
        self.scan(true)
    }

    /// A cell's type and source.
    pub fn source(&self, id: &str) -> Result<(CellKind, String), DocumentError> {
        let txn = self.doc.transact();
        self.cells
            .iter(&txn)
            .filter_map(|v| read_cell(&txn, v, |cid| cid == id))
            .find(|(cid, _, _)| cid == id)
            .map(|(_, kind, source)| (kind, source))
            .ok_or_else(|| DocumentError::NoSuchCell(id.to_owned()))
    }

    /// Replaces every cell with the cells of `other` (an import), in one transaction, so that
    /// collaborators see one change.
    pub fn replace_all(&mut self, other: &Notebook) {
        let cells = other.cells();
        let mut extras = other.extras();
        let notebook_extras = other.notebook_extras();
        {
            let mut txn = self.doc.transact_mut();
            match notebook_extras {
                Some(json) => {
                    self.meta.insert(&mut txn, EXTRAS, json);
                }
                None => {
                    self.meta.remove(&mut txn, EXTRAS);
                }
            }
            // The new cells go in front of the old ones, last first, and the old ones are
            // deleted after: yrs finds an index by walking from the array's start and steps over
            // deleted items on the way, so inserting behind the tombstones of earlier imports
            // would cost their number for every cell (quadratic over repeated imports).
            let old = self.cells.len(&txn);
            for cell in cells.iter().rev() {
                let map = self.cells.insert(&mut txn, 0, MapPrelim::default());
                map.insert(&mut txn, "id", cell.id.as_str());
                map.insert(&mut txn, "cell_type", cell.kind.as_str());
                map.insert(&mut txn, "source", TextPrelim::new(cell.source.as_str()));
                if let Some(json) = extras.remove(&cell.id) {
                    map.insert(&mut txn, EXTRAS, json);
                }
            }
            let new = u32::try_from(cells.len()).unwrap_or(u32::MAX);
            self.cells.remove_range(&mut txn, new, old);
        }
        self.runtime = cells.into_iter().map(|c| (c.id, c.runtime)).collect();
    }

    /// Marks cells that were queued or running when the document was saved as stale: those
    /// executions died with the previous process. A cell that had run before is stale because
    /// its results are not in the kernel (a resume counts it among the cells that ran); one
    /// that never ran, because its run was cancelled.
    pub fn settle(&mut self) {
        for r in self.runtime.values_mut() {
            if matches!(r.state, CellState::Queued | CellState::Running) {
                r.state = CellState::Stale;
                r.cause = Some(if r.last_run.is_some() {
                    StateCause::NotInKernel
                } else {
                    StateCause::Cancelled
                });
            }
        }
    }

    /// One cell.
    pub fn cell(&self, id: &str) -> Result<CellView, DocumentError> {
        self.cells()
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| DocumentError::NoSuchCell(id.to_owned()))
    }

    /// Inserts a cell at `index` and returns its id.
    pub fn insert_cell(
        &mut self,
        index: u32,
        kind: CellKind,
        source: &str,
    ) -> Result<String, DocumentError> {
        let id = new_cell_id();
        self.insert_cell_with_id(index, &id, kind, source)?;
        Ok(id)
    }

    pub(crate) fn insert_cell_with_id(
        &mut self,
        index: u32,
        id: &str,
        kind: CellKind,
        source: &str,
    ) -> Result<(), DocumentError> {
        let len = self.len();
        if index > len {
            return Err(DocumentError::OutOfRange { index, len });
        }
        let mut txn = self.doc.transact_mut();
        let map = self.cells.insert(&mut txn, index, MapPrelim::default());
        map.insert(&mut txn, "id", id);
        map.insert(&mut txn, "cell_type", kind.as_str());
        map.insert(&mut txn, "source", TextPrelim::new(source));
        drop(txn);
        self.runtime.entry(id.to_owned()).or_default();
        Ok(())
    }

    /// A document built from whole cells in one transaction (an import): id, type, source, the
    /// kept `.ipynb` fields, the runtime. Linear in the cells (no per-cell lookups).
    pub(crate) fn from_cells(
        cells: Vec<(String, CellKind, String, Option<String>, CellRuntime)>,
        notebook_extras: Option<String>,
    ) -> Self {
        let mut nb = Self::empty();
        {
            let mut txn = nb.doc.transact_mut();
            if let Some(json) = notebook_extras {
                nb.meta.insert(&mut txn, EXTRAS, json);
            }
            // Last to first, each at the front: yrs finds an index by walking the array from
            // its start, so appending one by one would take quadratic time.
            for (id, kind, source, extras, runtime) in cells.into_iter().rev() {
                let map = nb.cells.insert(&mut txn, 0, MapPrelim::default());
                map.insert(&mut txn, "id", id.as_str());
                map.insert(&mut txn, "cell_type", kind.as_str());
                map.insert(&mut txn, "source", TextPrelim::new(source.as_str()));
                if let Some(json) = extras {
                    map.insert(&mut txn, EXTRAS, json);
                }
                nb.runtime.insert(id, runtime);
            }
        }
        nb
    }

    /// Deletes a cell (never the last one).
    pub fn delete_cell(&mut self, id: &str) -> Result<(), DocumentError> {
        let index = self.index_of(id)?;
        if self.len() <= 1 {
            return Err(DocumentError::LastCell);
        }
        self.cells.remove(&mut self.doc.transact_mut(), index);
        self.runtime.remove(id);
        Ok(())
    }

    /// Moves a cell to `to` (its index after the move). The cell keeps its id, source, outputs.
    pub fn move_cell(&mut self, id: &str, to: u32) -> Result<(), DocumentError> {
        let from = self.index_of(id)?;
        let len = self.len();
        if to >= len {
            return Err(DocumentError::OutOfRange { index: to, len });
        }
        if from == to {
            return Ok(());
        }
        let cell = self.cell(id)?;
        let extras = self.extras().remove(id);
        let runtime = self.runtime.remove(id);
        // yrs has no array move: remove and re-insert the same id and text in one transaction.
        {
            let mut txn = self.doc.transact_mut();
            self.cells.remove(&mut txn, from);
            let map = self.cells.insert(&mut txn, to, MapPrelim::default());
            map.insert(&mut txn, "id", cell.id.as_str());
            map.insert(&mut txn, "cell_type", cell.kind.as_str());
            map.insert(&mut txn, "source", TextPrelim::new(cell.source.as_str()));
            if let Some(json) = extras {
                map.insert(&mut txn, EXTRAS, json);
            }
        }
        self.runtime
            .insert(id.to_owned(), runtime.unwrap_or_default());
        Ok(())
    }

    /// Changes a cell's type; a cell that is no longer code loses its outputs.
    pub fn set_kind(&mut self, id: &str, kind: CellKind) -> Result<(), DocumentError> {
        let (_, map) = self
            .cell_maps()
            .into_iter()
            .find(|(cid, _)| cid == id)
            .ok_or_else(|| DocumentError::NoSuchCell(id.to_owned()))?;
        map.insert(&mut self.doc.transact_mut(), "cell_type", kind.as_str());
        if !kind.runs() {
            self.runtime.insert(id.to_owned(), CellRuntime::default());
        }
        Ok(())
    }

    /// Replaces a cell's source with `source` as one minimal edit: the common prefix and suffix
    /// stay, so concurrent typing elsewhere in the cell survives. Clients edit through Yjs.
    pub fn set_source(&mut self, id: &str, source: &str) -> Result<(), DocumentError> {
        let text = self.text(id)?;
        let mut txn = self.doc.transact_mut();
        let old = text.get_string(&txn);
        // Yjs text offsets count UTF-16 code units (yrs' default offset kind for Text).
        let a: Vec<u16> = old.encode_utf16().collect();
        let b: Vec<u16> = source.encode_utf16().collect();
        let mut prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        // Never split a surrogate pair.
        while prefix > 0 && (0xDC00..0xE000).contains(&a.get(prefix).copied().unwrap_or(0)) {
            prefix -= 1;
        }
        let max_suffix = a.len().min(b.len()) - prefix;
        let mut suffix = a
            .iter()
            .rev()
            .zip(b.iter().rev())
            .take(max_suffix)
            .take_while(|(x, y)| x == y)
            .count();
        while suffix > 0 && (0xDC00..0xE000).contains(&a[a.len() - suffix]) && {
            let i = a.len() - suffix;
            i > 0 && (0xD800..0xDC00).contains(&a[i - 1])
        } {
            suffix -= 1;
        }
        let removed = a.len() - prefix - suffix;
        let inserted = String::from_utf16_lossy(&b[prefix..b.len() - suffix]);
        let at = u32::try_from(prefix).unwrap_or(u32::MAX);
        if removed > 0 {
            text.remove_range(&mut txn, at, u32::try_from(removed).unwrap_or(u32::MAX));
        }
        if !inserted.is_empty() {
            text.insert(&mut txn, at, &inserted);
        }
        Ok(())
    }

    fn text(&self, id: &str) -> Result<TextRef, DocumentError> {
        let (_, map) = self
            .cell_maps()
            .into_iter()
            .find(|(cid, _)| cid == id)
            .ok_or_else(|| DocumentError::NoSuchCell(id.to_owned()))?;
        let txn = self.doc.transact();
        match map.get(&txn, "source") {
            Some(Out::YText(t)) => Ok(t),
            _ => Err(DocumentError::NoSuchCell(id.to_owned())),
        }
    }

    /// The runtime part of a cell, to update outputs, count and state.
    pub fn runtime_mut(&mut self, id: &str) -> Result<&mut CellRuntime, DocumentError> {
        self.index_of(id)?;
        Ok(self.runtime.entry(id.to_owned()).or_default())
    }

    /// Clears a cell's outputs and execution count.
    pub fn clear_outputs(&mut self, id: &str) -> Result<(), DocumentError> {
        let r = self.runtime_mut(id)?;
        r.outputs.clear();
        r.execution_count = None;
        r.truncated = false;
        Ok(())
    }

    /// Every cell's runtime, mutably (display updates can target any cell).
    pub fn runtimes_mut(&mut self) -> impl Iterator<Item = &mut CellRuntime> {
        self.runtime.values_mut()
    }

    /// Applies a Yjs update (v1 encoding) from a client.
    pub fn apply_update(&mut self, update: &[u8]) -> Result<(), DocumentError> {
        let update =
            Update::decode_v1(update).map_err(|e| DocumentError::BadUpdate(e.to_string()))?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| DocumentError::BadUpdate(e.to_string()))?;
        // Cells created by clients get a runtime entry; removed ones lose theirs.
        let ids: Vec<String> = self.cell_maps().into_iter().map(|(id, _)| id).collect();
        for id in &ids {
            self.runtime.entry(id.clone()).or_default();
        }
        self.runtime.retain(|id, _| ids.contains(id));
        Ok(())
    }

    /// The whole CRDT state as one Yjs update (v1), for snapshots and new clients.
    /// Each cell's kept `.ipynb` fields (see [`EXTRAS`]), by id, in one pass.
    pub fn extras(&self) -> HashMap<String, String> {
        let txn = self.doc.transact();
        self.cells
            .iter(&txn)
            .filter_map(|v| {
                let Out::YMap(m) = v else { return None };
                Some((out_str(m.get(&txn, "id"))?, out_str(m.get(&txn, EXTRAS))?))
            })
            .collect()
    }

    /// Keeps a cell's `.ipynb` fields that the document has no place for (JSON text).
    pub fn set_extras(&mut self, id: &str, json: &str) -> Result<(), DocumentError> {
        let (_, map) = self
            .cell_maps()
            .into_iter()
            .find(|(cid, _)| cid == id)
            .ok_or_else(|| DocumentError::NoSuchCell(id.to_owned()))?;
        map.insert(&mut self.doc.transact_mut(), EXTRAS, json);
        Ok(())
    }

    /// The notebook's kept `.ipynb` fields (JSON text).
    pub fn notebook_extras(&self) -> Option<String> {
        out_str(self.meta.get(&self.doc.transact(), EXTRAS))
    }

    /// Keeps the notebook's `.ipynb` fields (JSON text).
    pub fn set_notebook_extras(&mut self, json: &str) {
        self.meta.insert(&mut self.doc.transact_mut(), EXTRAS, json);
    }

    pub fn encode_state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// What a peer with `state_vector` is missing (the Yjs sync step 2).
    pub fn encode_diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, DocumentError> {
        let sv = StateVector::decode_v1(state_vector)
            .map_err(|e| DocumentError::BadUpdate(e.to_string()))?;
        Ok(self.doc.transact().encode_state_as_update_v1(&sv))
    }

    /// This document's state vector (the Yjs sync step 1).
    pub fn state_vector(&self) -> Vec<u8> {
        use yrs::updates::encoder::Encode as _;
        self.doc.transact().state_vector().encode_v1()
    }

    /// The runtime part of every cell, by id (persisted next to the CRDT state).
    pub fn runtimes(&self) -> &HashMap<String, CellRuntime> {
        &self.runtime
    }

    /// Rebuilds a document from a persisted CRDT state and runtimes.
    pub fn restore(
        state: &[u8],
        runtimes: HashMap<String, CellRuntime>,
    ) -> Result<Self, DocumentError> {
        let mut nb = Self::empty();
        nb.apply_update(state)?;
        for (id, r) in runtimes {
            if nb.runtime.contains_key(&id) {
                nb.runtime.insert(id, r);
            }
        }
        if nb.is_empty() {
            nb.insert_cell(0, CellKind::Code, "")?;
        }
        Ok(nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Output, StreamName};

    #[test]
    fn runs_that_died_with_the_process_leave_their_cells_stale_with_a_cause() {
        let mut nb = Notebook::new();
        let ran = nb.cells()[0].id.clone();
        let never = nb.insert_cell(1, CellKind::Code, "y = 2").unwrap();
        let done = nb.insert_cell(2, CellKind::Code, "z = 3").unwrap();
        let r = nb.runtime_mut(&ran).unwrap();
        r.state = CellState::Running;
        r.last_run = Some(crate::protocol::RunRecord {
            by: "ada".into(),
            at_ms: 1,
            duration_ms: 1,
            kernel_session: "k1".into(),
        });
        nb.runtime_mut(&never).unwrap().state = CellState::Queued;
        nb.runtime_mut(&done).unwrap().state = CellState::Idle;
        nb.settle();
        let state = |id: &str| {
            let r = nb.cell(id).unwrap().runtime;
            (r.state, r.cause)
        };
        assert_eq!(
            state(&ran),
            (CellState::Stale, Some(StateCause::NotInKernel))
        );
        assert_eq!(
            state(&never),
            (CellState::Stale, Some(StateCause::Cancelled))
        );
        assert_eq!(state(&done), (CellState::Idle, None));
    }

    #[test]
    fn insert_move_delete_keep_one() {
        let mut nb = Notebook::new();
        let first = nb.cells()[0].id.clone();
        let b = nb.insert_cell(1, CellKind::Markdown, "# title").unwrap();
        let c = nb.insert_cell(2, CellKind::Code, "x = 1").unwrap();
        nb.runtime_mut(&c).unwrap().outputs.push(Output::Stream {
            name: StreamName::Stdout,
            text: "hi".into(),
        });
        nb.move_cell(&c, 0).unwrap();
        let order: Vec<String> = nb.cells().into_iter().map(|c| c.id).collect();
        assert_eq!(order, vec![c.clone(), first.clone(), b.clone()]);
        assert_eq!(nb.cell(&c).unwrap().source, "x = 1");
        assert_eq!(
            nb.cell(&c).unwrap().runtime.outputs.len(),
            1,
            "outputs follow the move"
        );
        nb.delete_cell(&first).unwrap();
        nb.delete_cell(&b).unwrap();
        assert_eq!(nb.delete_cell(&c), Err(DocumentError::LastCell));
        assert_eq!(
            nb.move_cell(&c, 5),
            Err(DocumentError::OutOfRange { index: 5, len: 1 })
        );
        nb.set_kind(&c, CellKind::Markdown).unwrap();
        assert!(nb.cell(&c).unwrap().runtime.outputs.is_empty());
    }

    #[test]
    fn concurrent_edits_in_one_cell_both_survive() {
        // Two replicas of the same document type into the same cell at the same time.
        let server = Notebook::new();
        let id = server.cells()[0].id.clone();
        let mut alice = Notebook::restore(&server.encode_state(), HashMap::new()).unwrap();
        let mut bob = Notebook::restore(&server.encode_state(), HashMap::new()).unwrap();
        let sv_a = alice.state_vector();
        let sv_b = bob.state_vector();
        alice
            .text(&id)
            .unwrap()
            .insert(&mut alice.doc.transact_mut(), 0, "alice ");
        bob.text(&id)
            .unwrap()
            .insert(&mut bob.doc.transact_mut(), 0, "bob ");
        let from_alice = alice.encode_diff(&sv_a).unwrap();
        let from_bob = bob.encode_diff(&sv_b).unwrap();
        alice.apply_update(&from_bob).unwrap();
        bob.apply_update(&from_alice).unwrap();
        let a = alice.cell(&id).unwrap().source;
        assert_eq!(a, bob.cell(&id).unwrap().source, "converged");
        assert!(a.contains("alice ") && a.contains("bob "), "{a}");
    }

    #[test]
    fn garbage_updates_are_refused_and_change_nothing() {
        let mut nb = Notebook::new();
        let (cells, state) = (nb.cells(), nb.encode_state());
        assert!(matches!(
            nb.apply_update(&[0xff, 0x01, 0x02]),
            Err(DocumentError::BadUpdate(_))
        ));
        assert_eq!(nb.cells(), cells);
        assert_eq!(nb.encode_state(), state);
    }
}
