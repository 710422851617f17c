"""Field-by-field comparison of imported and exported notebooks, with nbformat's validator.

Reads a manifest (JSON list of {"original", "exported", "changes"}) and prints one JSON report:
{"compared": n, "valid": n, "differences": [...], "invalid_exports": [...]}.

Allowed differences, each one the import reports or docs/protocol.md documents:
- multi-line strings as lists or joined (nbformat's own `rejoin_lines` on both sides);
- nbformat_minor raised to 5 (cell ids are always written);
- cell ids that were missing, invalid or repeated (the import reports each);
- a cell without a source (invalid) gets an empty one (reported);
- metadata.kernelspec and metadata.language_info: the document's kernel is written (the
  imported language_info stays when the language is the same; a replaced kernel is reported).
"""

import json
import sys

import nbformat
from nbformat.v4.rwbase import rejoin_lines


def load(path):
    with open(path, encoding="utf-8") as f:
        return rejoin_lines(nbformat.from_dict(json.load(f)))


def diff(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append((f"{path}.{k}", "<missing>", b[k]))
            elif k not in b:
                out.append((f"{path}.{k}", a[k], "<missing>"))
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((f"{path}[len]", len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b or type(a) is not type(b) and not (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
    ):
        out.append((path, a, b))


def main():
    manifest = json.load(open(sys.argv[1], encoding="utf-8"))
    report = {"compared": 0, "valid": 0, "differences": [], "invalid_exports": []}
    for entry in manifest:
        original = load(entry["original"])
        exported = load(entry["exported"])
        report["compared"] += 1
        try:
            nbformat.validate(nbformat.from_dict(json.load(open(entry["original"], encoding="utf-8"))))
            valid = True
        except nbformat.ValidationError:
            valid = False
        if valid:
            report["valid"] += 1
            try:
                nbformat.validate(nbformat.from_dict(json.load(open(entry["exported"], encoding="utf-8"))))
            except nbformat.ValidationError as e:
                report["invalid_exports"].append({"notebook": entry["original"], "error": str(e)[:500]})
        ids_reported = any("id" in c for c in entry["changes"])
        for nb in (original, exported):
            nb.pop("nbformat_minor", None)
            nb.get("metadata", {}).pop("kernelspec", None)
        o_info = original.get("metadata", {}).get("language_info")
        e_info = exported.get("metadata", {}).pop("language_info", None)
        if o_info is not None and o_info.get("name") == "python":
            if o_info != e_info:
                report["differences"].append(
                    {"notebook": entry["original"], "path": "metadata.language_info", "original": o_info, "exported": e_info})
        original.get("metadata", {}).pop("language_info", None)
        if ids_reported:
            for cell in original.get("cells", []) + exported.get("cells", []):
                cell.pop("id", None)
        found = []
        diff(original, exported, "", found)
        for path, a, b in found:
            if path.endswith("].source") and a == "<missing>" and b == "" and any(
                c.startswith(f"cell {path[len('.cells['):-len('].source')]}: no source") for c in entry["changes"]
            ):
                continue
            report["differences"].append({"notebook": entry["original"], "path": path,
                                          "original": repr(a)[:200], "exported": repr(b)[:200]})
    json.dump(report, sys.stdout)


main()
