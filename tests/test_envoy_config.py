"""envoy.yaml: Envoy itself validates the committed file and rendered copies; the decisions the rest of the
project relies on (docs/interfaces.md, ARCHITECTURE.md) are pinned here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from keyrelay_stack.envoy_config import (ENVOY_YAML, EnvoyConfigError, EnvoyEndpoints, dump, envoy_argv, find_envoy,
                                         load_source, otlp_target, render, write_config)

REPO = Path(__file__).resolve().parents[1]
SOURCE = load_source()


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


def _hcm(config: dict) -> dict:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def _routes(config: dict) -> list[dict]:
    return _hcm(config)["route_config"]["virtual_hosts"][0]["routes"]


def _filter(config: dict, name: str) -> dict:
    return next(f for f in _hcm(config)["http_filters"] if f["name"] == name)["typed_config"]


def _cluster(config: dict, name: str) -> dict:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def _endpoint(cluster: dict) -> tuple[str, int]:
    sa = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    return sa["address"], sa["port_value"]


# ---------------------------------------------------------------- Envoy validates


def test_committed_envoy_yaml_validates():
    result = _validate(ENVOY_YAML)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_rendered_envoy_yaml_validates(tmp_path):
    path = write_config(EnvoyEndpoints(listen_port=18080, admin_port=19901, ext_authz_port=19000,
                                       translator_port=18082, ext_authz_timeout_s=0.5, access_log=False), tmp_path)
    result = _validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validation_catches_a_broken_config(tmp_path):
    broken = yaml.safe_load(ENVOY_YAML.read_text())
    _filter(broken, "envoy.filters.http.ext_authz")["status_on_error"] = {"code": "NotAStatus"}
    path = tmp_path / "broken.yaml"
    path.write_text(dump(broken))
    assert _validate(path).returncode != 0


# ---------------------------------------------------------------- rendering (pure)

RENDER_CASES = [
    # (name, endpoints, expected (listener, admin, ext_authz, translator))
    ("defaults", EnvoyEndpoints(),
     (("127.0.0.1", 8080), ("127.0.0.1", 9901), ("127.0.0.1", 9000), ("127.0.0.1", 8082))),
    ("test-ports", EnvoyEndpoints(listen_port=1, admin_port=2, ext_authz_port=3, translator_port=4),
     (("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3), ("127.0.0.1", 4))),
    ("all-interfaces", EnvoyEndpoints(listen_address="0.0.0.0", ext_authz_address="10.0.0.2",
                                      translator_address="10.0.0.3"),
     (("0.0.0.0", 8080), ("127.0.0.1", 9901), ("10.0.0.2", 9000), ("10.0.0.3", 8082))),
]


@pytest.mark.parametrize("name,endpoints,expected", RENDER_CASES, ids=[c[0] for c in RENDER_CASES])
def test_render_patches_addresses(name, endpoints, expected):
    config = render(SOURCE, endpoints)
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = config["admin"]["address"]["socket_address"]
    got = ((listener["address"], listener["port_value"]), (admin["address"], admin["port_value"]),
           _endpoint(_cluster(config, "ext_authz")), _endpoint(_cluster(config, "translator")))
    assert got == expected


def test_render_changes_nothing_else_and_leaves_the_source_alone():
    before = dump(SOURCE)
    config = render(SOURCE, EnvoyEndpoints(listen_port=1, admin_port=2, ext_authz_port=3, translator_port=4))
    assert dump(SOURCE) == before
    assert _routes(config) == _routes(SOURCE)
    assert _hcm(config)["http_filters"] == _hcm(SOURCE)["http_filters"]
    assert _hcm(config)["local_reply_config"] == _hcm(SOURCE)["local_reply_config"]


@pytest.mark.parametrize("timeout,expected", [(None, "1s"), (0.25, "0.25s"), (2, "2s")])
def test_render_ext_authz_timeout(timeout, expected):
    config = render(SOURCE, EnvoyEndpoints(ext_authz_timeout_s=timeout))
    assert _filter(config, "envoy.filters.http.ext_authz")["grpc_service"]["timeout"] == expected


def test_render_without_access_log():
    assert "access_log" in _hcm(render(SOURCE, EnvoyEndpoints()))
    assert "access_log" not in _hcm(render(SOURCE, EnvoyEndpoints(access_log=False)))


@pytest.mark.parametrize("address", ["127.0.0.1", "otel-collector.observability.svc"])
def test_render_with_tracing_validates(tmp_path, address):
    endpoints = EnvoyEndpoints(listen_port=18080, admin_port=19901, otlp_address=address, otlp_port=4317)
    config = render(SOURCE, endpoints)
    tracing = _hcm(config)["tracing"]
    assert tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "otlp_collector"
    assert _endpoint(_cluster(config, "otlp_collector")) == (address, 4317)
    path = tmp_path / "envoy-tracing.yaml"
    path.write_text(dump(config))
    result = _validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("endpoint,expected", [
    (None, None), ("", None), ("http://127.0.0.1:4317", ("127.0.0.1", 4317)),
    ("https://collector.obs:14317", ("collector.obs", 14317)), ("collector:4317", ("collector", 4317)),
    ("http://collector", ("collector", 4317)),
])
def test_otlp_target(endpoint, expected):
    assert otlp_target(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["http://:4317", "http://c:notaport"])
def test_otlp_target_errors(endpoint):
    with pytest.raises(EnvoyConfigError):
        otlp_target(endpoint)


def test_tracing_is_off_in_the_committed_file_and_by_default():
    assert "tracing" not in _hcm(SOURCE)
    config = render(SOURCE, EnvoyEndpoints())
    assert "tracing" not in _hcm(config)
    assert all(c["name"] != "otlp_collector" for c in config["static_resources"]["clusters"])


def test_render_rejects_an_unknown_shape():
    broken = yaml.safe_load(ENVOY_YAML.read_text())
    broken["static_resources"]["clusters"] = [c for c in broken["static_resources"]["clusters"]
                                              if c["name"] != "translator"]
    with pytest.raises(EnvoyConfigError, match="translator"):
        render(broken, EnvoyEndpoints())


def test_envoy_argv_disables_hot_restart_and_flushes_access_log_quickly():
    argv = envoy_argv("/bin/envoy", "/tmp/c.yaml", concurrency=1)
    assert argv[:3] == ["/bin/envoy", "-c", "/tmp/c.yaml"]
    assert "--disable-hot-restart" in argv
    assert argv[argv.index("--file-flush-interval-msec") + 1] == "200"
    assert argv[argv.index("--concurrency") + 1] == "1"


# ---------------------------------------------------------------- pinned decisions


def test_committed_defaults_match_the_k8s_pod_and_architecture_ports():
    listener = SOURCE["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("0.0.0.0", 8080)  # reachable from the Service
    admin = SOURCE["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.1", 9901)
    assert _endpoint(_cluster(SOURCE, "ext_authz")) == ("127.0.0.1", 9000)
    assert _endpoint(_cluster(SOURCE, "translator")) == ("127.0.0.1", 8082)


def test_ext_authz_is_grpc_v3_http2_fail_closed_with_503():
    authz = _filter(SOURCE, "envoy.filters.http.ext_authz")
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "ext_authz"
    assert 0.1 <= float(authz["grpc_service"]["timeout"].rstrip("s")) <= 2
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert authz["include_peer_certificate"] is False
    assert "with_request_body" not in authz  # bodies are never buffered for the check
    options = _cluster(SOURCE, "ext_authz")["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


def test_filter_order_and_no_buffering_filters():
    names = [f["name"] for f in _hcm(SOURCE)["http_filters"]]
    assert names == ["envoy.filters.http.health_check", "envoy.filters.http.ext_authz", "envoy.filters.http.router"]


def _interfaces_route_values() -> set[str]:
    text = (REPO / "docs" / "interfaces.md").read_text()
    section = text[text.index("context_extensions"):text.index("A missing value means")]
    return set(re.findall(r"`(\w+)` \(", section)) | {"default"}


def test_every_proxied_route_sets_keyrelay_route_per_interfaces_md():
    seen = {}
    for route in _routes(SOURCE):
        per_filter = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        if "route" in route:  # proxied to the translator: must be authorized, with a route value
            assert per_filter.get("disabled") is not True, route["name"]
            value = per_filter["check_settings"]["context_extensions"]["keyrelay_route"]
            assert value == route["name"], route["name"]
            seen[route["name"]] = route["match"]
        else:  # a direct response: no upstream behind it
            assert "direct_response" in route
    assert set(seen) == _interfaces_route_values()
    assert seen["messages"] == {"path": "/v1/messages"}
    assert seen["count_tokens"] == {"path": "/v1/messages/count_tokens"}
    assert seen["root"] == {"path": "/"}
    assert _routes(SOURCE)[-1]["match"] == {"prefix": "/"}  # the default route is last


def test_streams_have_no_total_timeout_but_an_idle_timeout():
    messages = next(r for r in _routes(SOURCE) if r["name"] == "messages")["route"]
    assert messages["timeout"] == "0s"
    assert int(messages["idle_timeout"].rstrip("s")) >= 300
    assert _hcm(SOURCE)["stream_idle_timeout"]


def test_request_limit_is_32mb():
    too_large = _routes(SOURCE)[0]
    assert too_large["name"] == "too_large"
    assert too_large["match"]["headers"][0]["range_match"]["start"] == 32 * 1024 * 1024 + 1
    assert too_large["direct_response"]["status"] == 413


def test_header_hygiene():
    hcm = _hcm(SOURCE)
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    mutation = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"][0]
    assert mutation == {"remove_on_match": {"key_matcher": {"prefix": "x-authz-"}}}
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True


def test_access_log_is_json_with_identity_and_never_credentials():
    (log,) = _hcm(SOURCE)["access_log"]
    fmt = log["typed_config"]["log_format"]["json_format"]
    assert fmt["key_id"] == "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:key_id)%"
    for field in ("method", "path", "status", "duration_ms", "upstream_service_time_ms", "tenant", "credential"):
        assert field in fmt
    text = yaml.safe_dump(fmt).lower()
    assert "authorization" not in text and "x-api-key" not in text and "%req(:path)%" not in text


def test_local_replies_are_anthropic_shaped():
    for mapper in _hcm(SOURCE)["local_reply_config"]["mappers"]:
        if "body_format_override" in mapper:
            body = mapper["body_format_override"]["json_format"]
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
