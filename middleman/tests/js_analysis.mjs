// The independent answer for `js_analysis.rs`: what each JS/TS cell defines and references,
// according to the TypeScript compiler's binder and checker (not oxc). Reads
// `{"builtins": [...], "cells": ["source", ...]}` on stdin; writes one
// `{"defs": [...], "refs": [...], "error": bool}` per cell, in order, as a JSON array.
//
// Every cell is its own module (`moduleDetection: force`: strict, top-level await allowed), in
// one program with no library and no module resolution, so that every name a cell does not
// declare is unresolved, as in a fresh kernel. The rules are those of
// `middleman/src/graph/javascript.rs`, in the compiler's terms:
//
// - defs: the names in the module's own symbol table (`locals`: every top-level declaration,
//   values and types, `var`s hoisted from blocks, import aliases), and the unresolved names
//   that are an assignment's target (`getAssignmentTargetKind`: `=`, compound, `++`,
//   destructuring, for-in/of).
// - refs: every identifier in a name position (not a property name, label, declaration name or
//   an import's external name) that resolves to no declaration of the cell. An unresolved
//   assignment target is a ref too: Deno's cells are strict, so the name must be another
//   cell's.
// - names starting with `_` are neither; builtins (the list the Rust test passes) are no refs.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// `require` honours NODE_PATH (scripts/node/package.json pins typescript there); the web
// client's copy is the fallback.
const require = createRequire(import.meta.url);
function loadTypescript() {
  try {
    return require("typescript");
  } catch {
    const here = dirname(fileURLToPath(import.meta.url));
    return require(join(here, "../../web/node_modules/typescript"));
  }
}
const ts = loadTypescript();

const input = JSON.parse(readFileSync(0, "utf8"));
const builtins = new Set(input.builtins);
const cells = input.cells;

const files = new Map(cells.map((source, i) => [`/cells/cell${i}.ts`, source]));
const options = {
  noLib: true,
  noResolve: true,
  types: [],
  target: ts.ScriptTarget.ESNext,
  module: ts.ModuleKind.ESNext,
  moduleDetection: ts.ModuleDetectionKind.Force,
};
const host = {
  getSourceFile: (name, languageVersion) =>
    files.has(name) ? ts.createSourceFile(name, files.get(name), languageVersion, true) : undefined,
  getDefaultLibFileName: () => "/lib.d.ts",
  writeFile: () => {},
  getCurrentDirectory: () => "/cells",
  getCanonicalFileName: (name) => name,
  useCaseSensitiveFileNames: () => true,
  getNewLine: () => "\n",
  fileExists: (name) => files.has(name),
  readFile: (name) => files.get(name),
};
const program = ts.createProgram([...files.keys()], options, host);
// Creating the checker binds every file.
const checker = program.getTypeChecker();

/** Whether identifier `id` stands where a name is looked up (a reference, read or written). */
function isNamePosition(id) {
  const p = id.parent;
  if (ts.isPropertyAccessExpression(p) && p.name === id) return false;
  if (ts.isQualifiedName(p) && p.right === id) return false;
  if ((ts.isLabeledStatement(p) || ts.isBreakOrContinueStatement(p)) && p.label === id) {
    return false;
  }
  if (ts.isMetaProperty(p)) return false;
  if (ts.isImportSpecifier(p) && p.propertyName === id) return false;
  if (ts.isExportSpecifier(p)) {
    // `export { a as b }`: `a` is the local name; `export { a } from "m"` has none.
    if (p.parent.parent.moduleSpecifier) return false;
    return (p.propertyName ?? p.name) === id;
  }
  if (ts.isBindingElement(p) && p.propertyName === id) return false;
  if (ts.isImportAttribute(p) && p.name === id) return false;
  if (ts.isImportTypeNode(p)) return false;
  if (ts.isShorthandPropertyAssignment(p) && p.name === id) return true;
  return !ts.isDeclarationName(id);
}

/** The symbol the name at `id` resolves to, if any. */
function resolve(id) {
  const p = id.parent;
  if (ts.isShorthandPropertyAssignment(p) && p.name === id) {
    return checker.getShorthandAssignmentValueSymbol(p);
  }
  if (ts.isExportSpecifier(p)) return checker.getExportSpecifierLocalTargetSymbol(p);
  return checker.getSymbolAtLocation(id);
}

function analyse(sf) {
  if (program.getSyntacticDiagnostics(sf).length > 0) {
    return { defs: [], refs: [], error: true };
  }
  const defs = new Set();
  const refs = new Set();
  for (const name of sf.locals?.keys() ?? []) {
    const text = ts.unescapeLeadingUnderscores(name);
    if (!text.startsWith("_")) defs.add(text);
  }
  const visit = (node) => {
    if (ts.isIdentifier(node) && isNamePosition(node)) {
      const name = node.text;
      const symbol = resolve(node);
      const declaredHere = (symbol?.declarations ?? []).some((d) => d.getSourceFile() === sf);
      if (!declaredHere && !name.startsWith("_")) {
        if (ts.getAssignmentTargetKind(node) !== 0) defs.add(name);
        if (!builtins.has(name)) refs.add(name);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  const sorted = (s) => [...s].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return { defs: sorted(defs), refs: sorted(refs), error: false };
}

const out = [...files.keys()].map((name) => analyse(program.getSourceFile(name)));
process.stdout.write(JSON.stringify(out));
