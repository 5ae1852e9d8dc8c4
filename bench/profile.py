"""`--profile`: where the translator spends its time on the Claude-Code-sized body.

py-spy samples the running translator (and its worker processes) while wrk drives the Claude-Code-sized body
through it; the collapsed stacks (`--format raw`) are kept in bench/results/ (open them with speedscope or
flamegraph.pl) and summarized here as the top functions by own time and by inclusive time."""

from __future__ import annotations

import collections
import re
import subprocess
import time
from pathlib import Path

from bench import runner, wrk
from bench.procs import script

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def record(pid: int, req: wrk.Request, *, connections: int, duration_s: float, out: Path,
           rate: int = 200) -> dict:
    argv = [script("py-spy"), "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate),
            "--duration", str(int(duration_s) + 2), "--format", "raw", "--output", str(out), "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # let py-spy attach before the load starts
    res = wrk.run(req, connections=connections, duration_s=duration_s)
    try:
        log, _ = spy.communicate(timeout=duration_s + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        log, _ = spy.communicate()
    if spy.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed (exit {spy.returncode}): {log.strip()[-500:]}"}
    summary = summarize(out.read_text())
    summary.update({"file": str(out), "rps_while_profiling": round(res.rps, 1)})
    return summary


PROJECT_PACKAGES = ("translator", "ext_authz", "keyrelay_stack")


def split_frame(frame: str) -> tuple[str, str]:
    """(function, file relative to site-packages / the stdlib / the repo)."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    file = m.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    file = file.replace(str(Path(__file__).resolve().parents[1]) + "/", "")
    return m.group("func"), file


def package_of(file: str) -> str:
    if file.startswith("<frozen") or not file:
        return "python (stdlib/frozen)"
    head = file.split("/", 1)[0]
    if head.endswith(".py"):
        return "python (stdlib)" if "/" not in file else head
    return head


def summarize(raw: str, top: int = 15) -> dict:
    self_counts: collections.Counter[str] = collections.Counter()
    pkg_counts: collections.Counter[str] = collections.Counter()
    project_incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [split_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        func, file = frames[-1]
        self_counts[f"{func} ({file})"] += n
        pkg_counts[package_of(file)] += n
        # inclusive time of the project's own functions (the entry point `main` excluded: it is on every stack)
        seen = {f"{fn} ({fl})" for fn, fl in frames
                if fl.split("/", 1)[0] in PROJECT_PACKAGES and fn not in ("main", "<module>")}
        for key in seen:
            project_incl[key] += n

    def table(c: collections.Counter[str]) -> list[dict]:
        return [{"function": f, "pct": round(100 * n / total, 1), "samples": n} for f, n in c.most_common(top)]

    return {"samples": total, "top_self": table(self_counts),
            "self_by_package": [{"package": p, "pct": round(100 * n / total, 1)}
                                for p, n in pkg_counts.most_common(12)],
            "top_inclusive_project": table(project_incl)}


def print_summary(name: str, s: dict) -> None:
    if "error" in s:
        runner.log(f"[profile] {name}: {s['error']}")
        return
    print(f"\nProfile: {name} ({s['samples']} samples, {s['rps_while_profiling']} req/s while sampled; {s['file']})")
    print("  own time by package: " + ", ".join(f"{r['package']} {r['pct']:.0f}%" for r in s["self_by_package"]))
    print(f"  {'own time (top functions)':<76}{'%':>5}")
    for row in s["top_self"]:
        print(f"  {row['function'][:76]:<76}{row['pct']:5.1f}")
    print(f"  {'inclusive time, project code':<76}{'%':>5}")
    for row in s["top_inclusive_project"]:
        print(f"  {row['function'][:76]:<76}{row['pct']:5.1f}")
