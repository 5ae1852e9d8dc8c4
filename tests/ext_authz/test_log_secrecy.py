"""Run the real service with known keys through every kind of request (valid, invalid, revoked, conflicting,
malformed, a bad policy reload that quotes a key) at debug level, capture all of its output, and assert that no
key, nor a distinctive part of one, appears anywhere."""

from __future__ import annotations

import time
from pathlib import Path

from ext_authz.decide import key_digest

from .helpers import running_service

VALID = "sk-live-VALIDSECRET-7f3a9c1e"
TEAM = "sk-live-TEAMSECRET-0b8d2f44"
REVOKED = "sk-live-REVOKEDSECRET-91ce"
UNKNOWN = "sk-live-UNKNOWNSECRET-5d1a"
OTHER = "sk-live-OTHERSECRET-c0ffee1"
BADFORMAT = "BADFORMATSECRET-123456789"
KEYS = [VALID, TEAM, REVOKED, UNKNOWN, OTHER, BADFORMAT]
DISTINCTIVE = ["VALIDSECRET", "TEAMSECRET", "REVOKEDSECRET", "UNKNOWNSECRET", "OTHERSECRET", "BADFORMATSECRET",
               "7f3a9c1e", "0b8d2f44", "c0ffee1"]

POLICY = f"""\
version: 1
key_format: '^sk-[A-Za-z0-9._-]{{8,256}}$'
allowlist:
  - {{sha256: {key_digest(VALID)}, tenant: team-v}}
  - {{sha256: {key_digest(TEAM)}, tenant: team-t}}
  - {{sha256: {key_digest(REVOKED)}, tenant: team-r}}
revoked:
  - sha256: {key_digest(REVOKED)}
routes:
  root: {{require_key: false}}
"""


def test_no_key_ever_reaches_the_output(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    with running_service(path, extra_args=["--log-level", "debug"]) as svc:
        requests = [
            ({"x-api-key": VALID}, False),
            ({"authorization": f"Bearer {TEAM}"}, False),
            ({"x-api-key": VALID, "authorization": f"Bearer {VALID}"}, False),
            ({"x-api-key": REVOKED}, False),
            ({"x-api-key": UNKNOWN}, False),
            ({"x-api-key": VALID, "authorization": f"Bearer {OTHER}"}, False),     # conflicting
            ({"x-api-key": BADFORMAT}, False),                                      # key_format
            ({"x-api-key": f"{VALID},{OTHER}"}, False),                             # joined repeats
            ({"x-api-key": f"{VALID}\r\nx-authz-tenant: admin"}, False),            # CRLF
            ({"x-api-key": VALID + "x" * 5000}, False),                             # over-long
            ({"authorization": f"Basic {OTHER}"}, False),                           # wrong scheme
            ({"authorization": f"Bearer {VALID} {OTHER}"}, False),                  # whitespace
            ([("x-api-key", VALID.encode() + b"\xff\xfe")], True),                  # invalid UTF-8
            ([("x-api-key", VALID), ("x-api-key", OTHER)], True),                   # repeated raw header
            ({}, False),
        ]
        for headers, raw in requests:
            for route in ("messages", "root"):
                svc.check(headers, route=route, raw=raw)
        # A broken reload whose file quotes a key where a digest belongs.
        path.write_text(f"version: 1\nrevoked:\n  - sha256: {OTHER}\n")
        deadline = time.monotonic() + 10
        while "invalid policy" not in svc.proc.output and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "invalid policy" in svc.proc.output
        _, metrics_text = svc.http_get("/metrics")
    output = svc.proc.output
    # The logs did record these requests (so this test can fail): fingerprints and reasons are there.
    assert key_digest(VALID)[:16] in output and key_digest(REVOKED)[:16] in output
    for reason in ("revoked", "not_allowlisted", "conflicting_keys", "key_format", "malformed_key", "missing_key"):
        assert f'"reason":"{reason}"' in output, reason
    assert '"msg":"allow"' in output  # debug-level allow records were on
    for text in (output, metrics_text):
        for secret in KEYS + DISTINCTIVE:
            assert secret not in text, f"{secret!r} leaked"
