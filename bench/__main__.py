"""`python -m bench` (`make bench ARGS=...`): measure the authz path and the translator side by side; print one
table and write the same figures as JSON to bench/results/. See docs/bench.md."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import authz, baseline, cold, components as C, envoy_config, machine, profile, report, runner
from bench import envoy_cost, scale, translator_path, wrk
from bench.procs import REPO
from bench.upstream import frames_per_stream

RESULTS = REPO / "bench" / "results"
SECTIONS = ("authz", "translator", "cold", "scale", "envoy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="3 runs x 1 s per point, no LiteLLM proxy or stream baseline, scale N=200 for 5 s "
                         "(under 3 min)")
    ap.add_argument("--only", action="append", choices=SECTIONS,
                    help="run only this section (repeatable); default: all")
    ap.add_argument("--runs", type=int, help="repetitions per point (default 5; --quick 3)")
    ap.add_argument("--duration", type=float, help="seconds per run, whole seconds (default 3; --quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per point before the runs (default 1)")
    ap.add_argument("--json", type=Path, help="write the JSON here (default bench/results/bench-<date>.json)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections for the translator section")
    ap.add_argument("--workers", default="1,2", help="ext_authz --workers values for the authz section")
    ap.add_argument("--envoy-concurrency", type=int, default=2, help="Envoy worker threads (default 2)")
    ap.add_argument("--upstream-procs", type=int, default=1, help="processes of the fast upstream (default 1)")
    ap.add_argument("--chunks", type=int, default=200, help="content chunks per streamed reply (default 200)")
    ap.add_argument("--stream-writes", choices=("frame", "whole"), default="frame",
                    help="how the upstream sends a stream: one write per SSE frame, as an upstream flushing every "
                         "token (default), or the whole stream in one write (a much faster direct path)")
    ap.add_argument("--pin", choices=("none", "wrk", "split"), default="none",
                    help="CPU pinning: none (default); wrk = wrk on the last CPU, the rest unpinned; "
                         "split = wrk on the last CPU, everything else on the others")
    ap.add_argument("--profile", action="store_true",
                    help="also sample the translator with py-spy on the Claude-Code-sized body and print the top")
    ap.add_argument("--no-litellm", action="store_true", help="skip the informational LiteLLM stream baseline")
    ap.add_argument("--no-litellm-proxy", action="store_true",
                    help="skip the LiteLLM proxy server measured side by side in the translator section")
    ap.add_argument("--baseline", metavar="REV",
                    help="also measure ext_authz and the translator of git revision REV (a temporary worktree), "
                         "interleaved with the current tree's, and print both with their ratio")
    ap.add_argument("--baseline-dir", metavar="DIR", type=Path,
                    help="like --baseline, with the source tree in DIR (e.g. another worktree, uncommitted)")
    ap.add_argument("--scale-n", default="500,2000,5000",
                    help="scale section: concurrent streams per run, comma-separated (default 500,2000,5000)")
    ap.add_argument("--scale-hold", type=float, default=20.0,
                    help="scale section: seconds each stream lasts (default 20)")
    ap.add_argument("--scale-interval", type=float, default=50.0,
                    help="scale section: ms between the upstream's chunks (default 50)")
    ap.add_argument("--scale-translator-workers", type=int, default=1,
                    help="scale section: translator worker processes (default 1, as the target is stated)")
    ap.add_argument("--scale-envoy-variants", default="",
                    help="scale section: Envoys side by side, each run's streams dealt over them, comma-separated "
                         f"from {', '.join(scale.ENVOY_VARIANTS)} (default: the as-is one alone)")
    ap.add_argument("--scale-ramp", type=float,
                    help="scale section: seconds over which the streams start (default N/400, 1-10 s)")
    args = ap.parse_args(argv)
    if args.baseline and args.baseline_dir:
        ap.error("--baseline and --baseline-dir exclude each other")
    args.runs = args.runs or (3 if args.quick else 5)
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    args.warmup = 1.0 if args.warmup is None else args.warmup
    if args.quick:
        args.no_litellm = args.no_litellm_proxy = True
        if args.scale_n == ap.get_default("scale_n"):
            args.scale_n = "200"
        if args.scale_hold == ap.get_default("scale_hold"):
            args.scale_hold = 5.0
    args.scale_ns = sorted(int(n) for n in args.scale_n.split(",") if n)
    # --quick leaves out the Envoy variants section unless asked for by --only.
    args.sections = tuple(args.only or [s for s in SECTIONS if not (args.quick and s == "envoy")])
    return args


def pinning(mode: str) -> tuple[str | None, str | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None, None, "no CPU pinning (wrk -t1 and the processes under test share all cores)"
    last = str(cpus[-1])
    rest = ",".join(str(c) for c in cpus[:-1])
    if mode == "wrk":
        return last, None, f"wrk pinned to CPU {last}, processes under test unpinned"
    return last, rest, f"wrk pinned to CPU {last}, processes under test to CPU(s) {rest}"


def stream_cost(up: C.Started, workdir: Path, variants: dict, *, tr_us: float | None,
                tr_marginal_us: float | None, runs: int, chunks: int, litellm: bool) -> dict:
    """The in-process baselines for the per-chunk CPU cost, read against the same upstream stream."""
    body_file = workdir / "stream_cost_openai.json"
    body_file.write_text(json.dumps(translator_path.with_stream_openai(variants["tiny"], True)[0]))
    url = f"http://127.0.0.1:{up.port}/v1/chat/completions"
    frames = frames_per_stream(chunks)

    def client(mode: str, streams: int) -> dict:
        out = subprocess.run([sys.executable, "-m", "bench.stream_client", "--url", url, "--body", str(body_file),
                              "--streams", str(streams), "--mode", mode, "--frames-per-stream", str(frames)],
                             capture_output=True, text=True, cwd=REPO, env=C.base_env(), timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"stream_client {mode} failed: {out.stderr[-1500:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    httpx_runs = [client("httpx", 300) for _ in range(runs)]
    httpx_us = runner.median([r["us_per_frame"] for r in httpx_runs])
    rows = [{"name": "plain httpx + json.loads (in-process loop)", "us_per_frame": httpx_us,
             "frames_per_cpu_s": 1e6 / httpx_us, "vs_httpx": 1.0}]
    result: dict = {"frames_per_stream": frames, "httpx_runs": httpx_runs, "rows": rows, "ratio": None}
    if tr_us is not None:
        rows.insert(0, {"name": "translator (process CPU, wrk -c16 streaming)", "us_per_frame": tr_us,
                        "frames_per_cpu_s": 1e6 / tr_us, "vs_httpx": tr_us / httpx_us})
        result["ratio"] = tr_us / httpx_us
    if tr_marginal_us is not None:
        rows.insert(1, {"name": "  of which per frame beyond a non-streaming call", "us_per_frame": tr_marginal_us,
                        "frames_per_cpu_s": 1e6 / tr_marginal_us if tr_marginal_us > 0 else None,
                        "vs_httpx": tr_marginal_us / httpx_us})
        result["translator_marginal_us_per_frame"] = tr_marginal_us
    if litellm:
        try:
            lr = client("litellm", 20)
            rows.append({"name": "LiteLLM stream wrapper (informational)", "us_per_frame": lr["us_per_frame"],
                         "frames_per_cpu_s": lr["frames_per_cpu_s"], "vs_httpx": lr["us_per_frame"] / httpx_us})
            result["litellm"] = lr
        except Exception as exc:  # noqa: BLE001 - informational only
            result["litellm_error"] = str(exc)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    wrk_cpus, sut_cpus, pin_text = pinning(args.pin)
    settings = runner.Settings(runs=args.runs, duration_s=max(1.0, round(args.duration)), warmup_s=args.warmup,
                               wrk_cpus=wrk_cpus)
    t_start = time.monotonic()
    per_point = settings.runs * settings.duration_s + settings.warmup_s
    with_base = bool(args.baseline or args.baseline_dir)
    n_workers = len([w for w in args.workers.split(",") if w]) + with_base
    points = ((2 * (1 + n_workers)) if "authz" in args.sections else 0) + \
        (4 * (3 + (not args.no_litellm_proxy) + 2 * with_base) if "translator" in args.sections else 0)
    points += 6 if "envoy" in args.sections else 0
    scale_s = (len(args.scale_ns) * (args.scale_hold + 12)) if "scale" in args.sections else 0
    runner.log(f"bench: {points} points x ({settings.runs} runs x {settings.duration_s:.0f} s + warm-up)"
               f"{f' + scale {scale_s:.0f} s' if scale_s else ''}, about "
               f"{(points * per_point + scale_s) / 60 + 0.6:.0f} min plus start-up; {pin_text}")
    result: dict = {
        "machine": machine.describe(C.envoy_version(), wrk.wrk_version()),
        "settings": {"runs": settings.runs, "duration_s": settings.duration_s, "warmup_s": settings.warmup_s,
                     "quick": args.quick, "sections": list(args.sections), "pinning": pin_text,
                     "envoy_concurrency": args.envoy_concurrency, "translator_connections": args.connections},
        "errors": {}, "notes": [],
    }
    # The ext_authz filter settings as the project's own Envoy config renders them (defaults until it exists).
    rendered, _src = envoy_config.stack_bootstrap(admin_port=9901, port=8080, authz_grpc_port=9000,
                                                  translator_port=8082)
    stack_settings = envoy_config.stack_ext_authz_settings(rendered)

    with tempfile.TemporaryDirectory(prefix="keyrelay-bench-") as tmp, \
            baseline.resolve(args.baseline, args.baseline_dir) as base_tree:
        workdir = Path(tmp)
        if base_tree is not None:
            result["baseline"] = {"label": base_tree.label, "imports": baseline.self_check(base_tree)}
            runner.log(f"baseline: {base_tree.label} from {base_tree.path}")
        if "authz" in args.sections:
            try:
                workers = tuple(int(w) for w in args.workers.split(",") if w)
                result["authz"] = authz.run(workdir, settings, envoy_concurrency=args.envoy_concurrency,
                                            worker_counts=workers, sut_cpus=sut_cpus, stack_settings=stack_settings,
                                            profile_to=RESULTS / "profile-ext_authz-c16.txt" if args.profile
                                            else None, baseline=base_tree)
                if "profile" in result["authz"]:
                    result.setdefault("profile", {})["ext_authz, 1 worker, c16"] = result["authz"].pop("profile")
            except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
                result["errors"]["authz"] = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()
        if "translator" in args.sections:
            def after(up, tr, workdir, variants, partial):
                extra: dict = {}
                tiny_stream = partial["groups"].get("tiny/stream", {})
                tiny_json = partial["groups"].get("tiny/json", {})
                marginal = None
                if tiny_stream and tiny_json:
                    per_stream = tiny_stream["points"]["b_translator"]["cpu_s_per_1k"]["translator"] / 1000
                    per_request = tiny_json["points"]["b_translator"]["cpu_s_per_1k"]["translator"] / 1000
                    marginal = (per_stream - per_request) / frames_per_stream(args.chunks) * 1e6
                try:
                    extra["stream_cost"] = stream_cost(up, workdir, variants,
                                                       tr_us=tiny_stream.get("translator_cpu_us_per_chunk"),
                                                       tr_marginal_us=marginal,
                                                       runs=settings.runs, chunks=args.chunks,
                                                       litellm=not args.no_litellm)
                except Exception as exc:  # noqa: BLE001
                    extra["stream_cost_error"] = str(exc)
                if args.profile:
                    extra["profile"] = run_profiles(tr, workdir, variants, args, settings)
                return extra

            try:
                tr_result = translator_path.run(
                    workdir, settings, connections=args.connections, envoy_concurrency=args.envoy_concurrency,
                    upstream_procs=args.upstream_procs, chunks=args.chunks, sut_cpus=sut_cpus,
                    upstream_cpus=sut_cpus,
                    litellm_proxy=not args.no_litellm_proxy, stream_writes=args.stream_writes, baseline=base_tree,
                    on_ready=after)
                result["stream_cost"] = tr_result.pop("stream_cost", None)
                if "stream_cost_error" in tr_result:
                    result["errors"]["stream_cost"] = tr_result.pop("stream_cost_error")
                result.setdefault("profile", {}).update(tr_result.pop("profile", None) or {})
                result["translator"] = tr_result
            except Exception as exc:  # noqa: BLE001
                result["errors"]["translator"] = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()
        if "scale" in args.sections:
            try:
                result["scale"] = scale.run(workdir, ns=args.scale_ns, hold_s=args.scale_hold,
                                            interval_ms=args.scale_interval, ramp_s=args.scale_ramp,
                                            envoy_concurrency=args.envoy_concurrency, sut_cpus=sut_cpus,
                                            translator_workers=args.scale_translator_workers,
                                            envoy_variants=[v for v in args.scale_envoy_variants.split(",") if v])
            except Exception as exc:  # noqa: BLE001
                result["errors"]["scale"] = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()
        if "envoy" in args.sections:
            try:
                result["envoy"] = envoy_cost.run(workdir, settings, connections=args.connections,
                                                 envoy_concurrency=args.envoy_concurrency, chunks=args.chunks,
                                                 sut_cpus=sut_cpus)
            except Exception as exc:  # noqa: BLE001
                result["errors"]["envoy"] = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()
        if "cold" in args.sections:
            try:
                result["cold_start"] = cold.run(workdir, settings.runs, sut_cpus)
            except Exception as exc:  # noqa: BLE001
                result["errors"]["cold"] = f"{exc.__class__.__name__}: {exc}"
                traceback.print_exc()

    result["peak_rss_mb_max"] = peak_rss(result)
    result["targets"] = report.targets(result)
    result["loadavg_end"] = machine.loadavg()
    result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    notes = result["notes"]
    if result.get("translator"):
        notes.append("the upstream is a pre-encoded asyncio server; '(a) direct' is its own capacity, and "
                     "'upstream busy' shows how much of a core it needed while serving the translator")
    print(report.render(result))
    for section, err in result["errors"].items():
        print(f"error in {section}: {err}")
    for name, prof in (result.get("profile") or {}).items():
        profile.print_summary(name, prof)
    out = args.json or RESULTS / f"bench-{result['machine']['date_utc'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    (RESULTS / "latest.json").parent.mkdir(parents=True, exist_ok=True)
    if out.resolve() != (RESULTS / "latest.json").resolve():
        (RESULTS / "latest.json").write_text(out.read_text())
    print(f"\nJSON: {out}  ({result['elapsed_s']:.0f} s)")
    return 1 if result["errors"] else 0


def peak_rss(result: dict) -> dict:
    out: dict = {"ext_authz": None, "translator": None}
    vals_a, vals_t = [], []
    if result.get("authz"):
        for label, per_pid in result["authz"]["peak_rss_mb"].items():
            if label != "envoy":
                vals_a += list(per_pid.values())
    if result.get("translator"):
        vals_a += list(result["translator"]["peak_rss_mb"]["ext_authz"].values())
        vals_t += list(result["translator"]["peak_rss_mb"]["translator"].values())
    out["ext_authz"] = max(vals_a) if vals_a else None
    out["translator"] = max(vals_t) if vals_t else None
    return out


def run_profiles(tr: C.Started, workdir: Path, variants: dict, args: argparse.Namespace,
                 settings: runner.Settings) -> dict:
    """py-spy on the translator: the Claude-Code-sized body (non-streaming and streaming), and the tiny body
    (the request overhead every call pays)."""
    out = {}
    for body_name, stream in (("claude_code", False), ("claude_code", True), ("tiny", False)):
        body = translator_path.bodies.with_stream(variants[body_name], stream)
        mode = "stream" if stream else "json"
        f = workdir / f"profile_{body_name}_{mode}.json"
        f.write_text(json.dumps(body))
        req = wrk.Request(f"http://127.0.0.1:{tr.port}/v1/messages?beta=true", str(f),
                          {"content-type": "application/json", "anthropic-version": "2023-06-01",
                           "authorization": f"Bearer {C.BENCH_KEY}"})
        name = f"translator, {body_name} body, {'streaming' if stream else 'non-streaming'}"
        dest = RESULTS / f"profile-{body_name}-{mode}.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        runner.log(f"[profile] {name}")
        out[name] = profile.record(tr.proc.pid, req, connections=args.connections,
                                   duration_s=max(4.0, settings.duration_s * 2), out=dest)
    return out


if __name__ == "__main__":
    sys.exit(main())
