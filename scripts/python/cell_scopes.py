"""What Python itself says a notebook cell defines and references.

Reads a JSON list of cell sources on stdin and writes a JSON list of
{"defs": [...], "refs": [...], "star_import": bool, "error": bool} on stdout.

The rules (docs/reactivity.md) in terms of Python's own `symtable` and `ast`:
- defs: names bound in the cell's global scope (assigned, annotated, deleted, imported,
  bound by def/class/for/with/except/match/walrus), including names declared `global`
  and bound in nested scopes;
- refs: names read from the global scope, anywhere in the cell (nested functions, classes,
  lambdas and comprehensions included), where an augmented assignment `x += 1` both reads
  and binds `x`;
- names starting with `_` are local to their cell and builtins are not dependencies.
"""

import ast
import builtins
import json
import symtable
import sys

BUILTINS = set(dir(builtins))


class AugToPlain(ast.NodeTransformer):
    """`x += v` becomes `x = x + v`: symtable records the augmented target as a store only,
    but the statement reads it first."""

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        if isinstance(node.target, ast.Name):
            load = ast.Name(id=node.target.id, ctx=ast.Load())
            return ast.Assign(
                targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                value=ast.BinOp(left=load, op=node.op, right=node.value),
                lineno=node.lineno,
            )
        return node


class TopLevelAwait(ast.NodeTransformer):
    """IPython runs cells with top-level `await`; `symtable` compiles without that flag, so
    awaits become their operand and async loops plain ones (scopes do not change)."""

    def visit_Await(self, node):
        self.generic_visit(node)
        return node.value

    def visit_AsyncFor(self, node):
        self.generic_visit(node)
        return ast.For(**{f: getattr(node, f) for f in node._fields}, lineno=node.lineno)

    def visit_AsyncWith(self, node):
        self.generic_visit(node)
        return ast.With(**{f: getattr(node, f) for f in node._fields}, lineno=node.lineno)

    def visit_AsyncFunctionDef(self, node):
        return node  # inside, await is legal already


def without_magics(source):
    """IPython line magics and shell escapes (`%time`, `!ls`) become blank lines."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def analyse(source):
    source = without_magics(source)
    try:
        tree = compile(source, "<cell>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return {"defs": [], "refs": [], "star_import": False, "error": True}
    star = any(
        isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
        for n in ast.walk(tree)
    )
    tree = TopLevelAwait().visit(AugToPlain().visit(tree))
    plain = ast.unparse(ast.fix_missing_locations(tree))
    try:
        top = symtable.symtable(plain, "<cell>", "exec")
    except SyntaxError:
        # Scoping errors (e.g. nonlocal at module level) are errors too.
        return {"defs": [], "refs": [], "star_import": star, "error": True}
    defs, refs = set(), set()
    stack = [top]
    while stack:
        table = stack.pop()
        module = table.get_type() == "module"
        for s in table.get_symbols():
            name = s.get_name()
            if name.startswith("_"):
                continue
            global_here = module or s.is_global()
            if global_here and (s.is_assigned() or s.is_imported()):
                if not (module and s.is_declared_global() and not s.is_assigned()):
                    defs.add(name)
            if global_here and s.is_referenced() and name not in BUILTINS:
                refs.add(name)
        stack.extend(table.get_children())
    if star:
        defs.discard("*")
    return {"defs": sorted(defs), "refs": sorted(refs), "star_import": star, "error": False}


def main():
    cells = json.load(sys.stdin)
    json.dump([analyse(c) for c in cells], sys.stdout)


if __name__ == "__main__":
    main()
