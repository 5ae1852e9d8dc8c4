"""Usage metrics: label values only from configuration (tenants list, configured target models), the tenant
setting, and what one observation adds to the exposition."""

from __future__ import annotations

import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from translator.metrics import MAX_MODEL_LABELS, UsageLabels, build_metrics
from translator.routing import Router, load_routes
from translator.settings import MAX_TENANTS, ConfigError, load_settings
from translator.usage import Usage


def samples(metrics, name: str) -> dict[tuple, float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


LABEL_CASES = [
    # configured tenants, configured models, tenant header, target model, (tenant label, model label)
    (["team-a"], ["gpt-4.1"], "team-a", "gpt-4.1", ("team-a", "gpt-4.1")),
    (["team-a"], ["gpt-4.1"], "team-b", "gpt-4.1", ("other", "gpt-4.1")),
    (["team-a"], ["gpt-4.1"], "", "gpt-4.1", ("none", "gpt-4.1")),
    (["team-a"], ["gpt-4.1"], None, "chosen-by-a-client", ("none", "other")),
    ([], [], "team-a", "gpt-4.1", ("other", "other")),
    (["team-a"], ["gpt-4.1"], "team-a\n", "gpt-4.1 ", ("other", "other")),
]


@pytest.mark.parametrize("tenants,models,tenant,model,expected", LABEL_CASES)
def test_label_values_come_only_from_configuration(tenants, models, tenant, model, expected):
    labels = UsageLabels(tenants, models)
    assert (labels.tenant(tenant), labels.model(model)) == expected


def test_model_labels_are_capped():
    labels = UsageLabels([], [f"m{i:04d}" for i in range(MAX_MODEL_LABELS + 50)])
    assert labels.max_series() == (2, MAX_MODEL_LABELS + 1)
    assert labels.model("m0000") == "m0000" and labels.model(f"m{MAX_MODEL_LABELS + 10:04d}") == "other"


def test_one_observation():
    m = build_metrics(UsageLabels(["team-a"], ["gpt-4.1"]))
    m.observe_usage("team-a", "gpt-4.1", 200, Usage(input=5, output=7, cache_read=3, reasoning=2), 0.42)
    m.observe_usage("team-a", "gpt-4.1", 200, Usage(input=1, output=1, estimated=True), None)
    m.observe_usage("intruder", "client-model", 502, None, None)
    assert samples(m, "keyrelay_translator_tokens_total") == {
        (("kind", "input"), ("model", "gpt-4.1"), ("tenant", "team-a")): 6.0,
        (("kind", "output"), ("model", "gpt-4.1"), ("tenant", "team-a")): 8.0,
        (("kind", "cache_read"), ("model", "gpt-4.1"), ("tenant", "team-a")): 3.0,
        (("kind", "reasoning"), ("model", "gpt-4.1"), ("tenant", "team-a")): 2.0,
    }
    assert samples(m, "keyrelay_translator_tenant_requests_total") == {
        (("model", "gpt-4.1"), ("status_class", "2xx"), ("tenant", "team-a")): 2.0,
        (("model", "other"), ("status_class", "5xx"), ("tenant", "other")): 1.0,
    }
    assert samples(m, "keyrelay_translator_usage_estimated_total") == {(("model", "gpt-4.1"),): 1.0}
    assert samples(m, "keyrelay_translator_time_to_first_token_seconds_count") == {(("model", "gpt-4.1"),): 1.0}


def test_many_clients_names_add_no_series():
    m = build_metrics(UsageLabels(["team-a"], ["gpt-4.1"]))
    for i in range(1000):
        m.observe_usage(f"tenant-{i}", f"model-{i}", 200 + (i % 4) * 100, Usage(input=1, output=1), 0.1)
    tokens = samples(m, "keyrelay_translator_tokens_total")
    requests = samples(m, "keyrelay_translator_tenant_requests_total")
    assert set(tokens) == {(("kind", k), ("model", "other"), ("tenant", "other")) for k in ("input", "output")}
    assert len(requests) == 4  # 2xx, 3xx, 4xx, 5xx
    assert len(samples(m, "keyrelay_translator_time_to_first_token_seconds_count")) == 1


TENANT_SETTINGS = [
    ({"TRANSLATOR_TENANTS": "team-a, team-b,,team-a"}, [], ("team-a", "team-b")),
    ({}, ["--tenants", "x@corp:dev/ops.1_"], ("x@corp:dev/ops.1_",)),
    ({}, [], ()),
]


@pytest.mark.parametrize("env,argv,expected", TENANT_SETTINGS)
def test_tenant_setting(env, argv, expected):
    s = load_settings(argv, env)
    assert s.tenants == expected
    assert load_settings([], s.to_env()).tenants == expected  # through the worker environment


@pytest.mark.parametrize("value,fragment", [
    ("team a", "letters, digits"),
    ("other", "reserved"),
    ("none", "reserved"),
    ("x" * 129, "1-128"),
    (",".join(f"t{i}" for i in range(MAX_TENANTS + 1)), f"at most {MAX_TENANTS}"),
])
def test_tenant_setting_errors(value, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings([], {"TRANSLATOR_TENANTS": value})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_configured_models(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(textwrap.dedent("""
        version: 1
        models: [claude-sonnet-4-5, claude-haiku-4-5, team-special]
        rules:
          - {match: "team-*", target: "litellm_proxy/team-model"}
          - {match: "claude-opus-*", target: "gemini/gemini-2.5-pro"}
    """))
    s = load_settings([], {"BIG_MODEL": "gpt-4.1", "SMALL_MODEL": "gpt-4.1-mini"})
    router = Router(s, load_routes(str(routes)))
    assert router.configured_models() == {"team-model", "gemini/gemini-2.5-pro", "gpt-4.1", "gpt-4.1-mini"}
    # PREFERRED_PROVIDER=anthropic passes listed Claude names through: those names are configuration too.
    anthropic = Router(load_settings([], {"PREFERRED_PROVIDER": "anthropic"}))
    assert "claude-sonnet-4-5" in anthropic.configured_models()
    assert anthropic.resolve("claude-made-up-by-a-client").model not in anthropic.configured_models()
