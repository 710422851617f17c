//! What a Python cell defines and references, from a real parser (Ruff's) and a scope resolver
//! that follows Python's own rules (the same answers as `symtable`, checked on a corpus by
//! `tests/analysis.rs`).
//!
//! - **defs**: names the cell binds in the global scope (assignment, annotation, `del`, import,
//!   `def`, `class`, `for`/`with`/`except` targets, `match` captures, the walrus operator
//!   (also from a comprehension)), and names declared `global` and bound in nested scopes.
//! - **refs**: names the cell reads from the global scope anywhere: nested functions, classes,
//!   lambdas and comprehensions included; decorators, default arguments, annotations and a
//!   comprehension's first iterable are read in the enclosing scope; class bodies are invisible
//!   to the functions inside them. `x += 1` reads and binds `x`.
//! - Names starting with `_` are local to their cell; builtins are never dependencies.
//! - `from m import *` is reported: the graph cannot see what it defines.
//!
//! One file: the visitor that collects bindings and the resolver that applies Python's scoping
//! to them are one algorithm, and a fifth of the file is the builtins list.

use std::collections::{BTreeSet, HashSet};

use super::ipython;

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{self as ast, Expr, ExprContext, Pattern, Stmt};

/// The result of analysing one cell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CellAnalysis {
    pub defs: BTreeSet<String>,
    pub refs: BTreeSet<String>,
    /// The cell has `from m import *`.
    pub star_import: bool,
    /// A syntax or scoping error; defs and refs are then empty.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Function,
    Class,
    Comprehension,
}

#[derive(Debug)]
struct Scope {
    kind: Kind,
    parent: Option<usize>,
    bound: HashSet<String>,
    globals: HashSet<String>,
    nonlocals: HashSet<String>,
    reads: Vec<String>,
}

impl Scope {
    fn new(kind: Kind, parent: Option<usize>) -> Self {
        Self {
            kind,
            parent,
            bound: HashSet::new(),
            globals: HashSet::new(),
            nonlocals: HashSet::new(),
            reads: Vec::new(),
        }
    }
}

struct Collector {
    scopes: Vec<Scope>,
    current: usize,
    star_import: bool,
}

/// Analyses one cell as IPython would run it (see [`ipython`]): prompts and a leading indent
/// removed, a cell magic's body analysed only when it is Python, the names a magic binds
/// counted; line magics and `!shell` lines are ignored.
pub fn analyse(source: &str) -> CellAnalysis {
    let prepared = ipython::prepare(source);
    let mut analysis = analyse_python(&prepared.python);
    if analysis.error.is_none() {
        if prepared.reads_only {
            analysis.defs.clear();
        }
        analysis
            .defs
            .extend(prepared.defs.into_iter().filter(|d| !d.starts_with('_')));
    }
    analysis
}

fn analyse_python(source: &str) -> CellAnalysis {
    let parsed =
        ruff_python_parser::parse_unchecked_source(source, ruff_python_ast::PySourceType::Ipynb);
    if let Some(error) = parsed.errors().first() {
        return CellAnalysis {
            error: Some(format!("syntax error: {error}")),
            ..CellAnalysis::default()
        };
    }
    let mut c = Collector {
        scopes: vec![Scope::new(Kind::Module, None)],
        current: 0,
        star_import: false,
    };
    c.visit_body(&parsed.syntax().body);
    c.finish()
}

impl Collector {
    fn push(&mut self, kind: Kind) -> usize {
        let parent = self.current;
        self.scopes.push(Scope::new(kind, Some(parent)));
        self.current = self.scopes.len() - 1;
        parent
    }

    fn bind(&mut self, name: &str) {
        self.scopes[self.current].bound.insert(name.to_owned());
    }

    fn read(&mut self, name: &str) {
        self.scopes[self.current].reads.push(name.to_owned());
    }

    /// Where a walrus target binds: the nearest scope that is not a comprehension.
    fn bind_walrus(&mut self, name: &str) {
        let mut s = self.current;
        while self.scopes[s].kind == Kind::Comprehension {
            match self.scopes[s].parent {
                Some(p) => s = p,
                None => break,
            }
        }
        self.scopes[s].bound.insert(name.to_owned());
    }

    /// Default values and annotations, read in the enclosing scope.
    fn parameter_exprs(&mut self, parameters: &ast::Parameters) {
        for default in parameters
            .iter_non_variadic_params()
            .filter_map(|p| p.default.as_deref())
        {
            self.visit_expr(default);
        }
        for p in parameters.iter() {
            if let Some(annotation) = p.annotation() {
                self.visit_expr(annotation);
            }
        }
    }

    fn bind_parameters(&mut self, parameters: &ast::Parameters) {
        for p in parameters.iter() {
            self.bind(p.name().as_str());
        }
    }

    fn comprehension(&mut self, generators: &[ast::Comprehension], body: &[&Expr]) {
        let Some((first, rest)) = generators.split_first() else {
            return;
        };
        // The first iterable is evaluated in the enclosing scope.
        self.visit_expr(&first.iter);
        let parent = self.push(Kind::Comprehension);
        self.visit_expr(&first.target);
        for e in &first.ifs {
            self.visit_expr(e);
        }
        for g in rest {
            self.visit_expr(&g.iter);
            self.visit_expr(&g.target);
            for e in &g.ifs {
                self.visit_expr(e);
            }
        }
        for e in body {
            self.visit_expr(e);
        }
        self.current = parent;
    }

    /// Whether a read of `name` in scope `s` resolves to the global scope.
    fn resolves_global(&self, s: usize, name: &str) -> bool {
        let scope = &self.scopes[s];
        if scope.kind == Kind::Module || scope.globals.contains(name) {
            return true;
        }
        if scope.nonlocals.contains(name) || scope.bound.contains(name) {
            return false;
        }
        let mut p = scope.parent;
        while let Some(i) = p {
            let outer = &self.scopes[i];
            match outer.kind {
                Kind::Module => return true,
                // Class bodies are not visible to the scopes nested in them.
                Kind::Class => {}
                Kind::Function | Kind::Comprehension => {
                    if outer.globals.contains(name) {
                        return true;
                    }
                    if outer.nonlocals.contains(name) || outer.bound.contains(name) {
                        return false;
                    }
                }
            }
            p = outer.parent;
        }
        true
    }

    /// Whether a `nonlocal name` in scope `s` finds an enclosing function binding.
    fn nonlocal_found(&self, s: usize, name: &str) -> bool {
        let mut p = self.scopes[s].parent;
        while let Some(i) = p {
            let outer = &self.scopes[i];
            match outer.kind {
                Kind::Module => return false,
                Kind::Class => {}
                Kind::Function | Kind::Comprehension => {
                    if outer.globals.contains(name) {
                        return false;
                    }
                    if outer.bound.contains(name) || outer.nonlocals.contains(name) {
                        return true;
                    }
                }
            }
            p = outer.parent;
        }
        false
    }

    fn finish(self) -> CellAnalysis {
        let mut out = CellAnalysis {
            star_import: self.star_import,
            ..CellAnalysis::default()
        };
        for (i, scope) in self.scopes.iter().enumerate() {
            for name in &scope.nonlocals {
                if !self.nonlocal_found(i, name) {
                    return CellAnalysis {
                        error: Some(format!("no binding for nonlocal '{name}' found")),
                        star_import: self.star_import,
                        ..CellAnalysis::default()
                    };
                }
            }
            for name in &scope.bound {
                if (scope.kind == Kind::Module || scope.globals.contains(name))
                    && !name.starts_with('_')
                {
                    out.defs.insert(name.clone());
                }
            }
            for name in &scope.reads {
                if !name.starts_with('_')
                    && !is_builtin(name)
                    && !out.refs.contains(name)
                    && self.resolves_global(i, name)
                {
                    out.refs.insert(name.clone());
                }
            }
        }
        out
    }
}

impl<'a> Visitor<'a> for Collector {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(f) => {
                for d in &f.decorator_list {
                    self.visit_decorator(d);
                }
                self.parameter_exprs(&f.parameters);
                if let Some(returns) = &f.returns {
                    self.visit_expr(returns);
                }
                self.bind(f.name.as_str());
                let parent = self.push(Kind::Function);
                self.bind_parameters(&f.parameters);
                self.visit_body(&f.body);
                self.current = parent;
            }
            Stmt::ClassDef(c) => {
                for d in &c.decorator_list {
                    self.visit_decorator(d);
                }
                if let Some(arguments) = &c.arguments {
                    self.visit_arguments(arguments);
                }
                self.bind(c.name.as_str());
                let parent = self.push(Kind::Class);
                self.visit_body(&c.body);
                self.current = parent;
            }
            Stmt::Global(g) => {
                for n in &g.names {
                    self.scopes[self.current].globals.insert(n.to_string());
                }
            }
            Stmt::Nonlocal(n) => {
                for name in &n.names {
                    self.scopes[self.current].nonlocals.insert(name.to_string());
                }
            }
            Stmt::AugAssign(a) => {
                self.visit_expr(&a.value);
                if let Expr::Name(n) = a.target.as_ref() {
                    // Reads, then binds.
                    self.read(n.id.as_str());
                    self.bind(n.id.as_str());
                } else {
                    self.visit_expr(&a.target);
                }
            }
            Stmt::Import(i) => {
                for alias in &i.names {
                    let bound = match &alias.asname {
                        Some(a) => a.to_string(),
                        None => alias
                            .name
                            .as_str()
                            .split('.')
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    };
                    self.bind(&bound);
                }
            }
            // A compiler directive, not a definition: every cell may start with one.
            Stmt::ImportFrom(i)
                if i.module
                    .as_ref()
                    .is_some_and(|m| m.as_str() == "__future__") => {}
            Stmt::ImportFrom(i) => {
                for alias in &i.names {
                    if alias.name.as_str() == "*" {
                        self.star_import = true;
                    } else {
                        let bound = alias.asname.as_ref().unwrap_or(&alias.name);
                        self.bind(bound.as_str());
                    }
                }
            }
            _ => visitor::walk_stmt(self, stmt),
        }
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::Name(n) => match n.ctx {
                ExprContext::Load => self.read(n.id.as_str()),
                ExprContext::Store | ExprContext::Del => self.bind(n.id.as_str()),
                ExprContext::Invalid => {}
            },
            Expr::Named(n) => {
                self.visit_expr(&n.value);
                if let Expr::Name(t) = n.target.as_ref() {
                    self.bind_walrus(t.id.as_str());
                }
            }
            Expr::Lambda(l) => {
                if let Some(p) = &l.parameters {
                    self.parameter_exprs(p);
                }
                let parent = self.push(Kind::Function);
                if let Some(p) = &l.parameters {
                    self.bind_parameters(p);
                }
                self.visit_expr(&l.body);
                self.current = parent;
            }
            Expr::ListComp(c) => self.comprehension(&c.generators, &[&c.elt]),
            Expr::SetComp(c) => self.comprehension(&c.generators, &[&c.elt]),
            Expr::Generator(c) => self.comprehension(&c.generators, &[&c.elt]),
            Expr::DictComp(c) => {
                let mut body: Vec<&Expr> = c.key.as_deref().into_iter().collect();
                body.push(&c.value);
                self.comprehension(&c.generators, &body);
            }
            _ => visitor::walk_expr(self, expr),
        }
    }

    fn visit_pattern(&mut self, pattern: &'a Pattern) {
        match pattern {
            Pattern::MatchAs(p) => {
                if let Some(inner) = &p.pattern {
                    self.visit_pattern(inner);
                }
                if let Some(name) = &p.name {
                    self.bind(name.as_str());
                }
            }
            Pattern::MatchStar(p) => {
                if let Some(name) = &p.name {
                    self.bind(name.as_str());
                }
            }
            Pattern::MatchMapping(p) => {
                for k in &p.keys {
                    self.visit_expr(k);
                }
                for inner in &p.patterns {
                    self.visit_pattern(inner);
                }
                if let Some(rest) = &p.rest {
                    self.bind(rest.as_str());
                }
            }
            _ => visitor::walk_pattern(self, pattern),
        }
    }

    fn visit_except_handler(&mut self, handler: &'a ast::ExceptHandler) {
        let ast::ExceptHandler::ExceptHandler(h) = handler;
        if let Some(name) = &h.name {
            self.bind(name.as_str());
        }
        visitor::walk_except_handler(self, handler);
    }
}

fn is_builtin(name: &str) -> bool {
    BUILTINS.binary_search(&name).is_ok()
}

/// Python 3.11's `dir(builtins)` without underscore names (those are cell-local anyway).
const BUILTINS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BaseException",
    "BaseExceptionGroup",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "BytesWarning",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "DeprecationWarning",
    "EOFError",
    "Ellipsis",
    "EncodingWarning",
    "EnvironmentError",
    "Exception",
    "ExceptionGroup",
    "False",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "FutureWarning",
    "GeneratorExit",
    "IOError",
    "ImportError",
    "ImportWarning",
    "IndentationError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "None",
    "NotADirectoryError",
    "NotImplemented",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PendingDeprecationWarning",
    "PermissionError",
    "ProcessLookupError",
    "RecursionError",
    "ReferenceError",
    "ResourceWarning",
    "RuntimeError",
    "RuntimeWarning",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "SyntaxWarning",
    "SystemError",
    "SystemExit",
    "TabError",
    "TimeoutError",
    "True",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "UnicodeWarning",
    "UserWarning",
    "ValueError",
    "Warning",
    "ZeroDivisionError",
    "abs",
    "aiter",
    "all",
    "anext",
    "any",
    "ascii",
    "bin",
    "bool",
    "breakpoint",
    "bytearray",
    "bytes",
    "callable",
    "chr",
    "classmethod",
    "compile",
    "complex",
    "copyright",
    "credits",
    "delattr",
    "dict",
    "dir",
    "divmod",
    "enumerate",
    "eval",
    "exec",
    "exit",
    "filter",
    "float",
    "format",
    "frozenset",
    "getattr",
    "globals",
    "hasattr",
    "hash",
    "help",
    "hex",
    "id",
    "input",
    "int",
    "isinstance",
    "issubclass",
    "iter",
    "len",
    "license",
    "list",
    "locals",
    "map",
    "max",
    "memoryview",
    "min",
    "next",
    "object",
    "oct",
    "open",
    "ord",
    "pow",
    "print",
    "property",
    "quit",
    "range",
    "repr",
    "reversed",
    "round",
    "set",
    "setattr",
    "slice",
    "sorted",
    "staticmethod",
    "str",
    "sum",
    "super",
    "tuple",
    "type",
    "vars",
    "zip",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The rules of `docs/reactivity.md` ("What a cell defines and references"), one row each:
    /// source, defs, refs. (`tests/analysis.rs` checks the same analysis against Python's own
    /// symtable on a corpus; this table needs no Python.)
    #[test]
    fn every_rule_of_the_reactivity_doc() {
        let rows: &[(&str, &str, &[&str], &[&str])] = &[
            ("assignment", "x = y", &["x"], &["y"]),
            ("annotated-only assignment", "x: int", &["x"], &[]),
            (
                "augmented assignment reads and binds",
                "x += 1",
                &["x"],
                &["x"],
            ),
            ("del binds", "del x", &["x"], &[]),
            ("import a.b binds a", "import a.b", &["a"], &[]),
            ("import a.b as c binds c", "import a.b as c", &["c"], &[]),
            ("from m import x", "from m import x", &["x"], &[]),
            (
                "def and class",
                "def f():\n    pass\nclass K:\n    pass",
                &["K", "f"],
                &[],
            ),
            ("for targets", "for i in r:\n    pass", &["i"], &["r"]),
            (
                "with targets",
                "with open(p) as h:\n    pass",
                &["h"],
                &["p"],
            ),
            (
                "except targets",
                "try:\n    pass\nexcept E as e:\n    pass",
                &["e"],
                &["E"],
            ),
            (
                "match captures",
                "match v:\n    case [p, q]:\n        pass",
                &["p", "q"],
                &["v"],
            ),
            ("walrus", "(n := 10)", &["n"], &[]),
            (
                "walrus in a comprehension binds in the enclosing scope",
                "[y := f(v) for v in s]",
                &["y"],
                &["f", "s"],
            ),
            (
                "global declared and bound inside a function",
                "def f():\n    global g\n    g = 1",
                &["f", "g"],
                &[],
            ),
            (
                "function bodies are their own scope: parameters and locals are not references",
                "def f(a):\n    b = a\n    return b + c",
                &["f"],
                &["c"],
            ),
            ("lambda parameters", "g = lambda a: a + k", &["g"], &["k"]),
            (
                "nonlocal names belong to the enclosing function",
                "def f():\n    n = 0\n    def g():\n        nonlocal n\n        n += 1\n    return g",
                &["f"],
                &[],
            ),
            (
                "class bodies are invisible to the functions inside them",
                "class K:\n    v = 1\n    def m(self):\n        return v",
                &["K"],
                &["v"],
            ),
            (
                "decorators and default arguments are read in the enclosing scope",
                "@dec\ndef f(a=d):\n    return a",
                &["f"],
                &["d", "dec"],
            ),
            (
                "class bases are read in the enclosing scope",
                "class K(Base):\n    pass",
                &["K"],
                &["Base"],
            ),
            (
                "a comprehension's first iterable is read in the enclosing scope",
                "[v * w for v in items]",
                &[],
                &["items", "w"],
            ),
            (
                "f-string expressions are read",
                "s = f\"{name}!\"",
                &["s"],
                &["name"],
            ),
            (
                "names starting with _ are local to their cell",
                "_t = 1\nprint(_t, _u)",
                &[],
                &[],
            ),
            (
                "builtins are never dependencies",
                "n = len(s)",
                &["n"],
                &["s"],
            ),
            ("IPython escapes are allowed", "%time x = 1\n!ls", &[], &[]),
            (
                "a __future__ import is not a definition",
                "from __future__ import annotations\nx: int = 1",
                &["x"],
                &[],
            ),
            (
                "a cell magic's non-Python body is not parsed",
                "%%bash --out listing\nfor f in *; do echo $f; done",
                &["listing"],
                &[],
            ),
            (
                "a Python magic's body is analysed, its own binding a definition",
                "%%capture out\nfig = plot(df)",
                &["fig", "out"],
                &["df", "plot"],
            ),
            (
                "%%timeit reads globals and binds none",
                "%%timeit\ny = sorted(data)",
                &[],
                &["data"],
            ),
            (
                "prompt-style cells are analysed without their prompts",
                ">>> import math\n>>> r = math.sqrt(x)",
                &["math", "r"],
                &["math", "x"],
            ),
            (
                "an indented cell is dedented",
                "    total = a + b\n    total",
                &["total"],
                &["a", "b", "total"],
            ),
        ];
        for (rule, source, defs, refs) in rows {
            let a = analyse(source);
            assert!(
                a.error.is_none(),
                "{rule}: {source:?} does not parse: {:?}",
                a.error
            );
            assert_eq!(a.defs, set(defs), "{rule}: defs of {source:?}");
            assert_eq!(a.refs, set(refs), "{rule}: refs of {source:?}");
        }
        // `from m import *` is a warning: the graph cannot see what it defines.
        assert!(analyse("from m import *").star_import);
        // A cell that does not parse, or whose scopes are invalid, has no defs or refs.
        for broken in ["x = (", "def f():\n    nonlocal q"] {
            let a = analyse(broken);
            assert!(a.error.is_some(), "{broken:?}");
            assert!(a.defs.is_empty() && a.refs.is_empty(), "{broken:?}");
        }
    }

    #[test]
    fn builtins_are_sorted_for_binary_search() {
        assert!(BUILTINS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn basics() {
        let a = analyse("y = x + 1\nprint(y)");
        assert_eq!(a.defs, set(&["y"]));
        assert_eq!(a.refs, set(&["x", "y"]));
        let a = analyse("def f(a=d):\n    return a + g\n");
        assert_eq!((a.defs, a.refs), (set(&["f"]), set(&["d", "g"])));
        assert!(analyse("def (").error.is_some());
        assert!(analyse("from os import *").star_import);
        assert_eq!(analyse("%matplotlib inline\nx = 1").defs, set(&["x"]));
    }
}
