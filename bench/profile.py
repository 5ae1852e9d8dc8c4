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


def short(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    file = file.replace(str(Path(__file__).resolve().parents[1]) + "/", "")
    return f"{m.group('func')} ({file})"


def summarize(raw: str, top: int = 15) -> dict:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            incl_counts[f] += n

    def table(c: collections.Counter[str]) -> list[dict]:
        return [{"function": f, "pct": round(100 * n / total, 1), "samples": n} for f, n in c.most_common(top)]

    # Frames on (nearly) every stack are the entry point and the event loop: they say nothing, leave them out.
    incl_counts = collections.Counter({f: n for f, n in incl_counts.items() if n < 0.97 * total})
    return {"samples": total, "top_self": table(self_counts), "top_inclusive": table(incl_counts)}


def print_summary(name: str, s: dict) -> None:
    if "error" in s:
        runner.log(f"[profile] {name}: {s['error']}")
        return
    print(f"\nProfile: {name} ({s['samples']} samples, {s['rps_while_profiling']} req/s while sampled; {s['file']})")
    print("  own time                                                                      %")
    for row in s["top_self"]:
        print(f"  {row['function'][:74]:<74} {row['pct']:5.1f}")
    print("  inclusive                                                                     %")
    for row in s["top_inclusive"]:
        print(f"  {row['function'][:74]:<74} {row['pct']:5.1f}")
