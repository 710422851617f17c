//! Output safety for one execution: coalesces stream chunks, rate-limits what reaches clients,
//! and enforces the byte cap with a visible notice. Pure logic, no I/O: the session actor feeds
//! it kernel outputs and the current time, and sends the events it returns.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::protocol::{Output, ServerEvent, StreamName};

/// An error traceback is delivered even past the cap, up to this size, so a failing cell always
/// shows why it failed.
const ERROR_RESERVE: usize = 64 * 1024;

/// A coalesced `update_display_data`: display id, data, metadata.
type DisplayUpdate = (String, Map<String, Value>, Map<String, Value>);

/// Buffered output of one execution.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    execution_id: String,
    limit: u64,
    interval: Duration,
    used: u64,
    truncated: bool,
    pending_stream: Option<(StreamName, String)>,
    pending_clear: Option<bool>,
    pending_updates: Vec<DisplayUpdate>,
    last_flush: Option<Instant>,
}

impl OutputBuffer {
    pub(crate) fn new(execution_id: String, limit: u64, interval: Duration) -> Self {
        Self {
            execution_id,
            limit,
            interval,
            used: 0,
            truncated: false,
            pending_stream: None,
            pending_clear: None,
            pending_updates: Vec::new(),
            last_flush: None,
        }
    }

    /// Bytes of output counted against the cap so far.
    /// The execution whose output this is.
    pub(crate) fn execution_id(&self) -> &str {
        &self.execution_id
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Whether the cap was reached.
    #[cfg(test)]
    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    /// When buffered data must be sent, if any is buffered.
    pub(crate) fn flush_at(&self) -> Option<Instant> {
        if !self.has_pending() {
            return None;
        }
        Some(
            self.last_flush
                .map_or_else(Instant::now, |t| t + self.interval),
        )
    }

    fn has_pending(&self) -> bool {
        self.pending_stream.is_some()
            || self.pending_clear.is_some()
            || !self.pending_updates.is_empty()
    }

    /// Adds stream text; sends at once unless something was sent less than an interval ago.
    pub(crate) fn stream(
        &mut self,
        now: Instant,
        name: StreamName,
        text: &str,
        out: &mut Vec<ServerEvent>,
    ) {
        if self.truncated || text.is_empty() {
            return;
        }
        let remaining = self.limit.saturating_sub(self.used) as usize;
        let (kept, overflow) = if text.len() > remaining {
            (&text[..floor_char_boundary(text, remaining)], true)
        } else {
            (text, false)
        };
        self.used += kept.len() as u64;
        match &mut self.pending_stream {
            Some((n, buf)) if *n == name => buf.push_str(kept),
            _ => {
                self.flush(now, out);
                self.pending_stream = Some((name, kept.to_owned()));
            }
        }
        if overflow {
            self.truncate(now, out);
        } else {
            self.flush_if_due(now, out);
        }
    }

    /// Adds a display_data, execute_result or error output. Buffered stream text goes first so
    /// the order the kernel produced is kept.
    pub(crate) fn rich(&mut self, now: Instant, output: Output, out: &mut Vec<ServerEvent>) {
        let size = output_size(&output) as u64;
        let is_error = matches!(output, Output::Error { .. });
        let fits = self.used.saturating_add(size) <= self.limit;
        if !(fits || is_error && size as usize <= ERROR_RESERVE) {
            if is_error {
                // Too large even for the reserve: keep the name and value, drop the traceback.
                if let Output::Error { ename, evalue, .. } = output {
                    let evalue: String = evalue.chars().take(ERROR_RESERVE / 4).collect();
                    self.flush(now, out);
                    out.push(self.event(Output::Error {
                        ename,
                        evalue,
                        traceback: Vec::new(),
                    }));
                }
            }
            self.truncate(now, out);
            return;
        }
        if self.truncated && !is_error {
            return;
        }
        self.used = self.used.saturating_add(size);
        self.flush(now, out);
        out.push(self.event(output));
    }

    /// Records an `update_display_data`; only the latest update per display id is sent per
    /// interval (a progress bar updating a thousand times a second costs clients five frames).
    pub(crate) fn update_display(
        &mut self,
        now: Instant,
        display_id: String,
        data: Map<String, Value>,
        metadata: Map<String, Value>,
        out: &mut Vec<ServerEvent>,
    ) {
        let size = (value_size(&Value::Object(data.clone()))
            + value_size(&Value::Object(metadata.clone()))) as u64;
        if size > self.limit {
            self.truncate(now, out);
            return;
        }
        match self
            .pending_updates
            .iter_mut()
            .find(|(id, ..)| *id == display_id)
        {
            Some(slot) => *slot = (display_id, data, metadata),
            None => self.pending_updates.push((display_id, data, metadata)),
        }
        self.flush_if_due(now, out);
    }

    /// Records a `clear_output`. What was shown no longer counts against the cap.
    pub(crate) fn clear(&mut self, now: Instant, wait: bool, out: &mut Vec<ServerEvent>) {
        self.pending_stream = None;
        self.pending_clear = Some(wait);
        self.used = 0;
        self.truncated = false;
        self.flush_if_due(now, out);
    }

    fn flush_if_due(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        if self.last_flush.is_none_or(|t| now >= t + self.interval) {
            self.flush(now, out);
        }
    }

    /// Sends everything buffered.
    pub(crate) fn flush(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        if !self.has_pending() {
            return;
        }
        self.last_flush = Some(now);
        if let Some(wait) = self.pending_clear.take() {
            out.push(ServerEvent::ClearOutput {
                execution_id: self.execution_id.clone(),
                wait,
            });
        }
        if let Some((name, text)) = self.pending_stream.take() {
            out.push(self.event(Output::Stream { name, text }));
        }
        for (display_id, data, metadata) in self.pending_updates.drain(..) {
            out.push(ServerEvent::UpdateDisplay {
                execution_id: self.execution_id.clone(),
                display_id,
                data,
                metadata,
            });
        }
    }

    /// Output was lost because it exceeded the limit before it could be counted.
    pub(crate) fn over_limit(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        self.used = self.limit;
        self.truncate(now, out);
    }

    fn truncate(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        self.flush(now, out);
        if !self.truncated {
            self.truncated = true;
            metrics::counter!("middleman_output_truncations_total").increment(1);
            out.push(ServerEvent::OutputTruncated {
                execution_id: self.execution_id.clone(),
                limit_bytes: self.limit,
            });
        }
    }

    fn event(&self, output: Output) -> ServerEvent {
        ServerEvent::Output {
            execution_id: self.execution_id.clone(),
            output,
        }
    }
}

/// The largest index `<= i` that is a char boundary of `s` (cuts never split a UTF-8 sequence).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Approximate encoded size of an output: string bytes plus a little per node. Cheap (no
/// serialisation) and never less than the payload a client receives.
pub(crate) fn output_size(output: &Output) -> usize {
    match output {
        Output::Stream { text, .. } => text.len(),
        Output::DisplayData { data, metadata, .. }
        | Output::ExecuteResult { data, metadata, .. } => map_size(data) + map_size(metadata),
        Output::Error {
            ename,
            evalue,
            traceback,
        } => ename.len() + evalue.len() + traceback.iter().map(|t| t.len() + 4).sum::<usize>(),
        Output::Unknown { output } => map_size(output),
    }
}

fn map_size(map: &Map<String, Value>) -> usize {
    map.iter().map(|(k, v)| k.len() + 4 + value_size(v)).sum()
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => a.iter().map(value_size).sum::<usize>() + 2,
        Value::Object(m) => map_size(m) + 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(limit: u64) -> OutputBuffer {
        OutputBuffer::new("e".into(), limit, Duration::from_millis(200))
    }

    fn texts(events: &[ServerEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Output {
                    output: Output::Stream { text, .. },
                    ..
                } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_chunk_goes_at_once_then_coalesces() {
        let mut b = buf(1 << 20);
        let t0 = Instant::now();
        let mut out = Vec::new();
        b.stream(t0, StreamName::Stdout, "a\n", &mut out);
        assert_eq!(texts(&out), vec!["a\n"]);
        out.clear();
        for i in 0..100 {
            b.stream(
                t0 + Duration::from_millis(1),
                StreamName::Stdout,
                &format!("{i}\n"),
                &mut out,
            );
        }
        assert!(out.is_empty(), "coalesced until the interval passes");
        assert_eq!(b.flush_at(), Some(t0 + Duration::from_millis(200)));
        b.flush(t0 + Duration::from_millis(200), &mut out);
        let all: String = (0..100).map(|i| format!("{i}\n")).collect();
        assert_eq!(texts(&out), vec![all]);
    }

    #[test]
    fn order_is_kept_across_kinds() {
        let mut b = buf(1 << 20);
        let t = Instant::now();
        let mut out = Vec::new();
        b.stream(t, StreamName::Stdout, "1", &mut out);
        b.stream(t, StreamName::Stdout, "2", &mut out);
        b.stream(t, StreamName::Stderr, "3", &mut out);
        b.rich(
            t,
            Output::DisplayData {
                data: Map::new(),
                metadata: Map::new(),
                display_id: None,
            },
            &mut out,
        );
        let kinds: Vec<String> = out
            .iter()
            .map(|e| match e {
                ServerEvent::Output {
                    output: Output::Stream { text, .. },
                    ..
                } => text.clone(),
                ServerEvent::Output {
                    output: Output::DisplayData { .. },
                    ..
                } => "D".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, vec!["1", "2", "3", "D"]);
    }

    #[test]
    fn cap_truncates_on_char_boundary_with_one_notice_and_errors_still_show() {
        let mut b = buf(10);
        let t = Instant::now();
        let mut out = Vec::new();
        b.stream(t, StreamName::Stdout, "ééééééééé", &mut out); // 18 bytes
        b.stream(t, StreamName::Stdout, "more", &mut out);
        b.rich(
            t,
            Output::Error {
                ename: "E".into(),
                evalue: "v".into(),
                traceback: vec!["tb".into()],
            },
            &mut out,
        );
        assert_eq!(texts(&out), vec!["ééééé"]);
        let notices = out
            .iter()
            .filter(|e| matches!(e, ServerEvent::OutputTruncated { .. }))
            .count();
        assert_eq!(notices, 1);
        assert!(matches!(
            out.last(),
            Some(ServerEvent::Output {
                output: Output::Error { .. },
                ..
            })
        ));
        assert!(b.truncated());
    }

    #[test]
    fn display_updates_coalesce_per_id() {
        let mut b = buf(1 << 20);
        let t = Instant::now();
        let mut out = Vec::new();
        let data = |n: i64| {
            let mut m = Map::new();
            m.insert("text/plain".into(), Value::from(n));
            m
        };
        b.update_display(t, "p".into(), data(0), Map::new(), &mut out);
        assert_eq!(out.len(), 1);
        for n in 1..1000 {
            b.update_display(t, "p".into(), data(n), Map::new(), &mut out);
        }
        b.flush(t + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[1], ServerEvent::UpdateDisplay { data, .. } if data["text/plain"] == 999)
        );
    }
}
