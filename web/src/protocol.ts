// The Middleman document protocol as this client uses it (docs/protocol.md,
// middleman/src/protocol.rs). Only JSON text frames; Yjs travels in binary frames.

export type KernelState = "starting" | "idle" | "busy" | "restarting" | "dead";
export type CellKind = "code" | "markdown" | "raw";
export type CellState = "idle" | "queued" | "running" | "error" | "stale" | "blocked";
export type Reactivity = "autorun" | "lazy";

export type MimeBundle = Record<string, unknown>;

export type Output =
  | { output_type: "stream"; name: "stdout" | "stderr"; text: string }
  | { output_type: "display_data"; data: MimeBundle; metadata?: Record<string, unknown>; display_id?: string }
  | { output_type: "execute_result"; execution_count: number; data: MimeBundle; metadata?: Record<string, unknown> }
  | { output_type: "error"; ename: string; evalue: string; traceback: string[] };

export interface ExecutionSummary {
  id: string;
  cell_id?: string;
  by: string;
  code: string;
  running: boolean;
}

export interface CellView {
  id: string;
  kind: CellKind;
  source: string;
  outputs: Output[];
  execution_count: number | null;
  state: CellState;
  truncated?: boolean;
  disabled?: boolean;
}

export interface PresenceInfo {
  client: number;
  user: string;
  name: string;
  role: string;
  color: string;
  cell_id?: string;
  cursor?: unknown;
}

export type GraphError =
  | { kind: "syntax"; message: string }
  | { kind: "multiple_definitions"; names: string[]; cells: string[] }
  | { kind: "cycle"; cells: string[] };

export interface GraphCell {
  id: string;
  defs: string[];
  refs: string[];
  parents: string[];
  children: string[];
  error?: GraphError;
  warnings?: string[];
}

export interface PendingInput {
  execution_id: string;
  prompt: string;
  password: boolean;
}

export interface Snapshot {
  kernel_state: KernelState;
  executions: ExecutionSummary[];
  cells: CellView[];
  presence: PresenceInfo[];
  input?: PendingInput;
  graph?: GraphCell[];
  reactivity?: Reactivity;
}

export interface Welcome {
  type: "welcome";
  protocol: number;
  session: string;
  client: number;
  document: string;
  user: string;
  name: string;
  role: string;
  kernel: { name: string; display_name: string; language: string };
  limits: { max_output_bytes: number; execution_timeout_ms: number; max_client_message_bytes: number };
  last_seq: number;
  resumed_from?: number;
  snapshot?: Snapshot;
}

export type ServerEvent =
  | Welcome
  | { type: "cells"; cells: { id: string; cell_type: CellKind }[] }
  | { type: "cell_created"; cell_id: string; request_id?: string }
  | { type: "cell_state"; cell_id: string; state: CellState; execution_count?: number }
  | { type: "outputs_cleared"; cell_id: string }
  | { type: "graph"; cells: GraphCell[] }
  | { type: "reactivity"; mode: Reactivity }
  | { type: "cell_disabled"; cell_id: string; disabled: boolean }
  | ({ type: "presence" } & PresenceInfo)
  | { type: "presence_left"; client: number }
  | { type: "kernel_status"; state: KernelState; reason?: string }
  | { type: "queue"; executions: ExecutionSummary[] }
  | { type: "execution_queued"; execution: ExecutionSummary; request_id?: string }
  | { type: "execution_started"; execution_id: string }
  | { type: "output"; execution_id: string; output: Output }
  | { type: "update_display"; execution_id: string; display_id: string; data: MimeBundle; metadata?: Record<string, unknown> }
  | { type: "clear_output"; execution_id: string; wait: boolean }
  | { type: "output_truncated"; execution_id: string; limit_bytes: number }
  | ({ type: "input_request" } & PendingInput)
  | { type: "input_resolved"; execution_id: string; outcome: "answered" | "cancelled"; by?: string }
  | {
      type: "execution_finished";
      execution_id: string;
      status: "ok" | "error" | "aborted" | "interrupted" | "timed_out" | "kernel_died";
      execution_count?: number;
      duration_ms: number;
      reason?: string;
    }
  | { type: "error"; code: string; message: string }
  | { type: "pong"; nonce?: number }
  | { type: "shutdown"; reason: string };

export type Frame = ServerEvent & { seq?: number };

export type ClientMessage =
  | { type: "execute_cell"; cell_id: string; request_id?: string; stop_on_error?: boolean }
  | { type: "insert_cell"; index: number; cell_type: CellKind; source?: string; request_id?: string }
  | { type: "delete_cell"; cell_id: string }
  | { type: "move_cell"; cell_id: string; index: number }
  | { type: "set_cell_type"; cell_id: string; cell_type: CellKind }
  | { type: "clear_outputs"; cell_id?: string }
  | { type: "input_reply"; execution_id: string; value: string }
  | { type: "interrupt" }
  | { type: "restart" }
  | { type: "set_cell_disabled"; cell_id: string; disabled: boolean }
  | { type: "set_reactivity"; mode: Reactivity }
  | { type: "run_stale" }
  | { type: "presence"; cell_id?: string }
  | { type: "ping"; nonce?: number };
