// One WebSocket to Middleman carrying both the JSON document protocol (text frames) and the Yjs
// sync and awareness protocols (binary frames, framed as y-websocket frames them). Reconnects by
// itself with backoff, resumes with `session` and `since` so the server replays what was
// missed, and keeps one Y.Doc across reconnects so offline edits merge when it returns.
import * as decoding from "lib0/decoding";
import * as encoding from "lib0/encoding";
import * as awarenessProtocol from "y-protocols/awareness";
import * as syncProtocol from "y-protocols/sync";
import * as Y from "yjs";
import type { ClientMessage, Frame, Welcome } from "./protocol";
import { podUrl } from "./base";

export type LinkState = "connecting" | "connected" | "reconnecting" | "refused";

const MSG_SYNC = 0;
const MSG_AWARENESS = 1;
const MSG_QUERY_AWARENESS = 3;

export interface Handlers {
  /** A JSON frame. `missed` is true for events replayed after a resume. */
  frame(frame: Frame, missed: boolean): void;
  link(state: LinkState, detail: string): void;
  /** The Y.Doc caught up with the server (after every (re)connection). */
  synced(): void;
}

/** The gateway closes with this when the document's pod ended (docs/gateway.md). */
const CLOSE_POD_ENDED = 4410;
/** The gateway closes with this when it drains; another replica answers. */
const CLOSE_GATEWAY_RESTARTING = 1012;

export class Connection {
  readonly doc = new Y.Doc();
  readonly awareness = new awarenessProtocol.Awareness(this.doc);
  session: string | null = null;
  lastSeq = 0;
  welcome: Welcome | null = null;
  /** Viewers: Middleman refuses their updates, so none are sent. */
  readOnly = false;
  private ws: WebSocket | null = null;
  private failures = 0;
  private everOpened = false;
  private retry: number | undefined;
  private heartbeat: number | undefined;
  private lastHeard = 0;
  /** Replayed events run up to this seq after a resumed welcome. */
  private replayUntil = 0;
  private stopped = false;

  constructor(
    private readonly token: string,
    private readonly handlers: Handlers,
  ) {
    this.doc.on("update", (update: Uint8Array, origin: unknown) => {
      if (origin === this || this.readOnly) return;
      const enc = encoding.createEncoder();
      encoding.writeVarUint(enc, MSG_SYNC);
      syncProtocol.writeUpdate(enc, update);
      this.sendBinary(encoding.toUint8Array(enc));
    });
    this.awareness.on("update", ({ added, updated, removed }: { added: number[]; updated: number[]; removed: number[] }) => {
      // Only this client's own state: Middleman accepts few client ids per connection.
      const me = this.doc.clientID;
      if (![...added, ...updated, ...removed].includes(me)) return;
      this.sendAwareness();
    });
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("beforeunload", () => {
      awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], "unload");
    });
  }

  get open(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retry);
    this.ws?.close(1000, "bye");
  }

  send(message: ClientMessage): boolean {
    if (!this.open || !this.ws) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Closes the socket and reconnects at once (after a network change, or by hand). */
  reconnectNow(): void {
    if (this.stopped) return;
    window.clearTimeout(this.retry);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      this.ws.close(4100, "reconnecting");
    } else {
      this.connect();
    }
  }

  private url(): string {
    const q = new URLSearchParams({ token: this.token });
    if (this.session !== null) {
      q.set("session", this.session);
      q.set("since", String(this.lastSeq));
    }
    const url = podUrl("ws");
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = q.toString();
    return url.toString();
  }

  private connect(): void {
    if (this.stopped) return;
    this.handlers.link(this.everOpened ? "reconnecting" : "connecting", "");
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.scheduleRetry(String(e));
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.everOpened = true;
      this.failures = 0;
      this.lastHeard = Date.now();
      // Ask for what we miss, and say who we are.
      const enc = encoding.createEncoder();
      encoding.writeVarUint(enc, MSG_SYNC);
      syncProtocol.writeSyncStep1(enc, this.doc);
      ws.send(encoding.toUint8Array(enc));
      if (this.awareness.getLocalState() !== null) this.sendAwareness();
      window.clearInterval(this.heartbeat);
      this.heartbeat = window.setInterval(() => this.beat(), 10_000);
    };
    ws.onmessage = (e: MessageEvent) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      if (typeof e.data === "string") this.onText(e.data);
      else if (e.data instanceof ArrayBuffer) this.onBinary(new Uint8Array(e.data));
    };
    ws.onclose = (e: CloseEvent) => {
      if (ws !== this.ws) return;
      window.clearInterval(this.heartbeat);
      this.ws = null;
      // Remote cursors vanish while we cannot see them move.
      const others = Array.from(this.awareness.getStates().keys()).filter((c) => c !== this.doc.clientID);
      awarenessProtocol.removeAwarenessStates(this.awareness, others, "disconnected");
      if (this.stopped) return;
      if (e.code === CLOSE_POD_ENDED) {
        // The document's kernel is gone for good (released, idle, preempted): reconnecting
        // cannot bring it back; opening the document again gets a fresh one.
        this.handlers.link("refused", `${e.reason || "the document's kernel ended"}; open the document again`);
        return;
      }
      if (e.code === CLOSE_GATEWAY_RESTARTING) {
        // Another gateway replica takes the connection at once; spread the reconnections.
        window.clearTimeout(this.retry);
        this.handlers.link("reconnecting", "gateway restarting; reconnecting");
        this.retry = window.setTimeout(() => this.connect(), Math.random() * 500);
        return;
      }
      if (!opened) this.failures += 1;
      const why = e.reason || (opened ? `connection closed (${e.code})` : "cannot reach Middleman");
      this.scheduleRetry(why);
    };
  }

  /** Pings; a connection silent for 25 s is treated as dead (network drops send no close). */
  private beat(): void {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastHeard > 25_000) {
      this.ws.close(4101, "no answer");
      return;
    }
    this.ws.send(JSON.stringify({ type: "ping", nonce: Date.now() }));
  }

  private async scheduleRetry(why: string): Promise<void> {
    if (this.failures >= 2 && this.failures % 2 === 0) {
      // The browser hides why an upgrade failed; ask over HTTP with the same token.
      const refusal = await this.probe();
      if (refusal) {
        this.handlers.link("refused", refusal);
        if (/token_(expired|invalid|missing)|token_wrong|wrong_pod|forbidden|origin_not_allowed|pod_ended|unknown_pod/.test(refusal)) return;
      }
    }
    const delay = Math.min(5000, 250 * 2 ** Math.min(this.failures, 5)) * (0.75 + Math.random() * 0.5);
    this.handlers.link("reconnecting", `${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
    window.clearTimeout(this.retry);
    this.retry = window.setTimeout(() => this.connect(), delay);
  }

  private async probe(): Promise<string | null> {
    try {
      const r = await fetch(podUrl("api/notebook"), { headers: { Authorization: `Bearer ${this.token}` }, cache: "no-store" });
      if (r.ok) return null;
      const body = (await r.json().catch(() => ({}))) as { error?: string; message?: string };
      return `${body.error ?? r.status}: ${body.message ?? r.statusText}`;
    } catch {
      return null;
    }
  }

  private onText(text: string): void {
    let frame: Frame;
    try {
      frame = JSON.parse(text) as Frame;
    } catch {
      return;
    }
    if (frame.type === "welcome") {
      const resumed = frame.resumed_from !== undefined && frame.session === this.session;
      this.session = frame.session;
      this.welcome = frame;
      this.lastSeq = resumed ? (frame.resumed_from ?? 0) : frame.last_seq;
      this.replayUntil = resumed ? frame.last_seq : 0;
      this.handlers.link("connected", "");
      this.handlers.frame(frame, false);
      return;
    }
    if (typeof frame.seq === "number") {
      if (frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
    }
    const missed = typeof frame.seq === "number" && frame.seq <= this.replayUntil;
    this.handlers.frame(frame, missed);
  }

  private onBinary(buf: Uint8Array): void {
    const decoder = decoding.createDecoder(buf);
    const enc = encoding.createEncoder();
    try {
      const type = decoding.readVarUint(decoder);
      if (type === MSG_SYNC && decoding.peekVarUint(decoder) === syncProtocol.messageYjsSyncStep1) {
        // Answer with what the server misses, unless that is nothing (or we may not edit).
        decoding.readVarUint(decoder);
        const update = Y.encodeStateAsUpdate(this.doc, decoding.readVarUint8Array(decoder));
        if (!this.readOnly && update.length > 2) {
          const out = encoding.createEncoder();
          encoding.writeVarUint(out, MSG_SYNC);
          encoding.writeVarUint(out, syncProtocol.messageYjsSyncStep2);
          encoding.writeVarUint8Array(out, update);
          this.sendBinary(encoding.toUint8Array(out));
        }
      } else if (type === MSG_SYNC) {
        encoding.writeVarUint(enc, MSG_SYNC);
        const step = syncProtocol.readSyncMessage(decoder, enc, this.doc, this);
        if (encoding.length(enc) > 1) this.sendBinary(encoding.toUint8Array(enc));
        if (step === syncProtocol.messageYjsSyncStep2) this.handlers.synced();
      } else if (type === MSG_AWARENESS) {
        awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this);
      } else if (type === MSG_QUERY_AWARENESS) {
        this.sendAwareness();
      }
    } catch (e) {
      console.warn("bad Yjs frame", e);
    }
  }

  private sendAwareness(): void {
    const enc = encoding.createEncoder();
    encoding.writeVarUint(enc, MSG_AWARENESS);
    encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]));
    this.sendBinary(encoding.toUint8Array(enc));
  }

  private sendBinary(bytes: Uint8Array): void {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }
}
