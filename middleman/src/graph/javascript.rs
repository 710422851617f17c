//! What a JavaScript or TypeScript cell defines and references, for Deno's Jupyter kernel, from
//! oxc's parser and its semantic analysis (scopes, symbols and resolved references). Deno runs a
//! cell as a strict-mode TypeScript module whose top-level declarations stay bound for the
//! cells after it (top-level `await` and `import` allowed); the rules are Python's, in JS terms
//! (`tests/js_analysis.rs` checks them against the TypeScript compiler's binder on a corpus):
//!
//! - **defs**: names declared in the cell's top-level scope: `var`/`let`/`const` (every name
//!   of a destructuring pattern), `function`, `class`, `enum`, `import` bindings, and the types
//!   `type`, `interface` and `namespace` declare (a later cell may use a type too). A `var`
//!   inside a top-level block is hoisted there; a `let` inside one is not. An assignment to a
//!   name the cell does not declare anywhere in scope (`x = 1`, `x += 1`, `x++`, `[x] = a`,
//!   `for (x of xs)`), at the top level or in a nested function, also defines it.
//! - **refs**: names the cell uses (values and types, anywhere, nested functions included)
//!   that no declaration of the cell resolves. A name the cell declares is not a reference even
//!   if read before its declaration: JS scoping is lexical, so that read sees the cell's own
//!   binding (hoisted, or a TDZ error), never another cell's. An assignment to an undeclared
//!   name is also a reference: Deno's cells are strict-mode code, where assigning a name no
//!   cell declared throws, so `x = 1` needs the `let x` of another cell as `x += 1` does.
//!   Property names (`a.b`, `a?.b`, `{b: 1}`, class members) and labels are not references; a
//!   shorthand property `{b}` is.
//! - Names starting with `_` are local to their cell; Deno's globals and TypeScript's library
//!   types ([`BUILTINS`]) are never references.
//! - A cell that does not parse has a syntax error (`line:column: message`) and no defs or
//!   refs. Deno also accepts JSX, so a cell that is not TypeScript is tried once more as TSX.
//!   Only the parser's errors count: early errors it does not look for (a redeclared `let`, a
//!   `with` statement in strict code) are left to Deno, since a graph error would keep the
//!   cell from running at all.
//! - `export * from "m"` imports nothing into the cell's scope: `star_import` stays false.

use oxc_allocator::Allocator;
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;

use super::CellAnalysis;

/// Analyses one JavaScript or TypeScript cell (see the module docs for the rules).
pub fn analyse(source: &str) -> CellAnalysis {
    let allocator = Allocator::default();
    let typescript = SourceType::ts().with_module(true);
    let mut parsed = Parser::new(&allocator, source, typescript).parse();
    if parsed.panicked || !parsed.diagnostics.is_empty() {
        let tsx = Parser::new(&allocator, source, typescript.with_jsx(true)).parse();
        if tsx.panicked || !tsx.diagnostics.is_empty() {
            let message = parsed.diagnostics.first().map_or_else(
                || "syntax error".to_owned(),
                |d| {
                    let at = d.labels.first().map_or(0, |l| l.offset());
                    format!("syntax error at {}: {}", line_column(source, at), d.message)
                },
            );
            return CellAnalysis {
                error: Some(message),
                ..CellAnalysis::default()
            };
        }
        parsed = tsx;
    }
    // The semantic's own syntax checks stay off (module docs).
    let semantic = SemanticBuilder::new().build(&parsed.program).semantic;
    let scoping = semantic.scoping();
    let mut out = CellAnalysis::default();
    for name in scoping.get_bindings(scoping.root_scope_id()).keys() {
        let name = name.as_str();
        if !name.starts_with('_') {
            out.defs.insert(name.to_owned());
        }
    }
    // What no scope of the cell declares: globals, and names other cells bind.
    for (name, references) in scoping.root_unresolved_references() {
        let name = name.as_str();
        if name.starts_with('_') {
            continue;
        }
        if references
            .iter()
            .any(|&r| scoping.get_reference(r).flags().is_write())
        {
            out.defs.insert(name.to_owned());
        }
        if !is_builtin(name) {
            out.refs.insert(name.to_owned());
        }
    }
    out
}

/// Whether Deno's kernel may show a value (an `execute_result`) for `source`: the completion
/// value of its last statement that has one. Declarations, imports and exports have none, and
/// a `console` call's is `undefined`, which Deno does not show; so a cell that ends with
/// `const x = ...` or `console.log(...)` shows nothing unless an earlier expression statement
/// does (`1; const x = 2` shows 1). `true` when in doubt: any other statement, or a cell that does not
/// parse as TypeScript.
pub fn may_show_a_value(source: &str) -> bool {
    use oxc_ast::ast::{Expression, Statement};
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, source, SourceType::ts().with_module(true)).parse();
    if parsed.panicked || !parsed.diagnostics.is_empty() {
        return true;
    }
    for statement in parsed.program.body.iter().rev() {
        if statement.is_declaration() || statement.is_module_declaration() {
            continue;
        }
        return match statement {
            Statement::ExpressionStatement(e) => !matches!(
                e.expression.get_inner_expression(),
                Expression::CallExpression(call)
                    if call.callee.as_member_expression().is_some_and(|m| m.object().is_specific_id("console"))
            ),
            _ => true,
        };
    }
    false
}

/// The 1-based line and column (in characters) of byte `offset`.
fn line_column(source: &str, offset: u32) -> String {
    let offset = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{column}")
}

/// Whether `name` is one of Deno's globals or TypeScript's library types.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.binary_search(&name).is_ok()
}

/// Names a cell reads from Deno itself, never from another cell: the members of Deno 2's
/// `globalThis` (`Object.getOwnPropertyNames(globalThis)`, and `addEventListener` and the like
/// from its prototype), `window` (Deno 1), `arguments`, and TypeScript's library types. Left
/// out, because notebooks define them as variables far more often than they use the global:
/// `close`, `closed`, `location`, `name`, `prompt`. Sorted (binary search).
pub const BUILTINS: &[&str] = &[
    "AbortController",
    "AbortSignal",
    "AddEventListenerOptions",
    "AggregateError",
    "Array",
    "ArrayBuffer",
    "ArrayBufferLike",
    "ArrayBufferView",
    "ArrayLike",
    "AsyncDisposable",
    "AsyncDisposableStack",
    "AsyncGenerator",
    "AsyncIterable",
    "AsyncIterableIterator",
    "AsyncIterator",
    "Atomics",
    "Awaited",
    "BigInt",
    "BigInt64Array",
    "BigUint64Array",
    "Blob",
    "BodyInit",
    "Boolean",
    "BroadcastChannel",
    "Buffer",
    "BufferSource",
    "ByteLengthQueuingStrategy",
    "Cache",
    "CacheStorage",
    "CallableFunction",
    "Capitalize",
    "ClassAccessorDecoratorContext",
    "ClassDecorator",
    "ClassDecoratorContext",
    "ClassFieldDecoratorContext",
    "ClassGetterDecoratorContext",
    "ClassMethodDecoratorContext",
    "ClassSetterDecoratorContext",
    "CloseEvent",
    "CompressionStream",
    "ConstructorParameters",
    "CountQueuingStrategy",
    "Crypto",
    "CryptoKey",
    "CustomEvent",
    "DOMException",
    "DOMMatrix",
    "DOMMatrixReadOnly",
    "DOMPoint",
    "DOMPointReadOnly",
    "DOMQuad",
    "DOMRect",
    "DOMRectReadOnly",
    "DataView",
    "Date",
    "DecompressionStream",
    "Deno",
    "Disposable",
    "DisposableStack",
    "Error",
    "ErrorEvent",
    "ErrorOptions",
    "EvalError",
    "Event",
    "EventListener",
    "EventListenerOrEventListenerObject",
    "EventSource",
    "EventTarget",
    "Exclude",
    "Extract",
    "File",
    "FileReader",
    "FinalizationRegistry",
    "Float16Array",
    "Float32Array",
    "Float64Array",
    "FormData",
    "Function",
    "GPU",
    "Generator",
    "GeneratorFunction",
    "Headers",
    "HeadersInit",
    "IArguments",
    "ImageBitmap",
    "ImageData",
    "Infinity",
    "InstanceType",
    "Int16Array",
    "Int32Array",
    "Int8Array",
    "Intl",
    "Iterable",
    "IterableIterator",
    "Iterator",
    "JSON",
    "Location",
    "Lock",
    "LockManager",
    "Lowercase",
    "Map",
    "Math",
    "MessageChannel",
    "MessageEvent",
    "MessagePort",
    "MethodDecorator",
    "NaN",
    "Navigator",
    "NewableFunction",
    "NoInfer",
    "NonNullable",
    "Number",
    "Object",
    "OffscreenCanvas",
    "Omit",
    "OmitThisParameter",
    "ParameterDecorator",
    "Parameters",
    "Partial",
    "Performance",
    "PerformanceEntry",
    "PerformanceMark",
    "PerformanceMeasure",
    "PerformanceObserver",
    "Pick",
    "ProgressEvent",
    "Promise",
    "PromiseLike",
    "PromiseRejectionEvent",
    "PropertyDecorator",
    "PropertyDescriptor",
    "PropertyKey",
    "Proxy",
    "RangeError",
    "ReadableStream",
    "ReadableStreamDefaultReader",
    "Readonly",
    "ReadonlyArray",
    "ReadonlyMap",
    "ReadonlySet",
    "Record",
    "ReferenceError",
    "Reflect",
    "RegExp",
    "RegExpExecArray",
    "RegExpMatchArray",
    "Request",
    "RequestInfo",
    "RequestInit",
    "Required",
    "Response",
    "ResponseInit",
    "ReturnType",
    "Set",
    "SharedArrayBuffer",
    "Storage",
    "String",
    "SubtleCrypto",
    "SuppressedError",
    "Symbol",
    "SyntaxError",
    "TemplateStringsArray",
    "Temporal",
    "TextDecoder",
    "TextDecoderStream",
    "TextEncoder",
    "TextEncoderStream",
    "ThisParameterType",
    "ThisType",
    "Transferable",
    "TransformStream",
    "TypeError",
    "TypedPropertyDescriptor",
    "URIError",
    "URL",
    "URLPattern",
    "URLSearchParams",
    "Uint16Array",
    "Uint32Array",
    "Uint8Array",
    "Uint8ClampedArray",
    "Uncapitalize",
    "Uppercase",
    "WeakKey",
    "WeakMap",
    "WeakRef",
    "WeakSet",
    "WebAssembly",
    "WebSocket",
    "Window",
    "Worker",
    "WritableStream",
    "WritableStreamDefaultWriter",
    "addEventListener",
    "alert",
    "arguments",
    "atob",
    "btoa",
    "caches",
    "clearImmediate",
    "clearInterval",
    "clearTimeout",
    "confirm",
    "console",
    "createImageBitmap",
    "crypto",
    "decodeURI",
    "decodeURIComponent",
    "dispatchEvent",
    "encodeURI",
    "encodeURIComponent",
    "escape",
    "eval",
    "fetch",
    "global",
    "globalThis",
    "isFinite",
    "isNaN",
    "localStorage",
    "navigator",
    "onbeforeunload",
    "onerror",
    "onload",
    "onunhandledrejection",
    "onunload",
    "parseFloat",
    "parseInt",
    "performance",
    "process",
    "queueMicrotask",
    "removeEventListener",
    "reportError",
    "self",
    "sessionStorage",
    "setImmediate",
    "setInterval",
    "setTimeout",
    "structuredClone",
    "undefined",
    "unescape",
    "window",
];

#[cfg(test)]
mod tests;
