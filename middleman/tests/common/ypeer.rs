//! A Yjs peer built on yrs (the Rust port of Yjs), speaking y-protocols over a test client's
//! binary frames: what a browser editor bound to the document does.

use middleman::collab::yproto::{self, YMessage};
use yrs::updates::decoder::Decode as _;
use yrs::updates::encoder::Encode as _;
use yrs::{
    Any, Array as _, Doc, GetString as _, Map as _, Out, ReadTxn as _, StateVector, Text as _,
    Transact as _, Update,
};

use super::Client;

pub struct YPeer {
    pub doc: Doc,
}

impl Default for YPeer {
    fn default() -> Self {
        Self::new()
    }
}

impl YPeer {
    pub fn new() -> Self {
        Self {
            doc: Doc::with_options(yrs::Options {
                offset_kind: yrs::OffsetKind::Utf16,
                ..yrs::Options::default()
            }),
        }
    }

    /// Applies every Yjs frame the client received; answers the server's sync step 1.
    pub async fn absorb(&mut self, client: &mut Client) {
        for bytes in std::mem::take(&mut client.yjs) {
            match YMessage::decode(&bytes).unwrap() {
                YMessage::SyncStep2(u) | YMessage::Update(u) => {
                    self.doc
                        .transact_mut()
                        .apply_update(Update::decode_v1(&u).unwrap())
                        .unwrap();
                }
                YMessage::SyncStep1(sv) => {
                    let sv = StateVector::decode_v1(&sv).unwrap();
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    client.send_binary(YMessage::SyncStep2(diff).encode()).await;
                }
                YMessage::Awareness(_) | YMessage::QueryAwareness => {}
            }
        }
    }

    /// Reads from the client until `done` holds for this peer.
    pub async fn sync_until(&mut self, client: &mut Client, done: impl Fn(&YPeer) -> bool) {
        loop {
            self.absorb(client).await;
            if done(self) {
                return;
            }
            client.pump().await;
        }
    }

    fn text(&self, cell_id: &str) -> Option<yrs::TextRef> {
        let txn = self.doc.transact();
        let cells = txn.get_array("cells")?;
        cells.iter(&txn).find_map(|v| match v {
            Out::YMap(m) => match m.get(&txn, "id") {
                Some(Out::Any(Any::String(id))) if &*id == cell_id => match m.get(&txn, "source") {
                    Some(Out::YText(t)) => Some(t),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
    }

    /// A cell's source, if this peer has the cell.
    pub fn source(&self, cell_id: &str) -> Option<String> {
        let t = self.text(cell_id)?;
        Some(t.get_string(&self.doc.transact()))
    }

    /// Types `text` at `index` (clamped) of the cell and sends the update.
    pub async fn type_at(&mut self, client: &mut Client, cell_id: &str, index: u32, text: &str) {
        let t = self.text(cell_id).expect("cell known to the peer");
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let len = t.len(&txn);
            t.insert(&mut txn, index.min(len), text);
        }
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        client.send_binary(YMessage::Update(update).encode()).await;
    }

    /// Sends an awareness state for this peer's Yjs client id.
    pub async fn announce(&self, client: &mut Client, clock: u64, state: &str) {
        let entries = [yproto::AwarenessEntry {
            client: self.doc.client_id().get(),
            clock,
            state: state.into(),
        }];
        client
            .send_binary(YMessage::Awareness(yproto::encode_awareness(&entries)).encode())
            .await;
    }

    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }
}
