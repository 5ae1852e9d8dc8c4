"""Section 3: cold start, from process start (just before exec) to its `ready:` line, for keyrelay-ext-authz and
keyrelay-translator, alternating the two, median of N. The page cache is warm after the first start (as on
a node that restarts a pod); the first start is reported separately. For the translator, the time to its first
answered request (tiny body, non-streaming) is reported too: lazy imports move start-up cost there."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench import bodies, components as C, runner


def run(workdir: Path, runs: int, sut_cpus: str | None) -> dict:
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    times: dict[str, list[float]] = {"ext_authz": [], "translator": []}
    first_response: list[float] = []
    tiny = json.dumps(bodies.tiny_body()).encode()
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
               "authorization": f"Bearer {C.BENCH_KEY}"}
    up = C.start_upstream(cpus=sut_cpus)
    try:
        for i in range(runs + 1):  # +1: the first start is a warm-up for the page cache
            for name in times:
                s = (C.start_ext_authz(policy, workers=1, cpus=sut_cpus) if name == "ext_authz"
                     else C.start_translator(up.port, cpus=sut_cpus))
                times[name].append(s.proc.startup_s)
                if name == "translator":
                    status, body = C.request(f"http://127.0.0.1:{s.port}/v1/messages", tiny, headers)
                    first_response.append(time.monotonic() - s.proc.started_at)
                    if status != 200:
                        raise RuntimeError(f"translator first request: {status} {body[:200]!r}")
                s.proc.stop()
            runner.log(f"  cold start {i}/{runs}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    finally:
        up.proc.stop()
    out = {name: {"median_s": runner.median(t[1:]), "first_s": t[0], "runs_s": [round(x, 3) for x in t[1:]]}
           for name, t in times.items()}
    out["translator"]["first_response_median_s"] = runner.median(first_response[1:])
    return out
