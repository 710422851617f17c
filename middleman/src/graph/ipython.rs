//! What IPython does to a cell before Python sees it, for the analysis: the cleanup transforms
//! (leading blank lines dropped, a leading indent removed, `>>>` and `In [1]:` prompts
//! stripped) and cell magics (`%%name args` on the first line). A magic's body is Python only
//! for the magics that run it as Python; for the others (`%%bash`, `%%html`, `%%writefile`,
//! `%%sql`, ...) it is text, never parsed. Some magics bind names of their own: `%%capture out`,
//! `%%bash --out x --err y --proc p`, `%%sql result <<`.
//!
//! Follows IPython's `inputtransformer2` (the order of the cleanup transforms, the prompt
//! patterns); line magics and `!shell` lines are left to the parser's IPython mode.

use std::borrow::Cow;

/// A cell as the analysis should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared<'a> {
    /// Python to analyse (empty for a magic whose body is not Python).
    pub python: Cow<'a, str>,
    /// Names bound by the cell magic itself.
    pub defs: Vec<String>,
    /// The body runs in a scope of its own (`%%timeit`): it reads globals, binds none.
    pub reads_only: bool,
}

/// How a cell magic treats its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Runs it as Python in the user's namespace.
    Python,
    /// Runs it as Python in a function of its own (`%%timeit`).
    PythonScoped,
    /// Text for something else (a shell, the browser, a file, SQL).
    Text,
}

/// Magics whose body is Python run in the user's namespace.
const PYTHON_BODY: &[&str] = &["capture", "debug", "prun", "time"];
/// Magics that run a script (`%%script` and its shortcuts), which take `--out`/`--err`/`--proc`.
const SCRIPT: &[&str] = &[
    "bash", "perl", "pypy", "python", "python2", "python3", "ruby", "script", "sh",
];

pub fn prepare(source: &str) -> Prepared<'_> {
    let cleaned = cleanup(source);
    let first_line = cleaned.lines().next().unwrap_or("");
    let Some(magic_line) = first_line.strip_prefix("%%") else {
        return Prepared {
            python: cleaned,
            defs: Vec::new(),
            reads_only: false,
        };
    };
    let body = cleaned
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .to_owned();
    let mut words = magic_line.split_whitespace();
    let name = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let (kind, defs) = match name {
        "capture" => (Body::Python, capture_defs(&args)),
        "timeit" => (Body::PythonScoped, Vec::new()),
        n if PYTHON_BODY.contains(&n) => (Body::Python, Vec::new()),
        n if SCRIPT.contains(&n) => (Body::Text, script_defs(&args)),
        "sql" => (Body::Text, sql_defs(&args)),
        _ => (Body::Text, Vec::new()),
    };
    let python = match kind {
        Body::Python | Body::PythonScoped => body,
        Body::Text => String::new(),
    };
    Prepared {
        python: Cow::Owned(python),
        defs,
        reads_only: kind == Body::PythonScoped,
    }
}

/// `%%capture [--no-stderr] [--no-stdout] [--no-display] [output]`.
fn capture_defs(args: &[&str]) -> Vec<String> {
    args.iter()
        .filter(|a| !a.starts_with('-'))
        .take(1)
        .filter(|a| is_identifier(a))
        .map(|a| (*a).to_owned())
        .collect()
}

/// `%%bash --out x --err y --proc p` (also `--out=x`).
fn script_defs(args: &[&str]) -> Vec<String> {
    let mut defs = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        for flag in ["--out", "--err", "--proc"] {
            if *arg == flag {
                if let Some(v) = it.peek().filter(|v| is_identifier(v)) {
                    defs.push((**v).to_owned());
                }
            } else if let Some(v) = arg
                .strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
                .filter(|v| is_identifier(v))
            {
                defs.push(v.to_owned());
            }
        }
    }
    defs
}

/// `%%sql [connection] result <<` (ipython-sql and JupySQL store the result set in `result`).
fn sql_defs(args: &[&str]) -> Vec<String> {
    let line = args.join(" ");
    let Some((before, _)) = line.split_once("<<") else {
        return Vec::new();
    };
    before
        .split_whitespace()
        .last()
        .filter(|v| is_identifier(v))
        .map(|v| vec![v.to_owned()])
        .unwrap_or_default()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// IPython's cleanup transforms, in its order: leading blank lines, a leading indent, classic
/// (`>>>`, `...`) then IPython (`In [n]:`, `...:`) prompts.
fn cleanup(source: &str) -> Cow<'_, str> {
    let mut lines: Vec<String> = source.split_inclusive('\n').map(str::to_owned).collect();
    // Blank lines before the first line with text (a cell of blank lines stays as it is).
    if let Some(first) = lines.iter().position(|l| !l.trim().is_empty()) {
        lines.drain(..first);
    }
    let indent_len = lines
        .first()
        .map_or(0, |l| l.len() - l.trim_start_matches([' ', '\t']).len());
    if indent_len > 0 {
        let space = lines[0][..indent_len].to_owned();
        for l in &mut lines {
            if l.starts_with(&space) {
                l.drain(..indent_len);
            }
        }
    }
    strip_prompts(&mut lines, classic_initial, classic_prompt_len);
    strip_prompts(
        &mut lines,
        |l| ipython_prompt_len(l).is_some(),
        ipython_prompt_len,
    );
    let cleaned = lines.concat();
    if cleaned == source {
        Cow::Borrowed(source)
    } else {
        Cow::Owned(cleaned)
    }
}

/// IPython's `PromptStripper`: when the first line starts with the initial prompt, or the
/// second with a prompt, the prompt is removed from every line that has one.
fn strip_prompts(
    lines: &mut [String],
    initial: impl Fn(&str) -> bool,
    prompt_len: impl Fn(&str) -> Option<usize>,
) {
    let applies = lines.first().is_some_and(|l| initial(l))
        || lines.get(1).is_some_and(|l| prompt_len(l).is_some());
    if !applies {
        return;
    }
    for l in lines {
        if let Some(n) = prompt_len(l) {
            l.drain(..n);
        }
    }
}

/// `^>>>( |$)`.
fn classic_initial(line: &str) -> bool {
    line.strip_prefix(">>>")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\n', '\r']))
}

/// The length of `^(>>>|\.\.\.)( |$)` at the start of `line`.
fn classic_prompt_len(line: &str) -> Option<usize> {
    let rest = line
        .strip_prefix(">>>")
        .or_else(|| line.strip_prefix("..."))?;
    if rest.starts_with(' ') {
        Some(4)
    } else if rest.is_empty() || rest.starts_with(['\n', '\r']) {
        Some(3)
    } else {
        None
    }
}

/// The length of `^(In \[\d+\]: |\s*\.{3,}: ?)` at the start of `line`.
fn ipython_prompt_len(line: &str) -> Option<usize> {
    if let Some(rest) = line.strip_prefix("In [") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        return (digits > 0 && rest[digits..].starts_with("]: ")).then_some(4 + digits + 3);
    }
    let spaces = line.len() - line.trim_start().len();
    let rest = &line[spaces..];
    let dots = rest.bytes().take_while(|b| *b == b'.').count();
    if dots < 3 || !rest[dots..].starts_with(':') {
        return None;
    }
    let after = &rest[dots + 1..];
    Some(spaces + dots + 1 + usize::from(after.starts_with(' ')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(source: &str) -> String {
        prepare(source).python.into_owned()
    }

    #[test]
    fn plain_python_is_borrowed_unchanged() {
        let p = prepare("x = 1\nif x:\n    y = 2\n");
        assert!(matches!(p.python, Cow::Borrowed(_)));
        assert!(p.defs.is_empty() && !p.reads_only);
    }

    #[test]
    fn cleanup_transforms() {
        let rows: &[(&str, &str, &str)] = &[
            ("leading blank lines", "\n  \nx = 1\n", "x = 1\n"),
            (
                "a leading indent",
                "    x = 1\n    y = x\n",
                "x = 1\ny = x\n",
            ),
            (
                "an indent removed only where it is",
                "  if a:\n      b = 1\n  c = 2",
                "if a:\n    b = 1\nc = 2",
            ),
            (
                "classic prompts",
                ">>> x = 1\n>>> for i in range(2):\n...     x += i\n",
                "x = 1\nfor i in range(2):\n    x += i\n",
            ),
            ("a bare classic prompt", ">>>\n>>> x = 1", "\nx = 1"),
            (
                "IPython prompts",
                "In [1]: def f():\n   ...:     return 1\n   ...: \n",
                "def f():\n    return 1\n\n",
            ),
            ("not a prompt", "x = '>>> y'\n", "x = '>>> y'\n"),
            ("only blank lines", "\n\n", "\n\n"),
        ];
        for (rule, source, want) in rows {
            assert_eq!(python(source), *want, "{rule}");
        }
    }

    #[test]
    fn cell_magics() {
        // (source, python analysed, the magic's own defs, reads only)
        let rows: &[(&str, &str, &[&str], bool)] = &[
            ("%%bash\nx = $(ls)\necho $x\n", "", &[], false),
            ("%%html\n<b>hi</b>", "", &[], false),
            ("%%javascript\nlet x = 1;", "", &[], false),
            ("%%writefile out.py\nimport os\n", "", &[], false),
            ("%%sql\nSELECT 1", "", &[], false),
            ("%%sql sqlite:// rows <<\nSELECT 1", "", &["rows"], false),
            ("%%sql rows << SELECT 1", "", &["rows"], false),
            ("%%capture out\nprint(x)\n", "print(x)\n", &["out"], false),
            ("%%capture --no-stderr cap\ny = 1", "y = 1", &["cap"], false),
            ("%%capture\ny = 1", "y = 1", &[], false),
            ("%%time\ny = f(x)", "y = f(x)", &[], false),
            ("%%timeit -n 10\nsorted(data)", "sorted(data)", &[], true),
            (
                "%%bash --out listing --err=problems --proc p\nls",
                "",
                &["listing", "problems", "p"],
                false,
            ),
            ("%%someone_elses_magic a b\nwhatever (", "", &[], false),
            ("\n  %%bash\n  ls", "", &[], false),
        ];
        for (source, want_python, want_defs, reads_only) in rows {
            let p = prepare(source);
            assert_eq!(p.python, *want_python, "{source:?}");
            assert_eq!(p.defs, *want_defs, "{source:?}");
            assert_eq!(p.reads_only, *reads_only, "{source:?}");
        }
    }

    #[test]
    fn line_magics_are_left_to_the_parser() {
        assert_eq!(
            python("%matplotlib inline\nx = 1"),
            "%matplotlib inline\nx = 1"
        );
    }
}
