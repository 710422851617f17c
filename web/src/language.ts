// The language of a document's code cells, as its kernel describes it (the welcome's `kernel`):
// CodeMirror's mode, the name shown in placeholders, the indentation unit, and whether SQL cells
// exist (they run through the Python kernel's DuckDB helper, so only Python documents have them).
// Python until the description arrives, as every document was before Deno's kernel; a language
// this client has no mode for is plain text rather than Python's colours.
//
// TypeScript and JavaScript take lang-javascript's parsers without its `javascript()` bundle of
// snippets and local completion: completion comes from the kernel (completion.ts), which
// overrides language-data sources anyway, so they would only weigh on the bundle.
import { javascriptLanguage, typescriptLanguage } from "@codemirror/lang-javascript";
import { python } from "@codemirror/lang-python";
import { indentUnit, LanguageSupport } from "@codemirror/language";
import { type Extension, Prec } from "@codemirror/state";
import type { KernelDescription } from "./protocol";

export interface CodeLanguage {
  readonly name: "python" | "typescript" | "javascript" | "text";
  /** As people name it: "Python code", "TypeScript code". */
  readonly label: string;
  /** SQL cells can be added (Python kernels only). */
  readonly sqlCells: boolean;
}

const PYTHON: CodeLanguage = { name: "python", label: "Python", sqlCells: true };

/** The code cells' language for a kernel description (none yet: Python). */
export function codeLanguage(kernel: KernelDescription | null | undefined): CodeLanguage {
  if (!kernel) return PYTHON;
  const language = kernel.language.trim().toLowerCase();
  switch (language) {
    case "python":
    case "python3":
      return PYTHON;
    case "typescript":
    case "ts":
      return { name: "typescript", label: "TypeScript", sqlCells: false };
    case "javascript":
    case "js":
      return { name: "javascript", label: "JavaScript", sqlCells: false };
    default:
      return { name: "text", label: kernel.language.trim() || kernel.display_name || "Kernel", sqlCells: false };
  }
}

/**
 * The mode of a code cell, and its indentation unit where it is not the editor's four spaces
 * (PEP 8's): two for TypeScript and JavaScript, as `deno fmt` writes them. Comment toggling
 * (Mod-/: `#` or `//`) and the word characters completion asks about (`$` in JavaScript's
 * names) follow the mode's language data.
 */
export function codeExtension(lang: CodeLanguage): Extension {
  switch (lang.name) {
    case "python":
      return python();
    case "typescript":
      return [new LanguageSupport(typescriptLanguage), Prec.high(indentUnit.of("  "))];
    case "javascript":
      return [new LanguageSupport(javascriptLanguage), Prec.high(indentUnit.of("  "))];
    case "text":
      return [];
  }
}
