"""What the Grafana dashboard (k8s/observability/grafana-dashboard.json) queries, for the tests that check it
against the metrics the running services really export."""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "k8s" / "observability" / "grafana-dashboard.json"

_METRIC = re.compile(r"\b(keyrelay_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"(keyrelay_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
_SUFFIXES = {"_total": ("counter",), "_bucket": ("histogram",), "_sum": ("histogram", "summary"),
             "_count": ("histogram", "summary")}


@dataclass
class Exported:
    """Metric families of one or more /metrics pages: type and the label names seen on samples."""

    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            seen = self.labels.setdefault(fam.name, set())
            for s in fam.samples:
                seen.update(k for k in s.labels if k not in ("le", "quantile"))

    def family(self, series: str) -> str | None:
        """The exported family a series name belongs to (`x_total` -> counter `x`, `x_bucket` -> histogram `x`)."""
        if series in self.types and self.types[series] in ("gauge", "untyped", "unknown"):
            return series
        for suffix, kinds in _SUFFIXES.items():
            base = series[: -len(suffix)]
            if series.endswith(suffix) and self.types.get(base) in kinds:
                return base
        return None


def fetch_metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def expressions(dashboard: dict) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append(target["expr"])
    for var in dashboard["templating"]["list"]:
        if var.get("type") == "query":
            out.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return out


def series_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def labels_used(expr: str) -> dict[str, set[str]]:
    """Series name -> label names the expression filters or groups that series by."""
    out: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(expr):
        out.setdefault(name, set()).update(_MATCHER.findall(matchers))
    for group, inner in _BY.findall(expr):
        names = {g.strip() for g in group.split(",") if g.strip()} - {"le"}
        for name in _METRIC.findall(inner):
            out.setdefault(name, set()).update(names)
    for name, label in re.findall(r"label_values\((keyrelay_[a-z0-9_]+),\s*([a-zA-Z_]+)\)", expr):
        out.setdefault(name, set()).add(label)
    return out


def problems(dashboard: dict, exported: Exported, *, check_labels: bool) -> list[str]:
    """Every query of the dashboard whose series (or, with `check_labels`, labels) the services do not export."""
    found = []
    for expr in expressions(dashboard):
        for series in series_names(expr):
            fam = exported.family(series)
            if fam is None:
                found.append(f"{series}: not exported (in {expr})")
                continue
            if check_labels:
                missing = labels_used(expr).get(series, set()) - exported.labels.get(fam, set())
                if missing:
                    found.append(f"{series}: no label {sorted(missing)} (in {expr})")
    return found
