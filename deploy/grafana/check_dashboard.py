#!/usr/bin/env python3
"""Checks deploy/grafana/dashboards/*.json (standard library only).

- every dashboard parses as JSON and has a uid and a title;
- every panel queries the provisioned datasource (by uid);
- every metric named in a panel or variable query is one Circle exposes
  (a typo'd name draws an empty panel, which nobody notices until an incident);
- every metric Circle exposes appears on some panel.

With --promql-out FILE it also writes every expression as a recording rule, so
`promtool check rules FILE` can check that the PromQL parses.
"""

import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent

# The metrics Circle exposes (services/src/metrics.rs). Histograms are queried by
# their _bucket, _sum and _count series.
COUNTERS_AND_GAUGES = {
    "circle_http_requests_total",
    "circle_commands_total",
    "circle_events_appended_total",
    "circle_appender_queue_depth",
    "circle_projection_position",
    "circle_projection_lag_events",
    "circle_projection_last_event_age_seconds",
    "circle_projection_failures_total",
    "circle_projection_checkpoint_age_seconds",
    "circle_leader",
    "circle_task_up",
    "circle_aggregate_cache_total",
    "circle_build_info",
}
HISTOGRAMS = {
    "circle_http_request_duration_seconds",
    "circle_command_duration_seconds",
    "circle_store_append_duration_seconds",
    "circle_store_append_batch_size",
}
# The process collector of the prometheus crate, registered with prefix "circle".
PROCESS = {
    "circle_process_cpu_seconds_total",
    "circle_process_open_fds",
    "circle_process_max_fds",
    "circle_process_virtual_memory_bytes",
    "circle_process_resident_memory_bytes",
    "circle_process_start_time_seconds",
    "circle_process_threads",
}
KNOWN = (
    COUNTERS_AND_GAUGES
    | PROCESS
    | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)
# Must each appear on some panel; of the process metrics, memory is what matters
# against the 512Mi limit.
MUST_SHOW = COUNTERS_AND_GAUGES | HISTOGRAMS | {"circle_process_resident_memory_bytes"}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Not inside a number or duration: the "m" of 5m, the "e3" of 1e3.
IDENT = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*")


def metric_names(expr):
    """Metric names in a PromQL expression (also Grafana's label_values(...))."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    # Label lists: by (...), without (...), on (...), ignoring (...), group_x (...).
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    # label_values(metric, label): the label is not a metric.
    text = re.sub(r"(label_values\s*\(\s*[\w:]+)\s*,\s*\w+\s*\)", r"\1)", text)
    names = set()
    for match in IDENT.finditer(text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function or aggregation, or an operator keyword
        names.add(word)
    return names


def self_test():
    """The extractor must find names it is meant to find, or the check is blind."""
    cases = {
        'sum by (le) (rate(a_bucket{x="b c"}[5m]))': {"a_bucket"},
        "histogram_quantile(0.99, sum(rate(b[$__rate_interval])) by (le, route))": {"b"},
        "x / on (instance) group_left (version) y and z offset 5m": {"x", "y", "z"},
        "label_values(circle_build_info, instance)": {"circle_build_info"},
    }
    for expr, expected in cases.items():
        got = metric_names(expr)
        assert got == expected, f"extractor: {expr!r} gave {got}, expected {expected}"


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # rows nest their panels


def datasource_uid():
    text = (HERE / "provisioning/datasources/prometheus.yml").read_text()
    match = re.search(r"^\s*uid:\s*(\S+)\s*$", text, re.M)
    assert match, "provisioning/datasources/prometheus.yml names no uid"
    return match.group(1)


def check(path, uid, errors, expressions):
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        errors.append(f"{path}: not JSON: {error}")
        return set()
    for key in ("uid", "title", "panels"):
        if key not in dashboard:
            errors.append(f"{path}: no {key}")
    used = set()
    ids = []
    for panel in panels(dashboard.get("panels", [])):
        ids.append(panel.get("id"))
        where = f"{path.name}: panel {panel.get('title')!r}"
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != uid:
            errors.append(f"{where}: datasource is not uid {uid!r}")
        targets = panel.get("targets", [])
        if not targets:
            errors.append(f"{where}: no query")
        for target in targets:
            expr = target.get("expr", "")
            if not expr:
                errors.append(f"{where}: target {target.get('refId')} has no expr")
            expressions.append(expr)
            used |= metric_names(expr)
    if len(ids) != len(set(ids)):
        errors.append(f"{path.name}: panel ids are not unique")
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query", "")
        query = query.get("query", "") if isinstance(query, dict) else query
        used |= metric_names(query)
    for name in sorted(used - KNOWN):
        errors.append(f"{path.name}: {name} is not a metric Circle exposes")
    return used


def main(argv):
    self_test()
    uid = datasource_uid()
    errors, expressions, used = [], [], set()
    files = sorted((HERE / "dashboards").glob("*.json"))
    if not files:
        errors.append("no dashboards in deploy/grafana/dashboards")
    for path in files:
        used |= check(path, uid, errors, expressions)
    shown = {n.removesuffix(s) for n in used for s in ("_bucket", "_sum", "_count", "") if n.endswith(s)}
    for name in sorted(MUST_SHOW - shown):
        errors.append(f"no panel shows {name}")
    if len(argv) == 3 and argv[1] == "--promql-out":
        write_rules(pathlib.Path(argv[2]), expressions)
    for error in errors:
        print("error:", error, file=sys.stderr)
    if errors:
        return 1
    print(f"{len(files)} dashboard(s), {len(expressions)} queries, {len(used)} metric names: all exposed by Circle")
    return 0


def write_rules(path, expressions):
    """Expressions as recording rules, Grafana's variables replaced, for promtool."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, expr in enumerate(expressions):
        expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        lines += [f"      - record: dashboard:query_{number}", f"        expr: {json.dumps(expr)}"]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
