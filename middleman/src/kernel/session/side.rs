//! Side questions: completion, inspection and the kernel helper's requests (table pages, SQL
//! completion). They go to the kernel's subshell when it has one, so they are answered while a
//! cell runs; without one they are refused at once while the kernel is busy (never queued
//! behind a cell). Their replies come back on the shell channel and are matched by parent id;
//! what the kernel sends meanwhile on IOPub for them (busy/idle) belongs to no execution and is
//! ignored. A kernel that goes away drops every waiting question (its asker sees the channel
//! close). Quiet requests (checkpoints) are side questions sent on the main shell instead, in
//! order with executions.

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::oneshot;

/// A question for the kernel: a Jupyter shell request.
#[derive(Debug, Clone)]
pub struct Question {
    pub msg_type: &'static str,
    pub content: Value,
}

/// Where the reply's content goes.
pub type AnswerSender = oneshot::Sender<Value>;

/// A quiet request: a question for the kernel's main shell, so it is ordered with executions
/// (the kernel handles its main shell one request at a time). It shows no output and no
/// execution count and is not in the history: checkpoints are saved and restored this way.
#[derive(Debug)]
pub struct Quiet {
    pub question: Question,
    pub answer: AnswerSender,
}

/// Questions the kernel has not answered yet, at most [`MAX_WAITING`].
#[derive(Debug, Default)]
pub(super) struct Waiting {
    by_msg_id: HashMap<String, AnswerSender>,
}

/// Questions that may wait for the kernel at once (across every connection).
const MAX_WAITING: usize = 64;

impl Waiting {
    /// Whether another question may be sent (askers that gave up are forgotten first).
    pub(super) fn has_room(&mut self) -> bool {
        self.by_msg_id.retain(|_, tx| !tx.is_closed());
        self.by_msg_id.len() < MAX_WAITING
    }

    pub(super) fn insert(&mut self, msg_id: String, answer: AnswerSender) {
        self.by_msg_id.insert(msg_id, answer);
    }

    /// Whether `parent` is a question's id.
    pub(super) fn is_waiting(&self, parent: &str) -> bool {
        self.by_msg_id.contains_key(parent)
    }

    /// Delivers the reply to question `parent`.
    pub(super) fn answer(&mut self, parent: &str, content: Value) {
        if let Some(tx) = self.by_msg_id.remove(parent) {
            let _ = tx.send(content);
        }
    }

    /// The kernel is gone: nothing waiting will be answered.
    pub(super) fn clear(&mut self) {
        self.by_msg_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_reach_their_asker_and_room_is_made_by_askers_that_left() {
        let mut w = Waiting::default();
        let (tx, mut rx) = oneshot::channel();
        w.insert("a".into(), tx);
        assert!(w.is_waiting("a"));
        w.answer("a", Value::from(1));
        assert_eq!(rx.try_recv().unwrap(), Value::from(1));
        assert!(!w.is_waiting("a"));
        let mut kept = Vec::new();
        for i in 0..MAX_WAITING {
            let (tx, rx) = oneshot::channel();
            w.insert(format!("q{i}"), tx);
            kept.push(rx);
        }
        assert!(!w.has_room());
        kept.truncate(10);
        assert!(w.has_room());
        w.clear();
        assert!(kept[0].try_recv().is_err());
    }
}
