//! Edits: the shared document as people change it, through Yjs updates or the protocol's cell
//! operations. It keeps the CRDT's size within `--max-document-bytes` (counted as the size at
//! load plus every update since, an upper bound that costs nothing to keep), encodes each
//! server-side change as the Yjs update to relay, keeps at least one cell, and tells when the
//! cell list changed.

use serde_json::Value;

use super::Refusal;
use crate::document::{CellKind, DocumentError, Notebook};
use crate::protocol::CellHeader;

/// A cell operation (the JSON messages that change the document).
#[derive(Debug)]
pub enum EditRequest {
    Insert {
        index: u32,
        kind: CellKind,
        source: String,
        request_id: Option<String>,
    },
    Delete {
        cell_id: String,
    },
    Move {
        cell_id: String,
        index: u32,
    },
    SetKind {
        cell_id: String,
        kind: CellKind,
    },
    SetSource {
        cell_id: String,
        source: String,
    },
    ClearOutputs {
        cell_id: Option<String>,
    },
}

impl EditRequest {
    /// Text the request adds to the CRDT at most.
    fn adds(&self) -> usize {
        match self {
            EditRequest::Insert { source, .. } | EditRequest::SetSource { source, .. } => {
                source.len()
            }
            _ => 0,
        }
    }
}

/// The document under edit (see the module docs).
#[derive(Debug)]
pub(super) struct Edits {
    pub(super) nb: Notebook,
    /// The cell list as last announced.
    headers: Vec<CellHeader>,
    /// An upper bound of the CRDT's encoded size: its size when loaded plus every update since.
    crdt_bytes: usize,
    max_bytes: usize,
}

fn headers_of(nb: &Notebook) -> Vec<CellHeader> {
    nb.headers()
        .into_iter()
        .map(|(id, cell_type)| CellHeader { id, cell_type })
        .collect()
}

impl Edits {
    /// A new one-cell document that may grow to `max_bytes`.
    pub(super) fn new(max_bytes: usize) -> Self {
        let nb = Notebook::new();
        Self {
            headers: headers_of(&nb),
            nb,
            crdt_bytes: 0,
            max_bytes,
        }
    }

    /// Starts from the document as loaded (`None`: nothing was saved; keep the new one).
    pub(super) fn restore(&mut self, loaded: Option<Notebook>) {
        if let Some(mut nb) = loaded {
            nb.settle();
            self.headers = headers_of(&nb);
            self.nb = nb;
        }
        self.crdt_bytes = self.nb.encode_state().len();
    }

    /// Refuses a request that could take the document past its limit.
    pub(super) fn room_for(&self, request: &EditRequest) -> Result<(), Refusal> {
        self.room(request.adds())
    }

    fn room(&self, adds: usize) -> Result<(), Refusal> {
        if self.crdt_bytes + adds > self.max_bytes {
            return Err(Refusal::DocumentTooLarge {
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Applies a client's Yjs update.
    pub(super) fn apply_update(&mut self, update: &[u8]) -> Result<(), Refusal> {
        self.room(update.len())?;
        self.nb.apply_update(update)?;
        self.crdt_bytes += update.len();
        metrics::counter!("middleman_document_updates_total").increment(1);
        Ok(())
    }

    /// Applies a server-side change; returns its result and the Yjs update that carries it to
    /// every peer (none when the text did not change).
    pub(super) fn change<T>(
        &mut self,
        change: impl FnOnce(&mut Notebook) -> Result<T, DocumentError>,
    ) -> Result<(T, Option<Vec<u8>>), DocumentError> {
        let before = self.nb.state_vector();
        let out = change(&mut self.nb)?;
        let update = self.nb.encode_diff(&before)?;
        self.crdt_bytes += update.len();
        // An empty update encodes as two zero bytes.
        Ok((out, (update.len() > 2).then_some(update)))
    }

    /// A document always keeps one cell: after an edit deleted the last, adds an empty one and
    /// returns the update that carries it.
    pub(super) fn keep_one_cell(&mut self) -> Option<Vec<u8>> {
        if !self.nb.is_empty() {
            return None;
        }
        self.change(|nb| nb.insert_cell(0, CellKind::Code, ""))
            .ok()
            .and_then(|(_, update)| update)
    }

    /// The cell list, if it changed since last announced (`sources` is the document's).
    pub(super) fn cell_list(
        &mut self,
        sources: &[(String, CellKind, String)],
    ) -> Option<Vec<CellHeader>> {
        let headers: Vec<CellHeader> = sources
            .iter()
            .map(|(id, kind, _)| CellHeader {
                id: id.clone(),
                cell_type: *kind,
            })
            .collect();
        if headers == self.headers {
            return None;
        }
        self.headers = headers.clone();
        Some(headers)
    }

    /// The cells `ClearOutputs` clears: the one named (which must exist), or all.
    pub(super) fn clearing(&mut self, cell_id: Option<String>) -> Result<Vec<String>, Refusal> {
        Ok(match cell_id {
            Some(id) => {
                self.nb.runtime_mut(&id)?;
                vec![id]
            }
            None => self.headers.iter().map(|h| h.id.clone()).collect(),
        })
    }

    /// The kind and source of a cell.
    pub(super) fn source(&self, cell_id: &str) -> Result<(CellKind, String), Refusal> {
        Ok(self.nb.source(cell_id)?)
    }

    /// The document as `.ipynb` JSON.
    pub(super) fn export(&self, kernel: &crate::protocol::KernelDescription) -> Value {
        crate::document::ipynb::export(&self.nb, kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_limit_counts_every_update() {
        let mut edits = Edits::new(64);
        edits.restore(None);
        let big = EditRequest::Insert {
            index: 0,
            kind: CellKind::Code,
            source: "x".repeat(100),
            request_id: None,
        };
        assert!(matches!(
            edits.room_for(&big),
            Err(Refusal::DocumentTooLarge { max: 64 })
        ));
        let (_, update) = edits
            .change(|nb| nb.insert_cell(0, CellKind::Code, "1"))
            .unwrap();
        assert!(update.is_some());
        let (_, none) = edits.change(|_| Ok(())).unwrap();
        assert!(none.is_none(), "no change, nothing to relay");
    }

    #[test]
    fn the_cell_list_is_announced_when_it_changes() {
        let mut edits = Edits::new(1 << 20);
        edits.restore(None);
        assert!(edits.keep_one_cell().is_none(), "it has its cell");
        let sources = edits.nb.sources();
        assert!(edits.cell_list(&sources).is_none(), "unchanged");
        // A peer's update inserts a cell: one new list.
        let mut peer = Notebook::restore(&edits.nb.encode_state(), Default::default()).unwrap();
        let sv = peer.state_vector();
        peer.insert_cell(1, CellKind::Markdown, "# hi").unwrap();
        edits.apply_update(&peer.encode_diff(&sv).unwrap()).unwrap();
        let sources = edits.nb.sources();
        let list = edits.cell_list(&sources).expect("changed");
        assert_eq!(list[1].cell_type, CellKind::Markdown);
        assert!(edits.cell_list(&sources).is_none());
    }
}
