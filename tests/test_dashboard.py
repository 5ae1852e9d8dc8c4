"""The Grafana dashboard queries only metrics that a running ext_authz and a running translator export (names
and types here, from freshly started processes; labels too in tests/e2e/test_usage.py, after real traffic)."""

from __future__ import annotations

import pytest

from tests import dashboard
from tests.support.procs import Proc, base_env, free_port, script


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dashboard.Exported:
    grpc_port, authz_http, translator_port = free_port(), free_port(), free_port()
    authz = Proc([script("keyrelay-ext-authz"), "--grpc-addr", f"127.0.0.1:{grpc_port}", "--http-addr",
                  f"127.0.0.1:{authz_http}"], base_env(), name="ext_authz")
    translator = Proc([script("keyrelay-translator"), "--host", "127.0.0.1", "--port", str(translator_port)],
                      base_env(OPENAI_API_KEY="sk-unused-static-key"), name="translator")
    try:
        authz.wait_ready(60)
        translator.wait_ready(60)
        out = dashboard.Exported()
        out.add(dashboard.fetch_metrics(f"http://127.0.0.1:{authz_http}/metrics"))
        out.add(dashboard.fetch_metrics(f"http://127.0.0.1:{translator_port}/metrics"))
        yield out
    finally:
        authz.stop()
        translator.stop()


def test_every_queried_metric_is_exported(exported):
    board = dashboard.load()
    assert dashboard.problems(board, exported, check_labels=False) == []
    used = set().union(*(dashboard.series_names(e) for e in dashboard.expressions(board)))
    # The picture the dashboard is for: tokens and requests per tenant and model, denials, time to first token.
    for name in ("keyrelay_translator_tokens_total", "keyrelay_translator_tenant_requests_total",
                 "keyrelay_translator_time_to_first_token_seconds_bucket", "keyrelay_ext_authz_decisions_total"):
        assert name in used, name


def test_a_misspelt_metric_is_caught(exported):
    board = {"panels": [{"targets": [{"expr": "sum(rate(keyrelay_translator_token_total[5m]))"}]}],
             "templating": {"list": []}}
    assert dashboard.problems(board, exported, check_labels=False) == [
        "keyrelay_translator_token_total: not exported (in sum(rate(keyrelay_translator_token_total[5m])))"]


def test_a_wrong_suffix_is_caught(exported):
    # A histogram queried as a counter, a counter as a histogram.
    for expr in ("rate(keyrelay_translator_time_to_first_token_seconds_total[5m])",
                 "rate(keyrelay_translator_tokens_bucket[5m])"):
        board = {"panels": [{"targets": [{"expr": expr}]}], "templating": {"list": []}}
        assert len(dashboard.problems(board, exported, check_labels=False)) == 1, expr


def test_label_extraction():
    expr = ('sum by (tenant, kind) (rate(keyrelay_translator_tokens_total{kind!="reasoning", model=~"$m"}[1m])) / '
            'histogram_quantile(0.5, sum by (le, model) (rate(keyrelay_translator_time_to_first_token_seconds_bucket[1m])))')
    assert dashboard.labels_used(expr) == {
        "keyrelay_translator_tokens_total": {"tenant", "kind", "model"},
        "keyrelay_translator_time_to_first_token_seconds_bucket": {"model"},
    }


def test_dashboard_shape():
    board = dashboard.load()
    assert board["uid"] == "keyrelay-usage" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "tenant", "model"} <= names
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
