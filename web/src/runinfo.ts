// What a cell's badge and its "last run" line say: why a cell is stale or blocked (the server's
// cause, with cells named by position), and who ran it, when, for how long, on which kernel.
import type { CellState, RunRecord, StateCause } from "./protocol";

/** The badge of a cell in `state` for `cause`; `name` names another cell by position. */
export function badgeText(state: CellState, cause: StateCause | null | undefined, name: (id: string) => string): string {
  switch (state) {
    case "idle":
      return "";
    case "queued":
      return "queued";
    case "running":
      return "running";
    case "error":
      return "error";
    case "stale":
    case "blocked":
      return cause ? causeText(state, cause, name) : state;
  }
}

function causeText(state: CellState, cause: StateCause, name: (id: string) => string): string {
  switch (cause.kind) {
    case "edited":
      return "stale: edited since it ran";
    case "upstream_changed":
      return `stale: ${name(cause.cell)} changed`;
    case "reparented":
      return "stale: reads its names from other cells now";
    case "upstream_failed":
      return `not run: ${name(cause.cell)} failed`;
    case "upstream_not_run":
      return `not run: ${name(cause.cell)} did not run`;
    case "invalid":
      return `not run: ${cause.message}`;
    case "disabled":
      return "disabled";
    case "upstream_disabled":
      return `not run: ${name(cause.cell)} is disabled`;
    case "cancelled":
      return state === "blocked" ? "not run: cancelled" : "stale: its run was cancelled";
    case "not_in_kernel":
      return "not in kernel: run it again";
  }
}

/** "Ada · 14:02 · 1.2 s" and a longer title; empty when the cell never ran. */
export function runText(run: RunRecord | null | undefined, session: string): { text: string; title: string } {
  if (!run) return { text: "", title: "" };
  const at = new Date(run.at_ms);
  const sameDay = at.toDateString() === new Date().toDateString();
  const when = sameDay ? at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : at.toLocaleDateString([], { month: "short", day: "numeric" });
  const other = session !== "" && run.kernel_session !== session;
  const text = `${run.by} · ${when} · ${duration(run.duration_ms)}${other ? " · earlier kernel" : ""}`;
  const title = `Last run by ${run.by} at ${at.toLocaleString()}, took ${duration(run.duration_ms)}${other ? "; in an earlier kernel session, so its results are not in the kernel now" : ""}`;
  return { text, title };
}

export function duration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const m = Math.floor(ms / 60_000);
  return `${m} min ${Math.round((ms % 60_000) / 1000)} s`;
}
