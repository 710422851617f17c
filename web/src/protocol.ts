// Generated from the doc-protocol crate by
//   cargo run -p doc-protocol --features ts --bin protocol-ts > web/src/protocol.ts
// Do not edit: scripts/check-protocol-types.sh fails when this file is not current.
// docs/protocol.md explains the messages.

export type ClientMessage = { "type": "execute", code: string, request_id?: string | null,
    /**
     * Abort the executions queued behind this one if it fails (Jupyter's default).
     */
    stop_on_error?: boolean, }
  | { "type": "execute_cell", cell_id: string, request_id?: string | null, stop_on_error?: boolean, }
  | { "type": "insert_cell", index: number, cell_type: CellKind, source?: string, request_id?: string | null, }
  | { "type": "delete_cell", cell_id: string, }
  | { "type": "move_cell", cell_id: string, index: number, }
  | { "type": "set_cell_type", cell_id: string, cell_type: CellKind, }
  | { "type": "set_source", cell_id: string, source: string, }
  | { "type": "clear_outputs", cell_id?: string | null, }
  | { "type": "presence", cell_id?: string | null, cursor?: unknown, }
  | { "type": "set_cell_disabled", cell_id: string, disabled: boolean, }
  | { "type": "set_reactivity", mode: Reactivity, }
  | { "type": "set_graph_rule", rule: GraphRule, }
  | { "type": "run_stale", request_id?: string | null, }
  | { "type": "run_all", request_id?: string | null, }
  | { "type": "fetch_outputs", cell_ids: Array<string>, }
  | { "type": "input_reply", execution_id: string, value: string, }
  | { "type": "interrupt" }
  | { "type": "restart" }
  | { "type": "complete", request_id: string, cell_id?: string | null, code: string, cursor: number, }
  | { "type": "inspect", request_id: string, cell_id?: string | null, code: string, cursor: number, detail?: number, }
  | { "type": "table_page", request_id: string, table: string, offset: number, limit: number, sort?: TableSort | null, }
  | { "type": "ping", nonce?: number | null, };

export type ServerFrame = { seq?: number | null, } & ({ "type": "welcome", protocol: number,
    /**
     * This Middleman's run: `seq` numbers are only comparable within one session.
     */
    session: string,
    /**
     * This connection's id, as it appears in presence.
     */
    client: number, document: string, user: string, name: string, role: string, kernel: KernelDescription, limits: Limits,
    /**
     * The `seq` of the last broadcast event this welcome accounts for.
     */
    last_seq: number,
    /**
     * Set when the client asked to resume from this `seq` and could: the events after it
     * follow, and there is no snapshot.
     */
    resumed_from?: number | null,
    /**
     * The whole state at `last_seq` (absent when resumed).
     */
    snapshot?: Snapshot | null, }
  | { "type": "cells", cells: Array<CellHeader>, }
  | { "type": "cell_created", cell_id: string, request_id?: string | null, }
  | { "type": "cell_state", cell_id: string, state: CellState, execution_count?: number | null, cause?: StateCause | null, last_run?: RunRecord | null, }
  | { "type": "outputs_cleared", cell_id: string, }
  | { "type": "graph", cells: Array<GraphCell>, }
  | { "type": "reactivity", mode: Reactivity, }
  | { "type": "cell_outputs", cell_id: string, outputs: Array<Output>, }
  | { "type": "graph_rule", rule: GraphRule, }
  | { "type": "cell_disabled", cell_id: string, disabled: boolean, }
  | { "type": "presence" } & PresenceInfo
  | { "type": "presence_left", client: number, }
  | { "type": "kernel_status", state: KernelState, reason?: string | null,
    /**
     * Set when a new kernel session begins (a restart): results from earlier sessions
     * are not in the kernel.
     */
    kernel_session?: string | null, }
  | { "type": "resumed" } & Resume
  | { "type": "checkpoint_status", failing: boolean, reason?: string | null, }
  | { "type": "execution_queued", execution: ExecutionSummary, request_id?: string | null, }
  | { "type": "queue", executions: Array<ExecutionSummary>, }
  | { "type": "execution_started", execution_id: string, }
  | { "type": "execution_input", execution_id: string, execution_count: number, }
  | { "type": "output", execution_id: string, output: Output, }
  | { "type": "update_display", execution_id: string, display_id: string, data: MimeBundle, metadata: Record<string, unknown>, }
  | { "type": "clear_output", execution_id: string, wait: boolean, }
  | { "type": "output_truncated", execution_id: string, limit_bytes: number, }
  | { "type": "input_request", execution_id: string, prompt: string, password: boolean, }
  | { "type": "input_resolved", execution_id: string, outcome: InputOutcome, by?: string | null, }
  | { "type": "execution_finished", execution_id: string, status: ExecutionStatus, execution_count?: number | null, duration_ms: number,
    /**
     * Why, for every status but `ok` and `error`.
     */
    reason?: string | null, }
  | { "type": "error", code: ErrorCode, message: string, cell_id?: string | null, }
  | { "type": "assist", request_id: string, answer: AssistAnswer, }
  | { "type": "pong", nonce?: number | null, }
  | { "type": "run_finished", request_id: string, }
  | { "type": "shutdown", reason: string, });

export type ServerEvent = { "type": "welcome", protocol: number,
    /**
     * This Middleman's run: `seq` numbers are only comparable within one session.
     */
    session: string,
    /**
     * This connection's id, as it appears in presence.
     */
    client: number, document: string, user: string, name: string, role: string, kernel: KernelDescription, limits: Limits,
    /**
     * The `seq` of the last broadcast event this welcome accounts for.
     */
    last_seq: number,
    /**
     * Set when the client asked to resume from this `seq` and could: the events after it
     * follow, and there is no snapshot.
     */
    resumed_from?: number | null,
    /**
     * The whole state at `last_seq` (absent when resumed).
     */
    snapshot?: Snapshot | null, }
  | { "type": "cells", cells: Array<CellHeader>, }
  | { "type": "cell_created", cell_id: string, request_id?: string | null, }
  | { "type": "cell_state", cell_id: string, state: CellState, execution_count?: number | null, cause?: StateCause | null, last_run?: RunRecord | null, }
  | { "type": "outputs_cleared", cell_id: string, }
  | { "type": "graph", cells: Array<GraphCell>, }
  | { "type": "reactivity", mode: Reactivity, }
  | { "type": "cell_outputs", cell_id: string, outputs: Array<Output>, }
  | { "type": "graph_rule", rule: GraphRule, }
  | { "type": "cell_disabled", cell_id: string, disabled: boolean, }
  | { "type": "presence" } & PresenceInfo
  | { "type": "presence_left", client: number, }
  | { "type": "kernel_status", state: KernelState, reason?: string | null,
    /**
     * Set when a new kernel session begins (a restart): results from earlier sessions
     * are not in the kernel.
     */
    kernel_session?: string | null, }
  | { "type": "resumed" } & Resume
  | { "type": "checkpoint_status", failing: boolean, reason?: string | null, }
  | { "type": "execution_queued", execution: ExecutionSummary, request_id?: string | null, }
  | { "type": "queue", executions: Array<ExecutionSummary>, }
  | { "type": "execution_started", execution_id: string, }
  | { "type": "execution_input", execution_id: string, execution_count: number, }
  | { "type": "output", execution_id: string, output: Output, }
  | { "type": "update_display", execution_id: string, display_id: string, data: MimeBundle, metadata: Record<string, unknown>, }
  | { "type": "clear_output", execution_id: string, wait: boolean, }
  | { "type": "output_truncated", execution_id: string, limit_bytes: number, }
  | { "type": "input_request", execution_id: string, prompt: string, password: boolean, }
  | { "type": "input_resolved", execution_id: string, outcome: InputOutcome, by?: string | null, }
  | { "type": "execution_finished", execution_id: string, status: ExecutionStatus, execution_count?: number | null, duration_ms: number,
    /**
     * Why, for every status but `ok` and `error`.
     */
    reason?: string | null, }
  | { "type": "error", code: ErrorCode, message: string, cell_id?: string | null, }
  | { "type": "assist", request_id: string, answer: AssistAnswer, }
  | { "type": "pong", nonce?: number | null, }
  | { "type": "run_finished", request_id: string, }
  | { "type": "shutdown", reason: string, };

export type ErrorCode = "bad_message"
  | "too_large"
  | "forbidden"
  | "queue_full"
  | "no_pending_input"
  | "kernel_dead"
  | "unavailable"
  | "no_such_cell"
  | "invalid_edit";

export type Snapshot = { kernel_state: KernelState,
    /**
     * The execution running now, then the queue in order.
     */
    executions: Array<ExecutionSummary>, cells: Array<CellView>, presence: Array<PresenceInfo>,
    /**
     * The prompt waiting for an answer, if any.
     */
    input?: PendingInput | null,
    /**
     * The dependency graph of the code cells.
     */
    graph: Array<GraphCell>, reactivity: Reactivity, graph_rule: GraphRule,
    /**
     * The kernel session running now: a cell whose `last_run` names another one has no
     * results in the kernel.
     */
    kernel_session: string,
    /**
     * How the kernel running now was resumed from the checkpoint, if it was.
     */
    resumed?: Resume | null, };

export type PresenceInfo = { client: number, user: string, name: string, role: string, color: string, cell_id?: string | null, cursor?: unknown, };

export type Limits = { max_client_message_bytes: number, max_output_bytes: number, execution_timeout_ms: number,
    /**
     * Collaborators allowed in the document at once.
     */
    max_clients: number,
    /**
     * Streamed output reaches clients at most once per this interval per execution.
     */
    stream_flush_interval_ms: number, };

export type CellKind = "code"
  | "sql"
  | "markdown"
  | "raw";

export type CellState = "idle"
  | "queued"
  | "running"
  | "error"
  | "stale"
  | "blocked";

export type CellRuntime = { outputs: Array<Output>, execution_count: number | null, state: CellState,
    /**
     * The last execution's output passed its byte cap; later output was dropped.
     */
    truncated?: boolean,
    /**
     * A disabled cell does not run, and blocks the cells that depend on it.
     */
    disabled?: boolean,
    /**
     * Why the cell is stale or blocked (absent in other states).
     */
    cause?: StateCause | null,
    /**
     * Who ran it last, when, for how long, on which kernel.
     */
    last_run?: RunRecord | null, };

export type CellView = { id: string, kind: CellKind, source: string,
    /**
     * In a welcome snapshot: this cell's outputs were left out to keep the snapshot small
     * (`outputs` is empty); `fetch_outputs` brings them.
     */
    deferred?: DeferredOutputs | null, outputs: Array<Output>, execution_count: number | null, state: CellState,
    /**
     * The last execution's output passed its byte cap; later output was dropped.
     */
    truncated?: boolean,
    /**
     * A disabled cell does not run, and blocks the cells that depend on it.
     */
    disabled?: boolean,
    /**
     * Why the cell is stale or blocked (absent in other states).
     */
    cause?: StateCause | null,
    /**
     * Who ran it last, when, for how long, on which kernel.
     */
    last_run?: RunRecord | null, };

export type StateCause = { "kind": "edited" }
  | { "kind": "upstream_changed", cell: string, }
  | { "kind": "reparented" }
  | { "kind": "upstream_failed", cell: string, }
  | { "kind": "upstream_not_run", cell: string, }
  | { "kind": "invalid", message: string, }
  | { "kind": "disabled" }
  | { "kind": "upstream_disabled", cell: string, }
  | { "kind": "cancelled" }
  | { "kind": "not_in_kernel" };

export type RunRecord = {
    /**
     * The display name of whoever ran it ("graph" runs name who started the chain).
     */
    by: string,
    /**
     * When it finished, in milliseconds since the Unix epoch.
     */
    at_ms: number, duration_ms: number,
    /**
     * The kernel session that ran it (see `Snapshot::kernel_session`): results from another
     * session are not in the kernel.
     */
    kernel_session: string, };

export type DeferredOutputs = {
    /**
     * How many outputs.
     */
    count: number,
    /**
     * About how many bytes of JSON they take.
     */
    bytes: number, };

export type CellHeader = { id: string, cell_type: CellKind, };

export type Reactivity = "autorun"
  | "lazy";

export type GraphRule = "positional"
  | "strict";

export type GraphCell = { id: string, defs: Array<string>,
    /**
     * Global names it reads that it does not define itself.
     */
    refs: Array<string>,
    /**
     * Cells it depends on, and cells that depend on it (document order).
     */
    parents: Array<string>, children: Array<string>, error?: GraphError | null, warnings?: Array<string>, };

export type Resume = { restored: Array<RestoredNames>, rerun: Array<RerunCell>, lost: Array<LostName>,
    /**
     * Set when the checkpoint could not be used at all (corrupt, or another document's):
     * the cells that had run are run again instead, and this says why.
     */
    fallback?: string | null,
    /**
     * Workspace files written back from the checkpoint.
     */
    files_restored: number,
    /**
     * Workspace files that could not be (past the cap, unreadable), and why.
     */
    files_lost?: Array<LostFile>, };

export type RestoredNames = {
    /**
     * The cell, or none for names made outside cells (a console).
     */
    cell_id?: string | null, names: Array<string>, };

export type RerunCell = { cell_id: string,
    /**
     * The names it rebuilds (empty when it runs only because a cell after it needs it).
     */
    names: Array<string>,
    /**
     * Why they could not be restored ("TypeError: cannot pickle 'generator' object").
     */
    reason: string, };

export type LostName = { name: string, cell_id?: string | null, reason: string, };

export type LostFile = { path: string, reason: string, };

export type GraphError = { "kind": "syntax", message: string, }
  | { "kind": "multiple_definitions", names: Array<string>, cells: Array<string>, }
  | { "kind": "cycle", cells: Array<string>, };

export type Output = { "output_type": "stream", name: StreamName, text: string, }
  | { "output_type": "display_data", data: MimeBundle, metadata: Record<string, unknown>,
    /**
     * Kept outside nbformat's fields so later `update_display` messages can find it.
     */
    display_id?: string | null, }
  | { "output_type": "execute_result",
    /**
     * Null in notebooks saved without one (nbformat allows it).
     */
    execution_count: number | null, data: MimeBundle, metadata: Record<string, unknown>, }
  | { "output_type": "error", ename: string, evalue: string, traceback: Array<string>, }
  | { "output_type": "unknown", output: Record<string, unknown>, };

export type StreamName = "stdout"
  | "stderr";

export type KernelState = "starting"
  | "idle"
  | "busy"
  | "restarting"
  | "dead";

export type KernelDescription = { name: string, display_name: string, language: string, };

export type ExecutionSummary = { id: string,
    /**
     * The cell it runs, when it was queued with `execute_cell`.
     */
    cell_id?: string | null,
    /**
     * The display name of whoever queued it.
     */
    by: string, code: string, running: boolean, };

export type ExecutionStatus = "ok"
  | "error"
  | "aborted"
  | "interrupted"
  | "timed_out"
  | "kernel_died";

export type PendingInput = { execution_id: string, prompt: string, password: boolean, };

export type InputOutcome = "answered"
  | "cancelled";

export type AssistAnswer = { "kind": "complete", matches: Array<Completion>, cursor_start: number, cursor_end: number, }
  | { "kind": "inspect", found: boolean, text: string, }
  | { "kind": "table_page", table: string, offset: number, row_count: number, rows: Array<Array<unknown>>, }
  | { "kind": "refused", reason: AssistRefusal, message: string, };

export type AssistRefusal = "busy"
  | "rate_limited"
  | "no_kernel"
  | "timeout"
  | "gone"
  | "failed"
  | "forbidden";

export type Completion = { text: string,
    /**
     * What it is, as the kernel says (`function`, `instance`, `module`, `keyword`, `column`).
     */
    type?: string | null,
    /**
     * A callable's signature, when the kernel gives one.
     */
    signature?: string | null, };

export type TableOutput = {
    /**
     * The kernel's handle for the table (valid while that kernel runs and keeps it).
     */
    table: string, columns: Array<TableColumn>,
    /**
     * Rows in the whole table.
     */
    row_count: number,
    /**
     * The index's name(s) when it carries information (not a plain 0..n range).
     */
    index?: Array<string>,
    /**
     * The first rows: one array per row, index values first, then one value per column.
     */
    rows: Array<Array<unknown>>, };

export type TableColumn = { name: string,
    /**
     * The column's type as the kernel names it (`int64`, `float64`, `object`, `datetime64[ns]`).
     */
    type: string, };

export type TableSort = { column: string, descending: boolean, };

/** An nbformat MIME bundle: MIME type to data (text, or JSON for JSON types). */
export type MimeBundle = Record<string, unknown>;

/** A frame as received: an event, with its `seq` when it was broadcast. */
export type Frame = ServerFrame;

/** The first frame of every connection. */
export type Welcome = Extract<ServerEvent, { type: "welcome" }>;
