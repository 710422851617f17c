// Side questions to the kernel (completion, inspection, table pages): each request carries an id
// and is answered by one `assist` event to this connection. Answers come back as promises; a
// request the connection could not send, or that gets no answer (the connection dropped), ends
// as a refusal instead of hanging.
import type { AssistAnswer, ClientMessage } from "./protocol";

type AssistRequest =
  | Omit<Extract<ClientMessage, { type: "complete" }>, "request_id">
  | Omit<Extract<ClientMessage, { type: "inspect" }>, "request_id">
  | Omit<Extract<ClientMessage, { type: "table_page" }>, "request_id">;

/** How long an answer may take before the request is given up (Middleman's own deadline is shorter). */
const ANSWER_DEADLINE_MS = 15_000;

export class Assist {
  private counter = 0;
  private readonly pending = new Map<string, { resolve: (a: AssistAnswer) => void; timer: number }>();

  constructor(private readonly sendMessage: (m: ClientMessage) => boolean) {}

  /** Asks; resolves with the answer, or with a refusal when it cannot be asked or answered. */
  ask(request: AssistRequest): Promise<AssistAnswer> {
    const request_id = `assist-${++this.counter}`;
    return new Promise((resolve) => {
      if (!this.sendMessage({ ...request, request_id } as ClientMessage)) {
        resolve({ kind: "refused", reason: "no_kernel", message: "not connected" });
        return;
      }
      const timer = window.setTimeout(() => this.settle(request_id, { kind: "refused", reason: "timeout", message: "no answer" }), ANSWER_DEADLINE_MS);
      this.pending.set(request_id, { resolve, timer });
    });
  }

  /** Delivers an `assist` event; answers to requests no longer waited for are dropped. */
  answer(request_id: string, answer: AssistAnswer): void {
    this.settle(request_id, answer);
  }

  /** The connection dropped: nothing pending will be answered. */
  dropAll(): void {
    for (const id of [...this.pending.keys()]) this.settle(id, { kind: "refused", reason: "no_kernel", message: "connection lost" });
  }

  private settle(request_id: string, answer: AssistAnswer): void {
    const p = this.pending.get(request_id);
    if (!p) return;
    this.pending.delete(request_id);
    window.clearTimeout(p.timer);
    p.resolve(answer);
  }
}
