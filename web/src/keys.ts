// Jupyter's command-mode keys that copy, cut, paste, merge and bring back cells (c, x, v,
// Shift-M, z). The clipboard and the deletions undone by z are this page's own: they hold each
// cell's type and source, and go back into the document as ordinary insert_cell messages.
import type { CellKind, ClientMessage } from "./protocol";

export interface CellCopy {
  kind: CellKind;
  source: string;
}

interface Deleted extends CellCopy {
  index: number;
}

/** What the keys need from the notebook. */
export interface CellOps {
  order(): readonly string[];
  copy(id: string): CellCopy | undefined;
  send(message: ClientMessage): void;
  /** Inserts and selects a cell (command mode). */
  insert(index: number, cell: CellCopy): void;
  /** Deletes through the notebook (which notes the deletion here). */
  remove(id: string): void;
  toast(text: string): void;
}

/** Deletions kept for z. */
const UNDO_DEPTH = 20;

export class CellKeys {
  private clipboard: CellCopy[] = [];
  private readonly deleted: Deleted[] = [];

  constructor(private readonly ops: CellOps) {}

  /** Handles a command-mode key on the selected cell; false when the key is not one of these. */
  handle(key: string, id: string): boolean {
    const order = this.ops.order();
    const i = order.indexOf(id);
    if (i < 0) return false;
    switch (key) {
      case "c":
      case "x": {
        const copy = this.ops.copy(id);
        if (!copy) return true;
        this.clipboard = [copy];
        if (key === "x") this.ops.remove(id);
        return true;
      }
      case "v":
        if (this.clipboard.length === 0) this.ops.toast("Nothing to paste: copy a cell with C or cut it with X first.");
        this.clipboard.forEach((c, k) => this.ops.insert(i + 1 + k, c));
        return true;
      case "z": {
        const d = this.deleted.pop();
        if (!d) this.ops.toast("No cell deletion to undo.");
        else this.ops.insert(Math.min(d.index, order.length), d);
        return true;
      }
      case "M": {
        const below = order[i + 1];
        const a = this.ops.copy(id);
        const b = below ? this.ops.copy(below) : undefined;
        if (!below || !a || !b) {
          this.ops.toast("Nothing below to merge with.");
          return true;
        }
        this.ops.send({ type: "set_source", cell_id: id, source: mergeSources(a.source, b.source) });
        this.ops.send({ type: "delete_cell", cell_id: below });
        return true;
      }
      default:
        return false;
    }
  }

  /** Notes a cell this page deleted, for z. */
  noteDeleted(index: number, cell: CellCopy): void {
    this.deleted.push({ index, ...cell });
    if (this.deleted.length > UNDO_DEPTH) this.deleted.shift();
  }
}

/** JupyterLab's merge: the two sources joined by a newline. */
export function mergeSources(above: string, below: string): string {
  return `${above}\n${below}`;
}
