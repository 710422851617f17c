# The platform's part of an IPython kernel, run once at start-up (Middleman passes it as an
# `exec_lines` entry; see middleman/src/kernel/helper.rs). It becomes the module `_nbplat`:
#
# - Table outputs: a DataFrame (or Series) is displayed with one more MIME type,
#   application/vnd.nbplat.table+json: its columns and types, its row count and its first page.
#   The kernel keeps the frame (the last TABLES_KEPT of them) under a handle, so a client can
#   ask for any page, in any order, without the whole table ever leaving the kernel. pandas'
#   own text/html stays in the bundle for other clients.
# - `nbplat_request`, a shell message Middleman sends on a kernel subshell (so it is answered
#   while a cell runs): a table's page (`table_page`) and SQL completion (`sql_complete`).
# - `sql()`, what a SQL cell runs: DuckDB over the DataFrames the query names and the files in
#   the working directory (the workspace).
# - Altair charts are shown as their Vega-Lite spec (the mimetype renderer) unless the user chose
#   a renderer: Altair's default HTML loads Vega from a CDN, which a kernel here cannot reach, and
#   the web client draws specs with the Vega it bundles.
#
# Nothing here is trusted by Middleman: replies are size-capped and checked there.
import collections
import datetime
import decimal
import math
import os
import re
import sys
import threading
import uuid

from IPython import get_ipython

TABLE_MIME = "application/vnd.nbplat.table+json"
TABLES_KEPT = 32
FIRST_PAGE = 50
MAX_PAGE = 1000
MAX_CELL_CHARS = 500

_tables = collections.OrderedDict()
_lock = threading.Lock()


class SQLError(Exception):
    """A SQL cell's query failed."""


SQLError.__module__ = "nbplat"


def _plain(value):
    """One cell of a table as JSON: numbers, strings, booleans or null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**53) < value < 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_CELL_CHARS else value[:MAX_CELL_CHARS] + "…"
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        try:
            return _plain(item())
        except (TypeError, ValueError):
            pass
    try:
        import pandas as pd

        if value is pd.NaT or value is pd.NA:
            return None
    except ImportError:
        pass
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        try:
            return value.isoformat()
        except (TypeError, ValueError):
            pass
    if isinstance(value, decimal.Decimal):
        return _plain(float(value))
    if isinstance(value, bytes):
        return _plain(repr(value))
    return _plain(str(value))


def _frame(obj):
    """The DataFrame to show for obj (a Series becomes a one-column frame)."""
    import pandas as pd

    if isinstance(obj, pd.Series):
        return obj.to_frame(name=obj.name if obj.name is not None else 0)
    return obj


def _shows_index(df):
    import pandas as pd

    index = df.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        return index.name is not None
    return True


def _index_names(df):
    return [str(n) if n is not None else "" for n in df.index.names]


def _rows(df, start, stop, order=None):
    """Rows start..stop (of `order`, a permutation, when sorted) as JSON lists."""
    if order is not None:
        part = df.take(order[start:stop])
    else:
        part = df.iloc[start:stop]
    with_index = _shows_index(df)
    rows = []
    for row in part.itertuples(index=with_index, name=None):
        if with_index and isinstance(row[0], tuple):
            row = row[0] + row[1:]
        rows.append([_plain(v) for v in row])
    return rows


def _column_name(c):
    return " / ".join(str(p) for p in c) if isinstance(c, tuple) else str(c)


def table_output(obj):
    """The table MIME data for a DataFrame or Series; the frame is kept for its pages."""
    df = _frame(obj)
    handle = uuid.uuid4().hex[:16]
    with _lock:
        _tables[handle] = {"frame": df, "sort": None, "order": None}
        while len(_tables) > TABLES_KEPT:
            _tables.popitem(last=False)
    data = {
        "table": handle,
        "columns": [{"name": _column_name(c), "type": str(t)} for c, t in zip(df.columns, df.dtypes)],
        "row_count": int(len(df)),
        "rows": _rows(df, 0, FIRST_PAGE),
    }
    if _shows_index(df):
        data["index"] = _index_names(df)
    return data


def _page(table, offset, limit, sort):
    with _lock:
        entry = _tables.get(table)
        if entry is not None:
            _tables.move_to_end(table)
    if entry is None:
        return {"status": "error", "ename": "gone", "evalue": "this table is no longer in the kernel; run its cell again"}
    df = entry["frame"]
    offset = max(0, int(offset))
    limit = max(0, min(MAX_PAGE, int(limit)))
    order = None
    if sort:
        key = (str(sort.get("column")), bool(sort.get("descending")))
        if entry["sort"] != key:
            names = [_column_name(c) for c in df.columns]
            if key[0] in names:
                column = df.iloc[:, names.index(key[0])]
            elif key[0] in _index_names(df):
                column = df.index.get_level_values(_index_names(df).index(key[0])).to_series()
            else:
                return {"status": "error", "ename": "failed", "evalue": f"no column {key[0]!r}"}
            try:
                ranked = column.reset_index(drop=True).sort_values(
                    ascending=not key[1], kind="stable", na_position="last"
                )
            except TypeError:
                ranked = column.reset_index(drop=True).astype(str).sort_values(
                    ascending=not key[1], kind="stable"
                )
            entry["order"] = ranked.index.to_numpy()
            entry["sort"] = key
        order = entry["order"]
    return {
        "status": "ok",
        "table": table,
        "offset": offset,
        "row_count": int(len(df)),
        "rows": _rows(df, offset, offset + limit, order),
    }


SQL_KEYWORDS = (
    "SELECT FROM WHERE GROUP BY ORDER HAVING LIMIT OFFSET JOIN LEFT RIGHT INNER OUTER FULL CROSS ON USING "
    "AS AND OR NOT IN IS NULL LIKE ILIKE BETWEEN CASE WHEN THEN ELSE END DISTINCT UNION ALL EXCEPT "
    "INTERSECT WITH ASC DESC COUNT SUM AVG MIN MAX CAST CREATE TABLE VIEW INSERT INTO VALUES "
    "DESCRIBE SUMMARIZE PIVOT UNPIVOT QUALIFY WINDOW OVER PARTITION read_csv read_parquet read_json"
).split()


def _data_names(ns):
    """Names in the user's namespace that a query can read as tables."""
    names = {}
    for name, value in list(ns.items()):
        if name.startswith("_"):
            continue
        module = type(value).__module__.split(".")[0]
        if module in ("pandas", "pyarrow", "polars") and hasattr(value, "columns"):
            names[name] = value
    return names


def _sql_complete(code, cursor):
    cursor = max(0, min(len(code), int(cursor)))
    before = code[:cursor]
    quoted = re.search(r"'([^'\s]*)$", before)
    if quoted:
        prefix = quoted.group(1)
        start = cursor - len(prefix)
        try:
            files = sorted(os.listdir("."))
        except OSError:
            files = []
        matches = [
            {"text": f, "type": "file"}
            for f in files
            if f.startswith(prefix) and f.rsplit(".", 1)[-1].lower() in ("csv", "parquet", "json", "tsv", "ndjson")
        ]
        return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": cursor}
    word = re.search(r"([A-Za-z_][A-Za-z0-9_]*)?$", before)
    prefix = word.group(1) or "" if word else ""
    dotted = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z0-9_]*)$", before)
    ns = get_ipython().user_ns
    frames = _data_names(ns)
    matches = []
    if dotted and dotted.group(1) in frames:
        prefix = dotted.group(2)
        columns = [_column_name(c) for c in frames[dotted.group(1)].columns]
        matches = [{"text": c, "type": "column"} for c in columns if c.startswith(prefix)]
    else:
        low = prefix.lower()
        mentioned = [n for n in frames if re.search(r"\b" + re.escape(n) + r"\b", code)]
        for name in sorted(frames):
            if name.lower().startswith(low):
                matches.append({"text": name, "type": "table"})
        for name in mentioned:
            for c in frames[name].columns:
                c = _column_name(c)
                if c.lower().startswith(low):
                    matches.append({"text": c, "type": "column"})
        if prefix:
            matches += [{"text": k, "type": "keyword"} for k in SQL_KEYWORDS if k.lower().startswith(low)]
    seen = set()
    unique = [m for m in matches if not (m["text"] in seen or seen.add(m["text"]))]
    return {"status": "ok", "matches": unique[:200], "cursor_start": cursor - len(prefix), "cursor_end": cursor}


def _table_page(content):
    return _page(content.get("table", ""), content.get("offset", 0), content.get("limit", FIRST_PAGE), content.get("sort"))


def _sql_complete_request(content):
    return _sql_complete(str(content.get("code", "")), content.get("cursor", 0))


# What `nbplat_request` can ask, by `op`; nbplat_checkpoint.py adds its own.
OPERATIONS = {"table_page": _table_page, "sql_complete": _sql_complete_request}


def _answer(content):
    op = content.get("op")
    operation = OPERATIONS.get(op)
    if operation is None:
        return {"status": "error", "ename": "failed", "evalue": f"unknown request {op!r}"}
    return operation(content)


def _on_request(stream, ident, parent):
    kernel = get_ipython().kernel
    try:
        reply = _answer(parent.get("content") or {})
    except Exception as e:  # noqa: BLE001 (any failure is the answer)
        reply = {"status": "error", "ename": "failed", "evalue": f"{type(e).__name__}: {e}"}
    kernel.session.send(stream, "nbplat_reply", reply, parent, ident)


def _connection():
    import duckdb

    default = getattr(duckdb, "default_connection", None)
    return default() if callable(default) else default


def sql(query, ns, names):
    """Runs a SQL cell's query with DuckDB: the DataFrames among `names` are its tables, beside
    DuckDB's own and the files of the working directory. Returns a DataFrame (None for a
    statement without rows)."""
    __tracebackhide__ = True
    import duckdb

    con = _connection()
    registered = []
    try:
        for name in names:
            value = ns.get(name)
            if value is not None and name in _data_names({name: value}):
                con.register(name, value)
                registered.append(name)
        try:
            relation = con.sql(query)
            return relation.df() if relation is not None else None
        except duckdb.Error as e:
            raise SQLError(str(e)) from None
    finally:
        for name in registered:
            try:
                con.unregister(name)
            except duckdb.Error:
                pass


def _altair_bundle(chart):
    """An Altair chart's display: its spec when the renderer is still Altair's default."""
    import altair as alt

    if alt.renderers.active != "default":
        return chart._repr_mimebundle_()
    with alt.renderers.enable("mimetype"):
        return chart._repr_mimebundle_()


def _install():
    ip = get_ipython()
    if ip is None:
        return
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    class TableFormatter(BaseFormatter):
        format_type = Unicode(TABLE_MIME)
        print_method = ObjectName("_repr_nbplat_table_")
        _return_type = (dict,)

    formatter = TableFormatter(parent=ip.display_formatter)
    # pandas 3 names its classes' module `pandas`; earlier versions, where they are defined.
    for module in ("pandas", "pandas.core.frame", "pandas.core.series"):
        formatter.for_type_by_name(module, "DataFrame", table_output)
        formatter.for_type_by_name(module, "Series", table_output)
    ip.display_formatter.formatters[TABLE_MIME] = formatter
    # Every Altair chart class derives from TopLevelMixin; Altair is imported only if a cell does.
    for version in ("v5", "v6"):
        ip.display_formatter.mimebundle_formatter.for_type_by_name(
            f"altair.vegalite.{version}.api", "TopLevelMixin", _altair_bundle
        )
    kernel = getattr(ip, "kernel", None)
    if kernel is not None:
        kernel.shell_handlers["nbplat_request"] = _on_request


_module = type(sys)("_nbplat")
_module.__dict__.update({k: v for k, v in globals().items() if not k.startswith("__")})
_module.__doc__ = "The notebook platform's kernel helper (tables, SQL cells)."
sys.modules["_nbplat"] = _module
_install()
