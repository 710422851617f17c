"""Checks of the operators' files (run by scripts/test-ops.sh).

    check.py dashboards PROMTOOL DASHBOARD.json...
        Every dashboard parses, has the datasource and namespace variables (and plan, but for
        the gateway's, which has no plans), and every panel (rows aside) has at least one target
        with a PromQL expression and a unit; every expression is valid PromQL (promtool checks
        it, Grafana's variables substituted).

    check.py manifests GRAFANA_BUILD.yaml PROMETHEUS_BUILD.yaml RULES.yaml DASHBOARD.json...
        What `kustomize build` made of deploy/grafana and deploy/prometheus: a ConfigMap labelled
        for Grafana's dashboard sidecar holding every dashboard unchanged, and a PrometheusRule
        whose spec is exactly the rules file.

    check.py capacity GATEWAY.yaml RULES.yaml
        GatewayNearCapacity's numbers (replicas x connections each, and its description) are the
        gateway autoscaler's maxReplicas and connections target in deploy/base/gateway.yaml:
        PromQL cannot read them, so they are written twice and must agree.

    check.py metrics --docs docs/metrics.md --rules RULES.yaml --event-only NAME,...
                     [--not-running COMPONENT]... --scrape FILE... DASHBOARD.json...
        Every metric name a dashboard or rule uses is declared in docs/metrics.md and present in
        the live scrapes (a histogram by its _bucket, _sum and _count series); names that only
        appear after a rare event (--event-only) may be missing from the scrapes, and are
        listed. Recorded series (names with a colon) must be recorded by the rules file.
        Names of a component that does not run in this check (--not-running gateway: names
        gateway_*) are checked against docs/metrics.md only, and listed; while the docs declare
        none of its names at all, they are listed as unchecked instead.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

NAME = re.compile(r'(?<![\w:"./-])((?:watchman|middleman|gateway)[a-zA-Z0-9_:]*)')
SUFFIXES = ("_bucket", "_sum", "_count")
# Dashboards of components without plans (the gateway serves every plan alike): no plan variable.
PLANLESS = {"gateway.json"}


def panels(dashboard):
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])  # a collapsed row's panels


def dashboard_exprs(path):
    with open(path) as f:
        d = json.load(f)
    return d, [(p, t["expr"]) for p in panels(d) if p.get("type") != "row" for t in p.get("targets", []) if t.get("expr")]


def grafana_to_promql(expr):
    """Grafana's variables replaced by values Prometheus accepts."""
    for var, value in (
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "6h"),
        ("${datasource}", "x"),
        ("$namespace", ".*"),
        ("$plan", ".*"),
    ):
        expr = expr.replace(var, value)
    return expr


def check_dashboards(args):
    problems = []
    exprs = []
    for path in args.dashboards:
        name = os.path.basename(path)
        try:
            d, pairs = dashboard_exprs(path)
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{name}: does not parse: {e}")
            continue
        for key in ("uid", "title", "schemaVersion", "panels", "templating"):
            if key not in d:
                problems.append(f"{name}: no {key}")
        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        for var in ("datasource", "namespace") + (() if name in PLANLESS else ("plan",)):
            if var not in variables:
                problems.append(f"{name}: no template variable {var}")
        if variables.get("datasource", {}).get("type") != "datasource":
            problems.append(f"{name}: the datasource variable is not of type datasource")
        count = 0
        for p in panels(d):
            if p.get("type") == "row":
                continue
            count += 1
            title = f"{name}: panel {p.get('title')!r}"
            targets = [t for t in p.get("targets", []) if t.get("expr", "").strip()]
            if not targets:
                problems.append(f"{title}: no target with an expression")
            unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
            if not unit:
                problems.append(f"{title}: no unit")
            if "$datasource" not in json.dumps(p.get("datasource")) and "${datasource}" not in json.dumps(p.get("datasource")):
                problems.append(f"{title}: does not use the datasource variable")
            for t in targets:
                if "${datasource}" not in json.dumps(t.get("datasource", {"uid": "${datasource}"})):
                    problems.append(f"{title}: target {t.get('refId')} does not use the datasource variable")
                exprs.append((title, t["expr"]))
        print(f"check: {name}: {count} panels")
    # Every expression through Prometheus' parser, as recording rules.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        rules = [{"record": f"dashboard:expr_{i}:check", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
    out = subprocess.run([args.promtool, "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if out.returncode != 0:
        problems.append("promtool rejects dashboard expressions:\n" + out.stdout + out.stderr)
    report(problems, f"{len(exprs)} dashboard expressions are valid PromQL, every panel has a query and a unit")


def check_manifests(args):
    problems = []
    with open(args.grafana) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    cms = [o for o in objs if o.get("kind") == "ConfigMap"]
    if len(cms) != 1:
        problems.append(f"deploy/grafana builds {len(cms)} ConfigMaps, expected 1")
    for cm in cms:
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            problems.append("the dashboards ConfigMap lacks the label grafana_dashboard: \"1\"")
        for path in args.dashboards:
            with open(path) as f:
                if json.loads(cm["data"].get(os.path.basename(path), "null")) != json.load(f):
                    problems.append(f"the ConfigMap does not hold {os.path.basename(path)} unchanged")
    with open(args.prometheus) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    rules = [o for o in objs if o.get("kind") == "PrometheusRule"]
    with open(args.rules) as f:
        plain = yaml.safe_load(f)
    if len(rules) != 1 or rules[0].get("apiVersion") != "monitoring.coreos.com/v1" or rules[0]["spec"] != plain:
        problems.append("deploy/prometheus does not build one PrometheusRule whose spec is rules.yaml")
    report(problems, "kustomize builds the dashboards ConfigMap and the PrometheusRule as expected")


def check_capacity(args):
    problems = []
    with open(args.gateway) as f:
        hpas = [o for o in yaml.safe_load_all(f) if o and o.get("kind") == "HorizontalPodAutoscaler"]
    if len(hpas) != 1:
        report([f"{args.gateway} has {len(hpas)} autoscalers, expected 1"], "")
    spec = hpas[0]["spec"]
    replicas = int(spec["maxReplicas"])
    targets = [
        int(m["pods"]["target"]["averageValue"])
        for m in spec.get("metrics", [])
        if m.get("type") == "Pods" and m["pods"]["metric"]["name"] == "gateway_connections_active"
    ]
    if len(targets) != 1:
        report([f"{args.gateway}'s autoscaler has no gateway_connections_active target"], "")
    target = targets[0]
    with open(args.rules) as f:
        rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if r.get("alert") == "GatewayNearCapacity"]
    if len(rules) != 1:
        report(["rules.yaml has no GatewayNearCapacity alert"], "")
    expr = " ".join(rules[0]["expr"].split())
    description = " ".join(rules[0]["annotations"]["description"].split())
    wanted = {
        "the fleet's ceiling in the expression": f"> 0.8 * {replicas} * {target}" in expr,
        "the per-replica target in the expression": f"> 1.2 * {target}" in expr,
        "the ceiling in the description": f"{replicas * target} WebSockets" in description,
        "replicas and target in the description": f"({replicas} replicas of {target})" in description,
        "the per-replica bound in the description": f"average over {round(1.2 * target)} each" in description,
    }
    for what, ok in wanted.items():
        if not ok:
            problems.append(
                f"GatewayNearCapacity disagrees with the autoscaler (maxReplicas {replicas}, "
                f"target {target} connections): {what}"
            )
    report(problems, f"GatewayNearCapacity matches the autoscaler ({replicas} replicas of {target} connections)")


def documented(path):
    """name -> type, from the tables of docs/metrics.md."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\|\s*`([a-z_:]+)`\s*\|\s*([a-z]+)", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def scraped(paths):
    """Sample names and the names of histograms, from Prometheus text exposition files."""
    samples, histograms = set(), set()
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split()[:4]
                    if kind == "histogram":
                        histograms.add(name)
                elif line and not line.startswith("#"):
                    samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, histograms


def rule_exprs(path):
    with open(path) as f:
        groups = yaml.safe_load(f)["groups"]
    recorded, exprs = set(), []
    for g in groups:
        for r in g["rules"]:
            if "record" in r:
                recorded.add(r["record"])
            exprs.append((f"rule {r.get('record') or r.get('alert')}", r["expr"]))
    return recorded, exprs


def check_metrics(args):
    docs = documented(args.docs)
    samples, histograms = scraped(args.scrape)
    recorded, exprs = rule_exprs(args.rules)
    for path in args.dashboards:
        exprs += [(f"{os.path.basename(path)}: {p.get('title')!r}", e) for p, e in dashboard_exprs(path)[1]]
    event_only = {n for n in args.event_only.split(",") if n}
    absent = tuple(f"{c}_" for c in args.not_running)
    undeclared_components = {p for p in absent if not any(n.startswith(p) for n in docs)}
    problems, waiting, used, unscraped, unchecked = [], set(), {}, set(), set()
    for where, expr in exprs:
        # Label values and strings are not metric names.
        bare = re.sub(r'"[^"]*"', '""', expr)
        for name in NAME.findall(bare):
            used.setdefault(name, where)
    for name, where in sorted(used.items()):
        if ":" in name:
            if name not in recorded:
                problems.append(f"{name} ({where}): not recorded by {args.rules}")
            continue
        base = name
        for s in SUFFIXES:
            if name.endswith(s) and docs.get(name[: -len(s)]) == "histogram":
                base = name[: -len(s)]
        if base.startswith(tuple(undeclared_components)):
            unchecked.add(name)
            continue
        if base not in docs:
            problems.append(f"{name} ({where}): not declared in {args.docs}")
            continue
        if base.startswith(absent):
            unscraped.add(base)
            continue
        if docs[base] == "histogram":
            present = base in histograms and all(base + s in samples for s in SUFFIXES)
        else:
            present = base in samples
        if not present:
            if base in event_only:
                waiting.add(base)
            else:
                problems.append(f"{name} ({where}): declared, but in no live scrape")
    unused = sorted(set(docs) - {n for n in used} - {n[: -len(s)] for n in used for s in SUFFIXES if n.endswith(s)})
    if unused:
        print(f"check: declared but used by no dashboard or rule: {', '.join(unused)}")
    for prefix in sorted(undeclared_components):
        names = sorted(n for n in unchecked if n.startswith(prefix))
        print(f"check: UNCHECKED: {args.docs} declares no {prefix}* metric yet; used but unchecked: {', '.join(names)}")
    if unscraped:
        print(f"check: declared, not scraped (no such process in this run): {', '.join(sorted(unscraped))}")
    for name in sorted(waiting):
        print(f"check: {name}: used, declared, absent from the scrapes until its event happens (allowed: --event-only)")
    for name in sorted(event_only - waiting):
        if name in samples or name in histograms:
            print(f"check: {name}: listed as event-only but present (pre-registered?): the list can shrink")
    report(problems, f"{len(used) - len(unchecked) - len(unscraped)} metric names used by dashboards and rules are declared and scraped")


def report(problems, ok):
    if problems:
        for p in problems:
            print(f"check: FAILED: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"check: {ok}")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dashboards")
    d.add_argument("promtool")
    d.add_argument("dashboards", nargs="+")
    k = sub.add_parser("manifests")
    k.add_argument("grafana")
    k.add_argument("prometheus")
    k.add_argument("rules")
    k.add_argument("dashboards", nargs="+")
    c = sub.add_parser("capacity")
    c.add_argument("gateway")
    c.add_argument("rules")
    m = sub.add_parser("metrics")
    m.add_argument("--docs", required=True)
    m.add_argument("--rules", required=True)
    m.add_argument("--event-only", default="")
    m.add_argument("--not-running", action="append", default=[], metavar="COMPONENT")
    m.add_argument("--scrape", action="append", required=True)
    m.add_argument("dashboards", nargs="+")
    args = parser.parse_args()
    {
        "dashboards": check_dashboards,
        "manifests": check_manifests,
        "capacity": check_capacity,
        "metrics": check_metrics,
    }[args.command](args)


if __name__ == "__main__":
    main()
