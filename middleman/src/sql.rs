//! SQL cells: a DuckDB query in the document, beside the Python cells and in the same graph.
//!
//! A SQL cell's source is SQL. A first line `-- result: name` binds the query's result (a
//! DataFrame) to `name` in the kernel. What the cell reads and defines comes from a real SQL
//! parser (`sqlparser`, DuckDB's dialect): it reads every table it names that is not one of its
//! own CTEs (a DataFrame of that name, if a cell defines one), and defines its result name and
//! the tables and views it creates. A query the parser does not know (DuckDB has syntax of its
//! own) still runs; its reads then come from the tokens after `FROM` and `JOIN`.
//!
//! The cell runs as Python that calls the kernel helper (`_nbplat.sql`, see
//! `kernel/nbplat_kernel.py`); in an `.ipynb` it is a code cell calling DuckDB directly, runnable
//! in any Jupyter with DuckDB, whose metadata keeps the SQL so that an import brings the cell
//! back, unless someone edited the code since.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Query, Statement, Visit, Visitor};
use sqlparser::dialect::DuckDbDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::graph::CellAnalysis;

/// The first line that names a SQL cell's result.
const RESULT_PREFIX: &str = "-- result:";

/// A SQL cell's source, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSource<'a> {
    /// The Python name the result is bound to, if the cell names one.
    pub result: Option<&'a str>,
    /// The query (the whole source: the header is an SQL comment).
    pub query: &'a str,
    /// Why the header is not usable, when it is not.
    pub header_error: Option<String>,
}

/// Splits a SQL cell's source into its result name and its query.
pub fn split(source: &str) -> SqlSource<'_> {
    let first = source.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let Some(rest) = first.trim_start().strip_prefix(RESULT_PREFIX) else {
        return SqlSource {
            result: None,
            query: source,
            header_error: None,
        };
    };
    let name = rest.trim();
    let header_error = (!is_identifier(name)).then(|| {
        format!("`{RESULT_PREFIX} {name}`: the result's name must be a Python identifier")
    });
    SqlSource {
        result: header_error.is_none().then_some(name),
        query: source,
        header_error,
    }
}

/// A Python identifier that is not a keyword (ASCII: what a result name needs to be).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let starts = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !PYTHON_KEYWORDS.contains(&name)
}

const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// What a SQL cell defines and reads, in the graph's terms.
pub fn analyse(source: &str) -> CellAnalysis {
    let sql = split(source);
    if let Some(error) = sql.header_error {
        return CellAnalysis {
            error: Some(error),
            ..CellAnalysis::default()
        };
    }
    let (created, mut reads) = match Parser::parse_sql(&DuckDbDialect {}, sql.query) {
        Ok(statements) => {
            let mut names = Names::default();
            let _ = statements.visit(&mut names);
            let reads = names.read_not_cte();
            (names.created, reads)
        }
        Err(_) => (BTreeSet::new(), scan_reads(sql.query)),
    };
    let mut defs: BTreeSet<String> = created;
    defs.extend(sql.result.map(str::to_owned));
    reads.retain(|n| !defs.contains(n) && !n.starts_with('_'));
    defs.retain(|n| !n.starts_with('_'));
    CellAnalysis {
        defs,
        refs: reads,
        star_import: false,
        error: None,
    }
}

/// The relations a query names, its CTEs and what it creates.
#[derive(Default)]
struct Names {
    relations: BTreeSet<String>,
    ctes: BTreeSet<String>,
    created: BTreeSet<String>,
}

impl Names {
    fn read_not_cte(&self) -> BTreeSet<String> {
        self.relations.difference(&self.ctes).cloned().collect()
    }
}

/// A single-part name, as DuckDB resolves it to a replacement scan (a Python variable); not a
/// quoted file name (`'sales.csv'`).
fn single(name: &sqlparser::ast::ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .filter(|i| i.quote_style.is_none_or(|q| q == '"'))
            .map(|i| i.value.clone()),
        _ => None,
    }
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        if let Some(name) = single(relation) {
            self.relations.insert(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.ctes
                .extend(with.cte_tables.iter().map(|c| c.alias.name.value.clone()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let created = match statement {
            Statement::CreateTable(t) => single(&t.name),
            Statement::CreateView(v) => single(&v.name),
            _ => None,
        };
        self.created.extend(created);
        ControlFlow::Continue(())
    }
}

/// The names after `FROM` and `JOIN` (and after commas in a `FROM` list), for SQL the parser
/// does not accept: enough to find the DataFrames a query reads.
fn scan_reads(query: &str) -> BTreeSet<String> {
    let Ok(tokens) = Tokenizer::new(&DuckDbDialect {}, query).tokenize() else {
        return BTreeSet::new();
    };
    let words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut reads = BTreeSet::new();
    for pair in words.windows(2) {
        let [Token::Word(keyword), Token::Word(name)] = pair else {
            continue;
        };
        let kw = keyword.value.to_ascii_uppercase();
        if (kw == "FROM" || kw == "JOIN") && name.quote_style.is_none_or(|q| q == '"') {
            reads.insert(name.value.clone());
        }
    }
    reads
}

/// Python that runs the cell in a kernel with the platform's helper: the result bound to its
/// name, and shown.
pub fn kernel_code(source: &str) -> String {
    let sql = split(source);
    let reads: Vec<String> = analyse(source).refs.into_iter().collect();
    let call = format!(
        "_nbplat_sql.sql({}, globals(), {})",
        python_string(sql.query),
        serde_json::Value::from(reads)
    );
    match sql.result {
        Some(name) => format!("import _nbplat as _nbplat_sql\n{name} = {call}\n{name}"),
        None => format!("import _nbplat as _nbplat_sql\n{call}"),
    }
}

/// The code cell an `.ipynb` holds for a SQL cell: DuckDB called directly (its replacement
/// scans find the DataFrames in the notebook's namespace), runnable in any Jupyter.
pub fn notebook_code(source: &str) -> String {
    let sql = split(source);
    let rows = Parser::parse_sql(&DuckDbDialect {}, sql.query)
        .map(|s| s.last().is_none_or(|s| matches!(s, Statement::Query(_))))
        .unwrap_or(true);
    let call = format!("duckdb.sql({})", python_string(sql.query));
    match (sql.result, rows) {
        (Some(name), true) => format!("import duckdb\n{name} = {call}.df()\n{name}"),
        (None, true) => format!("import duckdb\n{call}.df()"),
        (_, false) => format!("import duckdb\n{call}"),
    }
}

/// Whether `code` is exactly what [`notebook_code`] makes of `source`: an imported cell that
/// still is comes back as that SQL cell.
pub fn is_notebook_code_of(code: &str, source: &str) -> bool {
    notebook_code(source) == code
}

/// A Python string literal of `s`: triple-quoted when that needs no escaping (readable in
/// Jupyter), else JSON's escaping, which Python reads the same.
fn python_string(s: &str) -> String {
    if !s.contains("\"\"\"") && !s.contains('\\') && !s.ends_with('"') {
        format!("\"\"\"{s}\"\"\"")
    } else {
        serde_json::Value::from(s).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_header_names_the_result() {
        let s = split("-- result: sales\nSELECT 1");
        assert_eq!(s.result, Some("sales"));
        assert_eq!(
            split("\n  -- result:  by_region  \nSELECT 1").result,
            Some("by_region")
        );
        assert_eq!(split("SELECT 1 -- result: x").result, None);
        assert!(split("-- result: 1x\nSELECT 1").header_error.is_some());
        assert!(split("-- result: class\nSELECT 1").header_error.is_some());
        assert!(analyse("-- result: a b\nSELECT 1").error.is_some());
    }

    #[test]
    fn reads_are_the_tables_named_but_not_ctes_files_or_qualified_names() {
        let a = analyse(
            "-- result: out\nWITH recent AS (SELECT * FROM orders WHERE y > 2020)\n\
             SELECT r.*, c.name FROM recent r JOIN customers c USING (id)\n\
             WHERE id IN (SELECT id FROM vip) AND x IN (SELECT 1 FROM main.other)",
        );
        assert_eq!(a.error, None);
        assert_eq!(a.defs, set(&["out"]));
        assert_eq!(a.refs, set(&["customers", "orders", "vip"]));
    }

    #[test]
    fn created_tables_are_definitions_and_private_names_are_skipped() {
        let a = analyse("CREATE TABLE totals AS SELECT * FROM sales; SELECT * FROM totals, _tmp");
        assert_eq!(a.defs, set(&["totals"]));
        assert_eq!(a.refs, set(&["sales"]));
        let v = analyse("CREATE VIEW v AS SELECT * FROM t");
        assert_eq!((v.defs, v.refs), (set(&["v"]), set(&["t"])));
    }

    #[test]
    fn files_are_not_names_and_duckdb_syntax_falls_back_to_tokens() {
        let a =
            analyse("-- result: s\nSELECT region, sum(amount) FROM 'sales.csv' GROUP BY region");
        assert_eq!((a.defs, a.refs), (set(&["s"]), set(&[])));
        // FROM-first is DuckDB's own; the parser refuses it, the scan still finds `df`.
        let b = analyse("FROM df SELECT a WHERE a > (SELECT max(a) FROM other_df)");
        assert!(b.refs.contains("df") && b.refs.contains("other_df"));
    }

    #[test]
    fn kernel_code_binds_and_shows_the_result() {
        let code = kernel_code("-- result: out\nSELECT * FROM df");
        assert_eq!(
            code,
            "import _nbplat as _nbplat_sql\nout = _nbplat_sql.sql(\"\"\"-- result: out\nSELECT * FROM df\"\"\", globals(), [\"df\"])\nout"
        );
        assert!(kernel_code("SELECT '\\\\'").contains(r#""SELECT '\\\\'""#));
    }

    #[test]
    fn notebook_code_runs_in_plain_jupyter_and_is_recognised_back() {
        let src = "-- result: out\nSELECT 1 AS one";
        let code = notebook_code(src);
        assert_eq!(
            code,
            "import duckdb\nout = duckdb.sql(\"\"\"-- result: out\nSELECT 1 AS one\"\"\").df()\nout"
        );
        assert!(is_notebook_code_of(&code, src));
        assert!(!is_notebook_code_of(&code.replace("one", "two"), src));
        assert_eq!(
            notebook_code("CREATE TABLE t AS SELECT 1"),
            "import duckdb\nduckdb.sql(\"\"\"CREATE TABLE t AS SELECT 1\"\"\")"
        );
        assert_eq!(
            python_string("a \"\"\" b"),
            "\"a \\\"\\\"\\\" b\"",
            "JSON escaping when triple quotes would not do"
        );
    }
}
