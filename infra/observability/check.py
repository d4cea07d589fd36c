"""Does every metric the dashboard, the alert rules and the CloudWatch alarms name exist?

Two halves:

- :func:`referenced_metrics` (pure): every metric the Grafana dashboard
  (grafana/pinksea.json), the Prometheus rules (prometheus/alerts.yml and the input series of
  their unit tests, alerts_test.yml) and the CloudWatch alarms of the Terraform name, with the
  label names their selectors match on, minus the metrics of exporters that are not ours
  (:data:`NOT_OURS_PREFIXES`, :data:`NOT_OURS_NAMES`, :data:`NOT_OURS_NAMESPACE_PREFIX`).
- :func:`check_emitted`: scrapes ``/metrics`` of the running processes and compares
  (:func:`compare`, pure). A name no process declares is *missing*; one that is declared but
  has no sample yet (a labelled counter before its first event, a GPU gauge on a CPU worker)
  is *without samples*, reported apart, for the caller to judge. CloudWatch alarms on our own
  namespace are compared with the data ``pinksea lag-metric`` publishes (``--dry-run`` prints
  it), names and dimension keys both, since CloudWatch matches an alarm to a metric only on
  the exact dimension set.

``tests/e2e/test_metrics_emitted.py`` runs it against every process of a real stack; the
production rehearsal calls :func:`check_emitted` with its own processes' URLs.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "infra" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "pinksea.json"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
ALERTS_TEST = OBSERVABILITY / "prometheus" / "alerts_test.yml"
TERRAFORM = ROOT / "infra" / "terraform"

#: Metrics of other software, by name prefix: not checked against our processes.
NOT_OURS_PREFIXES: Mapping[str, str] = {
    "pg_": "postgres_exporter",
    "redis_": "redis_exporter",
    "aws_": "YACE, CloudWatch metrics exported to Prometheus",
    "process_": "prometheus_client's process collector",
    "python_": "prometheus_client's platform and GC collectors",
}
#: Single metrics of other software.
NOT_OURS_NAMES: Mapping[str, str] = {"up": "Prometheus, per scrape target"}
#: CloudWatch namespaces of AWS's own services.
NOT_OURS_NAMESPACE_PREFIX = "AWS/"
#: Labels Prometheus attaches to every scraped series (target labels), not the process.
TARGET_LABELS = frozenset({"job", "instance", "__name__"})


def not_ours(name: str) -> str | None:
    """Who emits ``name`` when it is not one of our processes, else None."""
    if name in NOT_OURS_NAMES:
        return NOT_OURS_NAMES[name]
    return next((who for p, who in NOT_OURS_PREFIXES.items() if name.startswith(p)), None)


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One series selector: the sample name as written (``x_bucket``, ``y_total``)."""

    name: str
    labels: frozenset[str]  # label names its matchers use
    source: str  # e.g. "grafana: GPU memory", "alerts.yml: PinkseaConsumerLagHigh"


@dataclass(frozen=True)
class CloudWatchReference:
    namespace: str  # resolved from the Terraform's locals, variables and module outputs
    metric_name: str
    dimensions: frozenset[str]  # dimension names (CloudWatch matches the exact set)
    source: str  # e.g. "terraform: compute aws_cloudwatch_metric_alarm.gpu_lag_over_10"


@dataclass
class References:
    prometheus: list[Reference] = field(default_factory=list)
    cloudwatch: list[CloudWatchReference] = field(default_factory=list)

    def names(self) -> set[str]:
        return {r.name for r in self.prometheus}


_AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
_LABEL_LIST_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
_KEYWORDS = frozenset(
    ["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"]
)
_NUMBER = re.compile(r"(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*")


def _skip_string(expr: str, i: int) -> int:
    """Index just past the string literal starting at ``expr[i]``."""
    quote, i = expr[i], i + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _matchers(expr: str, i: int) -> tuple[frozenset[str], int]:
    """Label names of the matcher block starting at ``expr[i] == "{"``, and the index past it."""
    names: set[str] = set()
    i += 1
    while i < len(expr):
        if expr[i] == "}":
            return frozenset(names), i + 1
        m = _MATCHER.match(expr, i)
        if m:
            names.add(m.group(1))
            i = m.end()
            if i < len(expr) and expr[i] in "\"'`":
                i = _skip_string(expr, i)
            continue
        i += 1  # commas, spaces
    raise ValueError(f"unclosed label matchers in {expr!r}")


def _next_char(expr: str, i: int) -> tuple[str, int]:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return (expr[i] if i < len(expr) else ""), i


def _skip_parens(expr: str, i: int) -> int:
    depth = 0
    while i < len(expr):
        if expr[i] == "(":
            depth += 1
        elif expr[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def promql_selectors(expr: str) -> Iterator[tuple[str, frozenset[str]]]:
    """(metric name, label names matched) of every selector in a PromQL expression (Grafana's
    ``$variables`` removed first). Functions, aggregations, keywords, the label lists of
    ``by``/``without``/``on``/``ignoring``/``group_*``, strings, numbers and durations are
    not metrics; a selector may also be written with braces alone (``{__name__="x"}``)."""
    expr = _GRAFANA_VARIABLE.sub("5m", expr)
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "#":  # a comment runs to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c == "[":  # a range or subquery: durations only
            i = expr.index("]", i) + 1
        elif c == "{":  # matchers without a name
            _, i = _matchers(expr, i)
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            m = _NUMBER.match(expr, i)
            i = m.end() if m and m.end() > i else i + 1
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            assert m is not None
            word, i = m.group(0), m.end()
            following, j = _next_char(expr, i)
            if word in _LABEL_LIST_KEYWORDS:
                if following == "(":
                    i = _skip_parens(expr, j)
            elif word in _AGGREGATIONS or word in _KEYWORDS or following == "(":
                continue  # a function, an aggregation or an operator
            elif following == "{":
                labels, i = _matchers(expr, j)
                yield word, labels
            else:
                yield word, frozenset()
        else:
            i += 1


def _dashboard_exprs(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))  # a collapsed row holds its panels

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"grafana: {panel.get('title', panel.get('id'))}", target["expr"]


def _rule_exprs(rules: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            yield f"alerts.yml: {rule.get('alert') or rule.get('record')}", rule["expr"]


def _rule_test_series(rule_tests: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for n, case in enumerate(rule_tests.get("tests", []), 1):
        for series in case.get("input_series", []):
            yield f"alerts_test.yml: test {n}", series["series"]
        for test in case.get("promql_expr_test", []):
            yield f"alerts_test.yml: test {n}", test["expr"]


# --- Terraform ---------------------------------------------------------------------------------


def _module_of(path: str) -> str:
    parts = Path(path).parts
    return parts[1] if parts[0] == "modules" else "root"


def _blocks(docs: Mapping[str, Mapping[str, Any]], kind: str, module: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path, doc in docs.items():
        if _module_of(path) != module:
            continue
        for item in doc.get(kind, []):
            merged.update(item)
    return merged


_INTERPOLATION = re.compile(r"^\$\{(local|var|module)\.([\w-]+)(?:\.([\w-]+))?\}$")


def _resolve(docs: Mapping[str, Mapping[str, Any]], module: str, value: Any, depth: int = 0) -> Any:
    """A string value of module ``module``, through locals, module variables (the root's
    module call) and module outputs; unresolvable values come back as written."""
    m = _INTERPOLATION.match(value) if isinstance(value, str) else None
    if m is None or depth > 8:
        return value
    kind, name, attribute = m.groups()
    if kind == "local":
        found = _blocks(docs, "locals", module)
        return _resolve(docs, module, found[name], depth + 1) if name in found else value
    if kind == "var":
        if module != "root":
            for call in _blocks(docs, "module", "root").values():
                if Path(str(call.get("source", ""))).name == module and name in call:
                    return _resolve(docs, "root", call[name], depth + 1)
        default = _blocks(docs, "variable", module).get(name, {}).get("default")
        return value if default is None else default
    calls = _blocks(docs, "module", "root")
    source = Path(str(calls.get(name, {}).get("source", ""))).name
    output = _blocks(docs, "output", source).get(attribute or "", {})
    return _resolve(docs, source, output["value"], depth + 1) if "value" in output else value


def _alarm_metrics(body: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if body.get("metric_name"):
        yield body
    for query in body.get("metric_query", []):
        yield from query.get("metric", [])


def cloudwatch_references(
    terraform: Mapping[str, Mapping[str, Any]],
) -> list[CloudWatchReference]:
    """Every metric of every ``aws_cloudwatch_metric_alarm`` in ``terraform`` (path relative
    to infra/terraform -> parsed and unquoted .tf document), AWS's own namespaces included."""
    out = []
    for path, doc in sorted(terraform.items()):
        module = _module_of(path)
        for item in doc.get("resource", []):
            for name, body in item.get("aws_cloudwatch_metric_alarm", {}).items():
                for metric in _alarm_metrics(body):
                    out.append(
                        CloudWatchReference(
                            namespace=str(_resolve(terraform, module, metric.get("namespace"))),
                            metric_name=str(metric["metric_name"]),
                            dimensions=frozenset(metric.get("dimensions") or {}),
                            source=f"terraform: {module} aws_cloudwatch_metric_alarm.{name}",
                        )
                    )
    return out


def referenced_metrics(
    dashboard: Mapping[str, Any],
    rules: Mapping[str, Any],
    rule_tests: Mapping[str, Any] | None,
    terraform: Mapping[str, Mapping[str, Any]],
) -> References:
    """Every metric of ours the four documents name (already parsed; see
    :func:`load_references`): Prometheus selectors with their label names, and CloudWatch
    alarm metrics outside AWS's own namespaces."""
    refs = References()
    exprs = [*_dashboard_exprs(dashboard), *_rule_exprs(rules)]
    exprs += list(_rule_test_series(rule_tests or {}))
    for source, expr in exprs:
        for name, labels in promql_selectors(expr):
            if not_ours(name) is None:
                refs.prometheus.append(Reference(name, labels, source))
    refs.cloudwatch = [
        r
        for r in cloudwatch_references(terraform)
        if not r.namespace.startswith(NOT_OURS_NAMESPACE_PREFIX)
    ]
    return refs


def _unquote(value: Any) -> Any:
    """python-hcl2 (>= 5) keeps the quotes of strings and block labels: drop them."""
    if isinstance(value, dict):
        return {
            _unquote(k): _unquote(v)
            for k, v in value.items()
            if k not in ("__comments__", "__is_block__")
        }
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_terraform(terraform_dir: Path = TERRAFORM) -> dict[str, dict[str, Any]]:
    import hcl2  # python-hcl2, a dev dependency

    docs = {}
    for path in sorted(terraform_dir.rglob("*.tf")):
        if ".terraform" not in path.parts:
            with path.open() as f:
                docs[str(path.relative_to(terraform_dir))] = _unquote(hcl2.load(f))
    return docs


def load_references(root: Path = ROOT) -> References:
    """:func:`referenced_metrics` of the repository's own files."""
    import yaml  # pyyaml, a dev dependency

    observability = root / "infra" / "observability"
    return referenced_metrics(
        json.loads((observability / "grafana" / "pinksea.json").read_text()),
        yaml.safe_load((observability / "prometheus" / "alerts.yml").read_text()),
        yaml.safe_load((observability / "prometheus" / "alerts_test.yml").read_text()),
        load_terraform(root / "infra" / "terraform"),
    )


# --------------------------------------------------------------------------------------------
# What the processes emit
# --------------------------------------------------------------------------------------------

_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


@dataclass
class Emitted:
    """What the scraped processes expose."""

    #: sample name -> process -> label names seen on its samples
    samples: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    #: every sample name a declared family can have -> processes declaring it
    declared: dict[str, set[str]] = field(default_factory=dict)

    def add(self, process: str, exposition: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(exposition):
            for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)):
                self.declared.setdefault(family.name + suffix, set()).add(process)
            for sample in family.samples:
                labels = self.samples.setdefault(sample.name, {}).setdefault(process, set())
                labels.update(sample.labels)


def emitted(expositions: Mapping[str, str]) -> Emitted:
    """process name -> its ``/metrics`` text."""
    out = Emitted()
    for process, text in expositions.items():
        out.add(process, text)
    return out


def scrape(urls: Mapping[str, str], timeout_s: float = 10.0) -> dict[str, str]:
    """process name -> ``/metrics`` URL  =>  process name -> exposition text."""
    from urllib.request import urlopen

    out = {}
    for process, url in urls.items():
        try:
            with urlopen(url, timeout=timeout_s) as response:  # operator-given URLs
                out[process] = response.read().decode()
        except OSError as e:
            raise RuntimeError(f"{process}: {url} did not answer: {e}") from e
    return out


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    #: referenced, declared by no process: name -> where it is referenced
    missing: dict[str, list[str]] = field(default_factory=dict)
    #: declared, but no process has a sample of it yet: name -> declaring processes
    without_samples: dict[str, list[str]] = field(default_factory=dict)
    #: a selector matches on a label no sample has: "name{label}" -> where
    missing_labels: dict[str, list[str]] = field(default_factory=dict)
    #: CloudWatch alarm metrics the lag publisher does not publish: description -> where
    cloudwatch_missing: dict[str, list[str]] = field(default_factory=dict)
    cloudwatch_checked: bool = False
    #: referenced name -> processes with samples of it
    emitted_by: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.missing_labels or self.cloudwatch_missing)

    def summary(self) -> str:
        lines = []
        for title, found in (
            ("named but emitted by no process", self.missing),
            ("matched on labels no sample has", self.missing_labels),
            ("CloudWatch alarm metrics nobody publishes", self.cloudwatch_missing),
            ("declared, no sample yet", self.without_samples),
        ):
            if found:
                lines.append(f"{title}:")
                lines += [f"  {k}  ({', '.join(sorted(set(v)))})" for k, v in sorted(found.items())]
        if not self.cloudwatch_checked:
            lines.append("CloudWatch alarms: not checked (no lag-metric data given)")
        return "\n".join(lines) or "every referenced metric is emitted"


def compare(
    refs: References,
    found: Emitted,
    cloudwatch_data: Sequence[Mapping[str, Any]] | None = None,
    cloudwatch_namespace: str | None = None,
) -> CheckResult:
    """``cloudwatch_data``: the ``MetricData`` items the lag publisher sends to
    ``cloudwatch_namespace`` (``pinksea lag-metric --once --dry-run`` prints them); None:
    the CloudWatch alarms are not checked."""
    result = CheckResult()
    where: dict[str, list[str]] = defaultdict(list)
    labels_used: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ref in refs.prometheus:
        where[ref.name].append(ref.source)
        for label in ref.labels - TARGET_LABELS:
            labels_used[(ref.name, label)].append(ref.source)
    for name, sources in sorted(where.items()):
        processes = found.samples.get(name, {})
        if processes:
            result.emitted_by[name] = sorted(processes)
        elif name in found.declared:
            result.without_samples[name] = sorted(found.declared[name])
        else:
            result.missing[name] = sources
    for (name, label), sources in sorted(labels_used.items()):
        processes = found.samples.get(name, {})
        if processes and not any(label in seen for seen in processes.values()):
            result.missing_labels[f"{name}{{{label}}}"] = sources
    if cloudwatch_data is not None:
        result.cloudwatch_checked = True
        published = {
            (str(d["MetricName"]), frozenset(x["Name"] for x in d.get("Dimensions", [])))
            for d in cloudwatch_data
        }
        for alarm in refs.cloudwatch:
            if alarm.namespace != cloudwatch_namespace:
                key = f"namespace {alarm.namespace} (the publisher writes {cloudwatch_namespace})"
            elif (alarm.metric_name, alarm.dimensions) not in published:
                key = f"{alarm.metric_name} {{{', '.join(sorted(alarm.dimensions))}}}"
            else:
                continue
            result.cloudwatch_missing.setdefault(key, []).append(alarm.source)
    return result


def check_emitted(
    metrics_urls: Mapping[str, str],
    *,
    cloudwatch_data: Sequence[Mapping[str, Any]] | None = None,
    cloudwatch_namespace: str = "Pinksea/Kafka",
    root: Path = ROOT,
    timeout_s: float = 10.0,
) -> CheckResult:
    """Scrape ``metrics_urls`` (process name -> ``/metrics`` URL) and compare with what the
    dashboard, the rules and the alarms under ``root`` name. ``result.ok`` is False when a
    referenced metric is declared by no process, a selector matches on a label no sample
    has, or (with ``cloudwatch_data``) an alarm names a metric the lag publisher does not
    publish; ``result.summary()`` lists them, and the names without samples yet."""
    return compare(
        load_references(root),
        emitted(scrape(metrics_urls, timeout_s)),
        cloudwatch_data,
        cloudwatch_namespace,
    )
