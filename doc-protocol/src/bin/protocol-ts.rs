//! Prints the TypeScript declarations of the document protocol for the web client
//! (`web/src/protocol.ts`): `cargo run -p doc-protocol --features ts --bin protocol-ts`.
//! `scripts/check-protocol-types.sh` fails when the committed file is not this program's output.
//!
//! One file, no imports: ts-rs writes one file per type by default, which would make the web
//! client's imports follow Rust's module layout. Numbers: every integer in the protocol (sequence
//! numbers, counts, byte sizes, milliseconds) stays far below 2^53, so `u64` is a TypeScript
//! `number`, not a `bigint` (which `JSON.parse` never produces).

use doc_protocol::*;
use ts_rs::{Config, TS};

fn main() {
    let cfg = Config::new().with_large_int("number");
    let declarations = [
        // What a client sends, and what it receives.
        ClientMessage::decl(&cfg),
        ServerFrame::decl(&cfg),
        ServerEvent::decl(&cfg),
        ErrorCode::decl(&cfg),
        Snapshot::decl(&cfg),
        PresenceInfo::decl(&cfg),
        Limits::decl(&cfg),
        // Cells, the graph and outputs.
        CellKind::decl(&cfg),
        CellState::decl(&cfg),
        CellRuntime::decl(&cfg),
        CellView::decl(&cfg),
        StateCause::decl(&cfg),
        RunRecord::decl(&cfg),
        DeferredOutputs::decl(&cfg),
        CellHeader::decl(&cfg),
        Reactivity::decl(&cfg),
        GraphRule::decl(&cfg),
        GraphCell::decl(&cfg),
        // Checkpoints.
        Resume::decl(&cfg),
        RestoredNames::decl(&cfg),
        RerunCell::decl(&cfg),
        LostName::decl(&cfg),
        LostFile::decl(&cfg),
        GraphError::decl(&cfg),
        Output::decl(&cfg),
        StreamName::decl(&cfg),
        // The kernel and its executions.
        KernelState::decl(&cfg),
        KernelDescription::decl(&cfg),
        ExecutionSummary::decl(&cfg),
        ExecutionStatus::decl(&cfg),
        PendingInput::decl(&cfg),
        InputOutcome::decl(&cfg),
        // Side questions: completion, inspection, table pages.
        AssistAnswer::decl(&cfg),
        AssistRefusal::decl(&cfg),
        Completion::decl(&cfg),
        TableOutput::decl(&cfg),
        TableColumn::decl(&cfg),
        TableSort::decl(&cfg),
    ];
    let mut out = String::from(
        "// Generated from the doc-protocol crate by\n\
         //   cargo run -p doc-protocol --features ts --bin protocol-ts > web/src/protocol.ts\n\
         // Do not edit: scripts/check-protocol-types.sh fails when this file is not current.\n\
         // docs/protocol.md explains the messages.\n\n",
    );
    for decl in declarations {
        out.push_str("export ");
        out.push_str(&layout(&decl));
        out.push_str("\n\n");
    }
    // Names the client uses that are not Rust types of their own.
    out.push_str(
        "/** An nbformat MIME bundle: MIME type to data (text, or JSON for JSON types). */\n\
         export type MimeBundle = Record<string, unknown>;\n\n\
         /** A frame as received: an event, with its `seq` when it was broadcast. */\n\
         export type Frame = ServerFrame;\n\n\
         /** The first frame of every connection. */\n\
         export type Welcome = Extract<ServerEvent, { type: \"welcome\" }>;\n",
    );
    print!("{out}");
}

/// Lays a declaration out one union member per line (ts-rs prints each on one line), and
/// indents the doc comments it puts inside objects.
fn layout(decl: &str) -> String {
    let mut out = String::with_capacity(decl.len() + decl.len() / 8);
    // The brackets open around the current character. A union member starts outside any, or
    // directly inside the parentheses of an intersection such as `{ seq } & (A | B)`.
    let mut open: Vec<char> = Vec::new();
    let mut in_string = false;
    for c in decl.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' | '(' | '<' | '[' => open.push(c),
            '}' | ')' | '>' | ']' => {
                open.pop();
            }
            '|' if (open.is_empty() || open == ['(']) && out.ends_with(' ') => {
                out.pop();
                out.push_str("\n  |");
                continue;
            }
            '\n' => {
                out.push_str("\n    ");
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    // Doc comments end with a line of their own: do not leave trailing spaces behind.
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}
