use std::collections::BTreeSet;

use super::*;

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The rules of the module docs (and `docs/reactivity.md`), one row each: source, defs, refs.
#[test]
fn every_rule_of_the_module_docs() {
    let rows: &[(&str, &str, &[&str], &[&str])] = &[
        // Declarations of every kind.
        ("const", "const x = y", &["x"], &["y"]),
        ("let and var", "let a = 1; var b = a", &["a", "b"], &[]),
        ("function", "function f(p) { return p + q }", &["f"], &["q"]),
        (
            "async and generator functions",
            "async function load() {}\nfunction* gen() { yield 1 }",
            &["gen", "load"],
            &[],
        ),
        ("class", "class K extends Base {}", &["K"], &["Base"]),
        (
            "enum",
            "enum Color { Red, Green = Red + 1 }",
            &["Color"],
            &[],
        ),
        (
            "types: type, interface and namespace declare names",
            "type Id = string\ninterface Row { id: Id }\nnamespace NS { export const v = 1 }",
            &["Id", "NS", "Row"],
            &[],
        ),
        (
            "import bindings: default, named, renamed, namespace, type",
            "import d3 from \"npm:d3\"\nimport { a, b as c } from \"./m.ts\"\n\
             import * as path from \"jsr:@std/path\"\nimport type { T } from \"./t.ts\"",
            &["T", "a", "c", "d3", "path"],
            &[],
        ),
        (
            "destructuring: every name of the pattern, defaults read",
            "const { a, b: [c, ...rest], d = fallback, ...others } = obj",
            &["a", "c", "d", "others", "rest"],
            &["fallback", "obj"],
        ),
        (
            "a var in a top-level block is hoisted; a let is not",
            "if (ok) { var v = 1; let w = 2 }\nfor (let i = 0; i < n; i++) {}",
            &["v"],
            &["n", "ok"],
        ),
        (
            "export declarations still bind",
            "export const e = 1\nexport function g() {}",
            &["e", "g"],
            &[],
        ),
        // Assignments to names the cell does not declare.
        (
            "an assignment to an undeclared name defines it (and needs its binding)",
            "x = 1",
            &["x"],
            &["x"],
        ),
        (
            "augmented assignment reads and binds",
            "x += 1",
            &["x"],
            &["x"],
        ),
        ("x = x + 1 reads and binds", "x = x + 1", &["x"], &["x"]),
        ("update", "count++", &["count"], &["count"]),
        (
            "assignment in a nested function defines it too",
            "function reset() { total = 0 }",
            &["reset", "total"],
            &["total"],
        ),
        (
            "destructuring assignment and for-of targets",
            "[p, q] = pair;\n({ r } = rec);\nfor (k of keys) {}",
            &["k", "p", "q", "r"],
            &["k", "keys", "p", "pair", "q", "r", "rec"],
        ),
        (
            "an assignment to a declared name is only its declaration",
            "let n = 0\nn += 1\nfunction bump() { n++ }",
            &["bump", "n"],
            &[],
        ),
        (
            "a member assignment reads the object",
            "data.rows = []\nstore[key] = 1",
            &[],
            &["data", "key", "store"],
        ),
        // Scopes.
        (
            "parameters, inner declarations and catch parameters are local",
            "function f(a, { b }, ...c) { const d = a; let e; var g; return b + c + d + e + g + h }\n\
             try { risky() } catch (err) { console.log(err) }",
            &["f"],
            &["h", "risky"],
        ),
        (
            "inner declarations shadow names of other cells",
            "function f() { const df = 1; return df }\nconst g = (df) => df",
            &["f", "g"],
            &[],
        ),
        (
            "closures read globals",
            "const add = (a) => a + offset\nsetTimeout(() => tick(), 10)",
            &["add"],
            &["offset", "tick"],
        ),
        (
            "a name the cell declares is not a reference, even read before or in a closure",
            "console.log(later)\nfunction use() { return later }\nvar later = 1",
            &["later", "use"],
            &[],
        ),
        (
            "class and function expressions' own names are local",
            "const K = class Inner { m() { return Inner } }\n\
             const fact = function rec(n) { return n ? n * rec(n - 1) : 1 }",
            &["K", "fact"],
            &[],
        ),
        (
            "class fields, methods, static blocks, decorators-free members",
            "class Model { rows = initial; static count = 0; #secret = key;\n  get size() { return this.rows.length }\n  \
             fit(x) { return weights.map(w => w * x) }\n  static { Model.count = start } }",
            &["Model"],
            &["initial", "key", "start", "weights"],
        ),
        // What is not a reference.
        (
            "property names, optional chains, object keys and labels are not references",
            "a.b\nobj?.c.d\nconst o = { e: 1, f() {} }\nouter: for (;;) { break outer }",
            &["o"],
            &["a", "obj"],
        ),
        (
            "a shorthand property is a reference",
            "const o = { b, c: 1 }",
            &["o"],
            &["b"],
        ),
        (
            "import.meta and new.target are not references",
            "const here = import.meta.url\nfunction F() { return new.target }",
            &["F", "here"],
            &[],
        ),
        // Types.
        (
            "type references are references",
            "let a: Foo = make()\nfunction f(x: Bar<Baz>): Qux[] { return [] }",
            &["a", "f"],
            &["Bar", "Baz", "Foo", "Qux", "make"],
        ),
        (
            "type parameters, mapped and inferred types are local",
            "type Box<T> = { [K in keyof T]: T[K] extends infer U ? U : never }\n\
             function id<T>(x: T): T { return x }",
            &["Box", "id"],
            &[],
        ),
        (
            "typeof queries and qualified names read their first name",
            "type Cfg = typeof config\nlet r: Api.Row\nclass C implements Shape {}",
            &["C", "Cfg", "r"],
            &["Api", "Shape", "config"],
        ),
        (
            "casts, satisfies and non-null assertions read their expression",
            "const n = (raw as number) satisfies Num\nconst m = maybe!",
            &["m", "n"],
            &["Num", "maybe", "raw"],
        ),
        // Locals and builtins.
        (
            "names starting with _ are local to their cell",
            "const _tmp = 1\nlet y = _tmp + _other\n_g = 2",
            &["y"],
            &[],
        ),
        (
            "Deno's globals and TypeScript's library types are never references",
            "const t: Record<string, Partial<Row>> = JSON.parse(await Deno.readTextFile(p))\n\
             console.log(Math.max(...Object.values(t).map(Number)), undefined, NaN)\n\
             const u = new URL(\"x\", globalThis.location?.href); new TextEncoder(); structuredClone(u)",
            &["t", "u"],
            &["Row", "p"],
        ),
        (
            "a builtin's name a cell defines is a definition",
            "const URL = \"https://example.com\"",
            &["URL"],
            &[],
        ),
        (
            "generic words Deno also has as globals are ordinary names",
            "const greeting = `hi ${name}`; prompt.trim()",
            &["greeting"],
            &["name", "prompt"],
        ),
        // Top-level await and modules.
        (
            "top-level await",
            "const res = await load(url)\nfor await (const chunk of res) { sink(chunk) }",
            &["res"],
            &["load", "sink", "url"],
        ),
        (
            "export * imports nothing; export lists read local names",
            "export * from \"./lib.ts\"\nexport { shown }",
            &[],
            &["shown"],
        ),
        (
            "JSX, which Deno accepts too, is read when the cell is not TypeScript",
            "const el = <Chart data={rows} />",
            &["el"],
            &["Chart", "rows"],
        ),
    ];
    for (rule, source, defs, refs) in rows {
        let a = analyse(source);
        assert!(
            a.error.is_none(),
            "{rule}: {source:?} does not parse: {:?}",
            a.error
        );
        assert!(!a.star_import, "{rule}");
        assert_eq!(a.defs, set(defs), "{rule}: defs of {source:?}");
        assert_eq!(a.refs, set(refs), "{rule}: refs of {source:?}");
    }
}

#[test]
fn a_cell_that_does_not_parse_has_an_error_and_no_names() {
    for (broken, at) in [
        ("const x = (", "1:"),
        ("let a = 1\nfunction (", "2:"),
        ("type T = {\n  a: ;\n}", "2:"),
    ] {
        let a = analyse(broken);
        let error = a.error.unwrap_or_default();
        assert!(
            error.starts_with(&format!("syntax error at {at}")),
            "{broken:?}: {error}"
        );
        assert!(a.defs.is_empty() && a.refs.is_empty(), "{broken:?}");
    }
    // An early error the parser does not see is left for Deno to report when the cell runs
    // (an analysis error would keep the cell from running at all).
    assert!(analyse("let d = 1; let d = 2").error.is_none());
    // Line and column count characters, from 1.
    assert_eq!(line_column("ab\ncdé f", 9), "2:6");
    assert_eq!(line_column("x", 0), "1:1");
}

#[test]
fn builtins_are_sorted_for_binary_search() {
    assert!(BUILTINS.windows(2).all(|w| w[0] < w[1]));
    assert!(is_builtin("console") && is_builtin("ReturnType") && !is_builtin("df"));
}

#[test]
fn which_cells_may_show_a_value() {
    for shows in [
        "1 + 1",
        "xs.map((x) => x * 2)",
        "await fetchRows()",
        "1; const x = 2",
        "if (a) { 5 }",
        "for (const x of xs) { x }",
        "Deno.jupyter.html`<b>hi</b>`",
        "console",
        "log(1)",
        "const = 1",
    ] {
        assert!(may_show_a_value(shows), "{shows}");
    }
    for quiet in [
        "",
        "// a comment",
        "const x = 1",
        "let a = 1, b = 2",
        "function f() { return 1 }",
        "class A {}",
        "interface P { a: number }\ntype Q = P",
        "import * as path from \"jsr:@std/path\"",
        "export const y = 1",
        "console.log('hi')",
        "console.table(rows)\nconst done = true",
    ] {
        assert!(!may_show_a_value(quiet), "{quiet}");
    }
}
