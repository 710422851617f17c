// A real Yjs peer for the tests: reads a base64 Yjs update (the server's document) on stdin,
// applies it, appends `suffix` to the source of cell `cellId`, inserts a new markdown cell at
// the end the way a Yjs web client would, and prints the base64 update of its own changes.
// Usage: NODE_PATH=... node yjs-peer.cjs <cellId> <suffix> <newCellId>
"use strict";
const Y = require("yjs");

const [cellId, suffix, newCellId] = process.argv.slice(2);
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const doc = new Y.Doc();
  Y.applyUpdate(doc, Buffer.from(input.trim(), "base64"));
  const before = Y.encodeStateVector(doc);
  const cells = doc.getArray("cells");
  doc.transact(() => {
    for (const cell of cells) {
      if (cell.get("id") === cellId) {
        const source = cell.get("source");
        source.insert(source.length, suffix);
      }
    }
    const fresh = new Y.Map();
    fresh.set("id", newCellId);
    fresh.set("cell_type", "markdown");
    fresh.set("source", new Y.Text("from yjs"));
    cells.push([fresh]);
  });
  process.stdout.write(Buffer.from(Y.encodeStateAsUpdate(doc, before)).toString("base64"));
});
