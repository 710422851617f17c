//! Presence and awareness: who is in the document and where. Presence is the protocol's own
//! (`presence` messages, one entry per connection); awareness is y-protocols' (the states Yjs
//! editors publish: cursors, selections), relayed with the identity taken from the token, so a
//! client can never appear as someone else.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Refusal;
use super::yproto::{self, AwarenessEntry};
use crate::protocol::{
    MAX_AWARENESS_IDS, MAX_AWARENESS_STATE_BYTES, MAX_CURSOR_BYTES, PresenceInfo,
};

/// Who a connection is, from its token.
#[derive(Debug, Clone)]
pub struct Who {
    pub user: String,
    pub name: String,
    pub role: session_token::Role,
}

const COLORS: [&str; 12] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
    "#469990", "#800000", "#808000", "#000075",
];

/// A user's colour: the same in every document and on every connection.
fn color_of(user: &str) -> &'static str {
    let h = user.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    COLORS[h as usize % COLORS.len()]
}

#[derive(Debug)]
struct Awareness {
    clock: u64,
    state: String,
    /// The connection that published it.
    owner: u64,
    renewed: Instant,
}

/// Everyone in the document (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Presence {
    people: BTreeMap<u64, PresenceInfo>,
    /// Awareness states by Yjs client id.
    awareness: HashMap<u64, Awareness>,
}

impl Presence {
    /// Connection `client` joined; returns its presence, to announce.
    pub(super) fn join(&mut self, client: u64, who: &Who) -> PresenceInfo {
        let info = PresenceInfo {
            client,
            user: who.user.clone(),
            name: who.name.clone(),
            role: who.role.to_string(),
            color: color_of(&who.user).to_owned(),
            cell_id: None,
            cursor: None,
        };
        self.people.insert(client, info.clone());
        info
    }

    /// Connection `client` left. Returns whether it had a presence to withdraw, and the
    /// awareness entries that withdraw its Yjs states.
    pub(super) fn leave(&mut self, client: u64) -> (bool, Vec<AwarenessEntry>) {
        let left = self.people.remove(&client).is_some();
        let gone: Vec<u64> = self
            .awareness
            .iter()
            .filter(|(_, a)| a.owner == client)
            .map(|(id, _)| *id)
            .collect();
        (left, self.remove(&gone))
    }

    /// Connection `client` moved; returns its new presence, to announce (none if it left).
    pub(super) fn moved(
        &mut self,
        client: u64,
        cell_id: Option<String>,
        cursor: Option<Value>,
    ) -> Result<Option<PresenceInfo>, Refusal> {
        if cursor
            .as_ref()
            .is_some_and(|c| c.to_string().len() > MAX_CURSOR_BYTES)
        {
            return Err(Refusal::CursorTooLarge);
        }
        let Some(info) = self.people.get_mut(&client) else {
            return Ok(None);
        };
        info.cell_id = cell_id;
        info.cursor = cursor;
        Ok(Some(info.clone()))
    }

    /// Everyone, in joining order.
    pub(super) fn people(&self) -> Vec<PresenceInfo> {
        self.people.values().cloned().collect()
    }

    /// Every awareness state as one awareness update, if there is any.
    pub(super) fn awareness_update(&self) -> Option<Vec<u8>> {
        (!self.awareness.is_empty()).then(|| self.all_awareness())
    }

    /// Every awareness state as one awareness update (possibly empty).
    pub(super) fn all_awareness(&self) -> Vec<u8> {
        let entries: Vec<AwarenessEntry> = self
            .awareness
            .iter()
            .map(|(id, a)| AwarenessEntry {
                client: *id,
                clock: a.clock,
                state: a.state.clone(),
            })
            .collect();
        yproto::encode_awareness(&entries)
    }

    /// Removes the states not renewed within `timeout`; returns the entries that withdraw them.
    pub(super) fn expire(&mut self, timeout: Duration) -> Vec<AwarenessEntry> {
        let stale: Vec<u64> = self
            .awareness
            .iter()
            .filter(|(_, a)| a.renewed.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        self.remove(&stale)
    }

    fn remove(&mut self, ids: &[u64]) -> Vec<AwarenessEntry> {
        ids.iter()
            .filter_map(|id| {
                self.awareness.remove(id).map(|a| AwarenessEntry {
                    client: *id,
                    clock: a.clock + 1,
                    state: "null".into(),
                })
            })
            .collect()
    }

    /// Takes the awareness entries connection `client` published: states of Yjs clients it
    /// does not own, older clocks and ids past its allowance are dropped; the identity in each
    /// state is overwritten from the token. Returns the entries to relay.
    pub(super) fn publish(
        &mut self,
        client: u64,
        who: &Who,
        entries: Vec<AwarenessEntry>,
    ) -> Result<Vec<AwarenessEntry>, Refusal> {
        let mut accepted = Vec::new();
        for mut e in entries {
            if e.state.len() > MAX_AWARENESS_STATE_BYTES {
                return Err(Refusal::AwarenessTooLarge);
            }
            match self.awareness.get(&e.client) {
                // Nobody speaks for another connection's Yjs client.
                Some(a) if a.owner != client => continue,
                Some(a) if e.clock < a.clock => continue,
                None if self
                    .awareness
                    .values()
                    .filter(|a| a.owner == client)
                    .count()
                    >= MAX_AWARENESS_IDS =>
                {
                    continue;
                }
                _ => {}
            }
            if e.state == "null" {
                self.awareness.remove(&e.client);
                accepted.push(e);
                continue;
            }
            // The name and colour others see come from the token, not from the client.
            let mut state: Value =
                serde_json::from_str(&e.state).map_err(|_| Refusal::AwarenessNotJson)?;
            if let Value::Object(map) = &mut state {
                let user = map
                    .entry("user")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(u) = user {
                    u.insert("name".into(), Value::String(who.name.clone()));
                    u.insert("color".into(), Value::String(color_of(&who.user).into()));
                    u.insert("id".into(), Value::String(who.user.clone()));
                } else {
                    *user = serde_json::json!({
                        "name": who.name, "color": color_of(&who.user), "id": who.user
                    });
                }
            }
            e.state = state.to_string();
            self.awareness.insert(
                e.client,
                Awareness {
                    clock: e.clock,
                    state: e.state.clone(),
                    owner: client,
                    renewed: Instant::now(),
                },
            );
            accepted.push(e);
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str) -> Who {
        Who {
            user: user.into(),
            name: format!("{user} name"),
            role: session_token::Role::Editor,
        }
    }

    fn entry(client: u64, clock: u64, state: &str) -> AwarenessEntry {
        AwarenessEntry {
            client,
            clock,
            state: state.into(),
        }
    }

    #[test]
    fn identity_comes_from_the_token_and_nobody_speaks_for_another() {
        let mut p = Presence::default();
        let ada = who("ada");
        let accepted = p
            .publish(1, &ada, vec![entry(10, 1, r#"{"user":{"name":"Eve"}}"#)])
            .unwrap();
        let state: Value = serde_json::from_str(&accepted[0].state).unwrap();
        assert_eq!(state["user"]["name"], "ada name");
        assert_eq!(state["user"]["id"], "ada");
        // Connection 2 cannot overwrite connection 1's Yjs client, nor go back in time.
        assert!(
            p.publish(2, &who("eve"), vec![entry(10, 5, "{}")])
                .unwrap()
                .is_empty()
        );
        assert!(
            p.publish(1, &ada, vec![entry(10, 0, "{}")])
                .unwrap()
                .is_empty()
        );
        // Leaving withdraws its states.
        let (_, gone) = p.leave(1);
        assert_eq!(gone, vec![entry(10, 2, "null")]);
    }

    #[test]
    fn limits_hold() {
        let mut p = Presence::default();
        let ada = who("ada");
        let ids: Vec<AwarenessEntry> = (0..10).map(|i| entry(i, 1, "{}")).collect();
        assert_eq!(p.publish(1, &ada, ids).unwrap().len(), MAX_AWARENESS_IDS);
        let big = format!("\"{}\"", "x".repeat(MAX_AWARENESS_STATE_BYTES));
        assert!(matches!(
            p.publish(1, &ada, vec![entry(0, 2, &big)]),
            Err(Refusal::AwarenessTooLarge)
        ));
        assert!(matches!(
            p.publish(1, &ada, vec![entry(0, 3, "not json")]),
            Err(Refusal::AwarenessNotJson)
        ));
        p.join(1, &ada);
        let cursor = Value::String("x".repeat(MAX_CURSOR_BYTES));
        assert!(matches!(
            p.moved(1, None, Some(cursor)),
            Err(Refusal::CursorTooLarge)
        ));
        assert!(p.moved(2, None, None).unwrap().is_none(), "not joined");
    }
}
