// A stock y-websocket WebsocketProvider against Middleman's /yjs/{document} endpoint: syncs,
// appends TEXT to the source of the cell with id CELL, waits until the server has it (a second
// provider sees the edit), and prints the cell's source as it synced. Usage:
//   node y-websocket-peer.mjs ws://127.0.0.1:PORT/yjs DOCUMENT TOKEN CELL TEXT [TRIES]
// (TRIES fresh providers, 100 ms apart, look for the edit; 100 unless given.)
import { createRequire } from "node:module";
import path from "node:path";

// The packages live in the test tool cache (NODE_PATH), which ESM imports do not search.
const require = createRequire(path.join(process.env.NODE_PATH ?? "", "noop.js"));
const Y = require("yjs");
const { WebsocketProvider } = require("y-websocket");
const WebSocket = require("ws");

const [server, document, token, cellId, text, tries = "100"] = process.argv.slice(2);

function connect() {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(server, document, doc, {
    params: { token },
    WebSocketPolyfill: WebSocket,
    disableBc: true,
  });
  const synced = new Promise((resolve) => provider.once("sync", (ok) => ok && resolve()));
  return { doc, provider, synced };
}

function source(doc, id) {
  for (const cell of doc.getArray("cells").toArray()) {
    if (cell.get("id") === id) return cell.get("source").toString();
  }
  return null;
}

const timer = setTimeout(() => {
  console.error("y-websocket-peer: timed out");
  process.exit(2);
}, 30_000);

const a = connect();
await a.synced;
const before = source(a.doc, cellId);
if (before === null) {
  console.error(`y-websocket-peer: no cell ${cellId}`);
  process.exit(1);
}
a.doc.getArray("cells").toArray().find((c) => c.get("id") === cellId).get("source").insert(before.length, text);
// A second stock provider, connected afresh, sees the edit once the server has it.
let seen = null;
for (let i = 0; i < Number(tries) && seen !== before + text; i++) {
  const b = connect();
  await b.synced;
  seen = source(b.doc, cellId);
  b.provider.destroy();
  if (seen !== before + text) await new Promise((r) => setTimeout(r, 100));
}
a.provider.destroy();
clearTimeout(timer);
process.stdout.write(JSON.stringify({ before, after: seen }));
process.exit(seen === before + text ? 0 : 1);
