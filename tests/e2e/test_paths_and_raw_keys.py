"""Through the real Envoy of envoy.yaml: (1) no request picks its policy route by how its path is spelled: each
path variant is either refused by Envoy, or checked under exactly the route Envoy serves it on and forwarded with
the canonical path that route stands for; (2) ext_authz judges the key bytes the client sent
(`encode_raw_headers`): bytes that are not UTF-8 are a 400, and never share a key_id with another key."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Iterator

import pytest

from ext_authz.routes import route_for_path
from tests.e2e.conftest import (Envoy, Proc, key_id, marker, start_envoy, start_ext_authz, write_policy)

pytestmark = pytest.mark.e2e

REFUSED = "refused"


def _send(port: int, path: str, headers: dict[str, str | bytes], method: str = "POST") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        body = b"{}"
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# (id, path as sent, the Envoy route it must be served on and checked under, or REFUSED)
PATHS = [
    ("canonical", "/v1/messages", "messages"),
    ("encoded-slash-upper", "/v1%2Fmessages", "messages"),
    ("encoded-slash-lower", "/v1%2fmessages", "messages"),
    ("encoded-slash-count-tokens", "/v1/messages%2Fcount_tokens", "count_tokens"),
    ("encoded-slash-models", "/v1%2Fmodels", "models"),
    ("encoded-backslash", "/v1%5Cmessages", "messages"),
    ("dot-segment", "/v1/./messages", "messages"),
    ("dot-dot-segment", "/v1/x/../messages", "messages"),
    ("dot-dot-from-health", "/healthz/../v1/messages", "messages"),
    ("dot-dot-above-root", "/../v1/messages", "messages"),
    ("encoded-dot-dot", "/v1/x/%2e%2e/messages", "messages"),
    ("encoded-unreserved", "/v1/%6Dessages", "messages"),
    ("double-slash", "//v1//messages", "messages"),
    ("encoded-double-slash", "/v1%2F%2Fmessages", "messages"),
    ("encoded-slash-to-root", "%2F", REFUSED),
    ("case-upper-v", "/V1/messages", "default"),
    ("case-upper-m", "/v1/Messages", "default"),
    ("case-count-tokens", "/v1/messages/Count_Tokens", "default"),
    ("trailing-slash", "/v1/messages/", "default"),
    ("double-encoded-slash", "/v1%252Fmessages", "default"),
    ("encoded-nul", "/v1/messages%00", REFUSED),
    ("fragment", "/v1/messages#x", REFUSED),
]


@pytest.mark.parametrize("name,path,expected", PATHS, ids=[p[0] for p in PATHS])
def test_a_path_is_checked_under_the_route_it_is_served_on(contract_envoy: Envoy, recorder, name: str, path: str,
                                                           expected: str) -> None:
    ua = marker()
    status, body = _send(contract_envoy.port, path, {"user-agent": ua})
    if expected == REFUSED:  # refused by Envoy's codec or path checks: no check, nothing forwarded
        assert 400 <= status < 500 and recorder.requests == [], (status, body)
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        return
    entry = contract_envoy.log_entry(lambda e: e.get("user_agent") == ua)
    (seen,) = recorder.requests
    forwarded = seen.path.partition("?")[0]
    # Served on `expected`, checked under `expected`, and the translator sees the path that route stands for.
    assert (entry["route"], entry["authz_route"], route_for_path(forwarded)) == (expected,) * 3, (entry, forwarded)
    if expected != "default":
        assert "%" not in forwarded and "//" not in forwarded and "/." not in forwarded


# ---------------------------------------------------------------- raw key bytes

NOT_UTF8 = b"\xff\xfe\xfd"
LOOKALIKE = "!!!"   # what Envoy turns NOT_UTF8 into when it sends headers as (UTF-8) strings


@pytest.fixture(scope="module")
def formatless_authz(e2e_tmp: Path) -> Iterator[Proc]:
    """Key required, no key_format: only ext_authz's own key checks stand between odd bytes and a key_id."""
    policy = write_policy(e2e_tmp / "policy-no-format.yaml", key_format=None, revoked=[])
    proc = start_ext_authz(policy, name="ext_authz_no_format")
    yield proc
    proc.stop()


def _without_raw_headers(config: dict) -> None:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    assert authz["typed_config"].pop("encode_raw_headers") is True


@pytest.fixture(scope="module", params=["envoy.yaml", "without-encode_raw_headers"])
def raw_envoy(request, formatless_authz: Proc, contract_recorder, e2e_tmp: Path) -> Iterator[tuple[str, Envoy]]:
    patch = None if request.param == "envoy.yaml" else _without_raw_headers
    envoy = start_envoy(f"envoy_raw_{request.param}", ext_authz_port=formatless_authz.port,
                        translator_port=contract_recorder.port, tmp=e2e_tmp, patch=patch)
    yield request.param, envoy
    envoy.stop()


def _key_id_seen(envoy: Envoy, recorder, value: bytes | str, header: str = "x-api-key") -> tuple[int, str | None]:
    recorder.reset()
    status, body = _send(envoy.port, "/v1/messages", {header: value})
    if status != 200:
        assert json.loads(body)["error"]["type"] == "invalid_request_error", body
        assert recorder.requests == []
        return status, None
    (seen,) = recorder.requests
    return status, seen.headers.get("x-authz-key-id")


def test_key_bytes_are_judged_as_sent(raw_envoy, recorder) -> None:
    layout, envoy = raw_envoy
    assert _key_id_seen(envoy, recorder, LOOKALIKE) == (200, key_id(LOOKALIKE))
    if layout == "envoy.yaml":
        assert _key_id_seen(envoy, recorder, NOT_UTF8) == (400, None)
        assert _key_id_seen(envoy, recorder, b"Bearer " + NOT_UTF8, "authorization") == (400, None)
        assert _key_id_seen(envoy, recorder, "sk-caf\u00e9-0123456789".encode()) == (400, None)  # UTF-8, not ASCII
    else:
        # The control: without raw headers Envoy hands ext_authz "!!!" for these bytes, and two different keys
        # share one key_id (quotas, logs and revocations would treat them as one).
        assert _key_id_seen(envoy, recorder, NOT_UTF8) == (200, key_id(LOOKALIKE))
