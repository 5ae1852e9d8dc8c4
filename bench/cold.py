"""Section 3: cold start, from process start (just before exec) to its `ready:` line, for keyrelay-ext-authz and
keyrelay-translator, alternating the two, median of N. The page cache is warm after the first start (as on
a node that restarts a pod); the first start is reported separately."""

from __future__ import annotations

from pathlib import Path

from bench import components as C, runner


def run(workdir: Path, runs: int, sut_cpus: str | None) -> dict:
    policy = workdir / "policy.yaml"
    policy.write_text(C.policy_yaml())
    times: dict[str, list[float]] = {"ext_authz": [], "translator": []}
    up = C.start_upstream(cpus=sut_cpus)
    try:
        for i in range(runs + 1):  # +1: the first start is a warm-up for the page cache
            for name in times:
                s = (C.start_ext_authz(policy, workers=1, cpus=sut_cpus) if name == "ext_authz"
                     else C.start_translator(up.port, cpus=sut_cpus))
                times[name].append(s.proc.startup_s)
                s.proc.stop()
            runner.log(f"  cold start {i}/{runs}: " + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    finally:
        up.proc.stop()
    return {name: {"median_s": runner.median(t[1:]), "first_s": t[0], "runs_s": [round(x, 3) for x in t[1:]]}
            for name, t in times.items()}
