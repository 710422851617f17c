//! Side questions from a client, to the kernel and back: completion and inspection (Jupyter's
//! `complete_request` and `inspect_request` for Python; the kernel helper's `sql_complete` for
//! SQL cells) and table pages (the helper's `table_page`). Pure conversions: clients count
//! UTF-16 units, Jupyter counts code points; what the kernel answers is checked and capped
//! before it reaches a client. The session sends the question (`kernel::Command::Ask`).

use serde_json::{Value, json};

use crate::document::CellKind;
use crate::kernel::Question;
use crate::protocol::{AssistAnswer, AssistRefusal, ClientMessage, Completion, TableSort};

/// Most rows one page may ask for.
pub const MAX_PAGE_ROWS: u32 = 1000;
/// Most completions passed on.
const MAX_MATCHES: usize = 500;
/// Largest inspection text passed on.
const MAX_INSPECT_CHARS: usize = 64 * 1024;
/// Largest page (as JSON) passed on.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// A side question, as a client asked it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Complete {
        cell_id: Option<String>,
        code: String,
        cursor: u32,
    },
    Inspect {
        cell_id: Option<String>,
        code: String,
        cursor: u32,
        detail: u8,
    },
    TablePage {
        table: String,
        offset: u64,
        limit: u32,
        sort: Option<TableSort>,
    },
}

impl Ask {
    /// The side question in a client message, with its request id.
    pub fn from_message(message: ClientMessage) -> Result<(String, Ask), ClientMessage> {
        match message {
            ClientMessage::Complete {
                request_id,
                cell_id,
                code,
                cursor,
            } => Ok((
                request_id,
                Ask::Complete {
                    cell_id,
                    code,
                    cursor,
                },
            )),
            ClientMessage::Inspect {
                request_id,
                cell_id,
                code,
                cursor,
                detail,
            } => Ok((
                request_id,
                Ask::Inspect {
                    cell_id,
                    code,
                    cursor,
                    detail,
                },
            )),
            ClientMessage::TablePage {
                request_id,
                table,
                offset,
                limit,
                sort,
            } => Ok((
                request_id,
                Ask::TablePage {
                    table,
                    offset,
                    limit,
                    sort,
                },
            )),
            other => Err(other),
        }
    }

    /// The cell whose language the question is in.
    pub fn cell_id(&self) -> Option<&str> {
        match self {
            Ask::Complete { cell_id, .. } | Ask::Inspect { cell_id, .. } => cell_id.as_deref(),
            Ask::TablePage { .. } => None,
        }
    }

    /// What the question is, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Ask::Complete { .. } => "complete",
            Ask::Inspect { .. } => "inspect",
            Ask::TablePage { .. } => "table_page",
        }
    }

    /// Whether a viewer may ask it (pages of the outputs they see; not the editor's questions).
    pub fn viewer_may_ask(&self) -> bool {
        matches!(self, Ask::TablePage { .. })
    }
}

/// How often one connection may ask: a burst, then a steady rate (a person typing asks a few
/// times a second; a script flooding the kernel with questions is refused, not queued).
#[derive(Debug, Clone)]
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: std::time::Instant,
}

impl RateLimit {
    pub fn new(burst: u32, per_second: u32, now: std::time::Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
        }
    }

    /// Whether a question asked at `now` may go ahead (it then uses a token).
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The code-point offset of UTF-16 offset `utf16` in `s` (clamped to its end).
fn code_points(s: &str, utf16: u32) -> usize {
    let mut units = 0u32;
    for (i, c) in s.chars().enumerate() {
        if units >= utf16 {
            return i;
        }
        units += c.len_utf16() as u32;
    }
    s.chars().count()
}

/// The UTF-16 offset of code-point offset `cp` in `s` (clamped to its end).
fn utf16_units(s: &str, cp: u64) -> u32 {
    s.chars()
        .take(usize::try_from(cp).unwrap_or(usize::MAX))
        .map(|c| c.len_utf16() as u32)
        .sum()
}

/// The identifier (dotted names included) around code-point offset `cp`.
fn word_at(code: &str, cp: usize) -> String {
    let chars: Vec<char> = code.chars().collect();
    let part = |c: &char| c.is_alphanumeric() || *c == '_' || *c == '.';
    let start = chars[..cp.min(chars.len())]
        .iter()
        .rposition(|c| !part(c))
        .map_or(0, |i| i + 1);
    let end = chars[cp.min(chars.len())..]
        .iter()
        .position(|c| !part(c))
        .map_or(chars.len(), |i| cp + i);
    chars[start..end.max(start)]
        .iter()
        .collect::<String>()
        .trim_matches('.')
        .to_owned()
}

/// The kernel request that answers `ask`, for a cell of `kind`.
pub fn question(ask: &Ask, kind: CellKind) -> Question {
    match (ask, kind) {
        (Ask::Complete { code, cursor, .. }, CellKind::Sql) => Question {
            msg_type: "nbplat_request",
            content: json!({"op": "sql_complete", "code": code, "cursor": code_points(code, *cursor)}),
        },
        (Ask::Complete { code, cursor, .. }, _) => Question {
            msg_type: "complete_request",
            content: json!({"code": code, "cursor_pos": code_points(code, *cursor)}),
        },
        // In SQL, the name at the cursor is a DataFrame or one of its columns: what Python
        // knows of it is the answer.
        (
            Ask::Inspect {
                code,
                cursor,
                detail,
                ..
            },
            CellKind::Sql,
        ) => {
            let word = word_at(code, code_points(code, *cursor));
            Question {
                msg_type: "inspect_request",
                content: json!({"code": word, "cursor_pos": word.chars().count(), "detail_level": detail.min(&1)}),
            }
        }
        (
            Ask::Inspect {
                code,
                cursor,
                detail,
                ..
            },
            _,
        ) => Question {
            msg_type: "inspect_request",
            content: json!({"code": code, "cursor_pos": code_points(code, *cursor), "detail_level": detail.min(&1)}),
        },
        (
            Ask::TablePage {
                table,
                offset,
                limit,
                sort,
            },
            _,
        ) => Question {
            msg_type: "nbplat_request",
            content: json!({
                "op": "table_page",
                "table": table,
                "offset": offset,
                "limit": (*limit).min(MAX_PAGE_ROWS),
                "sort": sort,
            }),
        },
    }
}

/// A refusal with its message.
pub fn refused(reason: AssistRefusal, message: impl Into<String>) -> AssistAnswer {
    AssistAnswer::Refused {
        reason,
        message: message.into(),
    }
}

/// The answer to `ask` in the kernel's reply `content`.
pub fn answer(ask: &Ask, content: &Value) -> AssistAnswer {
    if content.get("status").and_then(Value::as_str) != Some("ok") {
        let name = content.get("ename").and_then(Value::as_str).unwrap_or("");
        let value = content
            .get("evalue")
            .and_then(Value::as_str)
            .unwrap_or("the kernel could not answer");
        let reason = if name == "gone" {
            AssistRefusal::Gone
        } else {
            AssistRefusal::Failed
        };
        return refused(reason, value.chars().take(1000).collect::<String>());
    }
    match ask {
        Ask::Complete { code, .. } => completions(code, content),
        Ask::Inspect { .. } => {
            let text = content
                .pointer("/data/text~1plain")
                .and_then(Value::as_str)
                .unwrap_or("");
            AssistAnswer::Inspect {
                found: content.get("found").and_then(Value::as_bool) == Some(true),
                text: text.chars().take(MAX_INSPECT_CHARS).collect(),
            }
        }
        Ask::TablePage { table, .. } => page(table, content),
    }
}

fn completions(code: &str, content: &Value) -> AssistAnswer {
    let offset = |key: &str| {
        let cp = content.get(key).and_then(Value::as_u64).unwrap_or(0);
        utf16_units(code, cp)
    };
    let (cursor_start, cursor_end) = (offset("cursor_start"), offset("cursor_end"));
    let texts = |v: &Value| v.as_str().map(str::to_owned);
    // IPython's typed completions (with signatures) when it gives them; the plain list, which
    // other kernels and the helper's SQL completion send, otherwise.
    let typed = content
        .pointer("/metadata/_jupyter_types_experimental")
        .and_then(Value::as_array);
    let matches: Vec<Completion> = match typed {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|m| {
                Some(Completion {
                    text: texts(m.get("text")?)?,
                    kind: m.get("type").and_then(texts).filter(|t| t != "<unknown>"),
                    signature: m.get("signature").and_then(texts).filter(|s| !s.is_empty()),
                })
            })
            .take(MAX_MATCHES)
            .collect(),
        _ => content
            .get("matches")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| match m {
                        Value::String(s) => Some(Completion {
                            text: s.clone(),
                            kind: None,
                            signature: None,
                        }),
                        Value::Object(_) => Some(Completion {
                            text: texts(m.get("text")?)?,
                            kind: m.get("type").and_then(texts),
                            signature: None,
                        }),
                        _ => None,
                    })
                    .take(MAX_MATCHES)
                    .collect()
            })
            .unwrap_or_default(),
    };
    AssistAnswer::Complete {
        matches,
        cursor_start,
        cursor_end: cursor_end.max(cursor_start),
    }
}

fn page(table: &str, content: &Value) -> AssistAnswer {
    let rows = match content.get("rows").and_then(Value::as_array) {
        Some(rows) if rows.iter().all(Value::is_array) => rows,
        _ => return refused(AssistRefusal::Failed, "the kernel's page has no rows"),
    };
    if rows.len() > MAX_PAGE_ROWS as usize || content.to_string().len() > MAX_PAGE_BYTES {
        return refused(AssistRefusal::Failed, "the kernel's page is too large");
    }
    AssistAnswer::TablePage {
        table: table.to_owned(),
        offset: content.get("offset").and_then(Value::as_u64).unwrap_or(0),
        row_count: content
            .get("row_count")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        rows: rows
            .iter()
            .map(|r| r.as_array().cloned().unwrap_or_default())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_steady_rate() {
        let t0 = std::time::Instant::now();
        let mut limit = RateLimit::new(3, 10, t0);
        assert!((0..3).all(|_| limit.allow(t0)));
        assert!(!limit.allow(t0));
        assert!(limit.allow(t0 + std::time::Duration::from_millis(100)));
        assert!(!limit.allow(t0 + std::time::Duration::from_millis(100)));
        assert!((0..3).all(|_| limit.allow(t0 + std::time::Duration::from_secs(60))));
    }

    #[test]
    fn offsets_convert_between_utf16_and_code_points() {
        let s = "x = '😀'; df.";
        // The emoji is two UTF-16 units and one code point.
        assert_eq!(code_points(s, 7), 6);
        assert_eq!(code_points(s, 100), s.chars().count());
        assert_eq!(utf16_units(s, 6), 7);
        assert_eq!(utf16_units(s, 1000), s.encode_utf16().count() as u32);
    }

    #[test]
    fn python_completion_keeps_ipythons_types_and_converts_offsets() {
        let code = "'😀'; df.al";
        let ask = Ask::Complete {
            cell_id: None,
            code: code.into(),
            cursor: code.encode_utf16().count() as u32,
        };
        let q = question(&ask, CellKind::Code);
        assert_eq!(q.msg_type, "complete_request");
        assert_eq!(q.content["cursor_pos"], 10);
        let reply = json!({
            "status": "ok", "matches": ["alpha"], "cursor_start": 8, "cursor_end": 10,
            "metadata": {"_jupyter_types_experimental": [
                {"text": "alpha", "type": "instance", "signature": "", "start": 8, "end": 10}
            ]}
        });
        assert_eq!(
            answer(&ask, &reply),
            AssistAnswer::Complete {
                matches: vec![Completion {
                    text: "alpha".into(),
                    kind: Some("instance".into()),
                    signature: None
                }],
                cursor_start: 9,
                cursor_end: 11,
            }
        );
    }

    #[test]
    fn sql_cells_complete_with_the_helper_and_inspect_the_name_at_the_cursor() {
        let ask = Ask::Complete {
            cell_id: Some("c".into()),
            code: "SELECT * FROM sa".into(),
            cursor: 16,
        };
        let q = question(&ask, CellKind::Sql);
        assert_eq!(q.msg_type, "nbplat_request");
        assert_eq!(q.content["op"], "sql_complete");
        let reply = json!({"status": "ok", "matches": [{"text": "sales", "type": "table"}], "cursor_start": 14, "cursor_end": 16});
        let AssistAnswer::Complete { matches, .. } = answer(&ask, &reply) else {
            panic!("not a completion")
        };
        assert_eq!(matches[0].kind.as_deref(), Some("table"));
        let inspect = Ask::Inspect {
            cell_id: Some("c".into()),
            code: "SELECT * FROM sales WHERE".into(),
            cursor: 16,
            detail: 0,
        };
        let q = question(&inspect, CellKind::Sql);
        assert_eq!(q.content["code"], "sales");
        assert_eq!(word_at("a + df.col", 8), "df.col");
    }

    #[test]
    fn pages_are_checked_and_errors_become_refusals() {
        let ask = Ask::TablePage {
            table: "t".into(),
            offset: 50,
            limit: 5000,
            sort: None,
        };
        assert_eq!(question(&ask, CellKind::Code).content["limit"], 1000);
        let ok = json!({"status": "ok", "offset": 50, "row_count": 1000000, "rows": [[50, "x"], [51, null]]});
        assert!(
            matches!(answer(&ask, &ok), AssistAnswer::TablePage { row_count: 1000000, ref rows, .. } if rows.len() == 2)
        );
        let gone = json!({"status": "error", "ename": "gone", "evalue": "run its cell again"});
        assert!(matches!(
            answer(&ask, &gone),
            AssistAnswer::Refused {
                reason: AssistRefusal::Gone,
                ..
            }
        ));
        let bad = json!({"status": "ok", "rows": [1, 2]});
        assert!(matches!(
            answer(&ask, &bad),
            AssistAnswer::Refused {
                reason: AssistRefusal::Failed,
                ..
            }
        ));
        let huge = json!({"status": "ok", "rows": vec![json!([0]); 1001]});
        assert!(matches!(answer(&ask, &huge), AssistAnswer::Refused { .. }));
    }
}
