"""The printed table and the target verdicts (pure functions of the result dict)."""

from __future__ import annotations

import math
from typing import Any

from bench import scale


def _f(x: Any, fmt: str = "{:.0f}", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return fmt.format(x)


def _pct(x: Any) -> str:
    return _f(x, "{:.1%}") if x is not None else "-"


def _max_rss(per_pid: dict[str, float] | None) -> float | None:
    return max(per_pid.values()) if per_pid else None


def targets(result: dict) -> list[dict]:
    """Each target from the issue as {name, measured, target, ok, gap}: gap is how far off a miss is
    (factor the measured value must improve by)."""
    out: list[dict] = []

    def at_least(name: str, measured: float | None, target: float, fmt: str) -> None:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return
        ok = measured >= target
        out.append({"name": name, "measured": measured, "target": f">= {fmt.format(target)}",
                    "shown": fmt.format(measured), "ok": ok,
                    "gap": None if ok or measured <= 0 else f"needs {target / measured:.2f}x"})

    def at_most(name: str, measured: float | None, target: float, fmt: str) -> None:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return
        ok = measured <= target
        out.append({"name": name, "measured": measured, "target": f"<= {fmt.format(target)}",
                    "shown": fmt.format(measured), "ok": ok,
                    "gap": None if ok else f"{measured / target:.2f}x over"})

    authz = result.get("authz")
    if authz:
        for label, r in authz["ratios"].items():
            if label == "base":
                continue
            at_least(f"authz throughput / no authz, c16 ({label})", r["throughput_c16"], 0.12, "{:.1%}")
            at_most(f"authz added p50 at c1 ({label})", r["added_p50_ms_c1"], 0.5, "{:.3f} ms")
        if authz.get("budgets"):
            b = authz["budgets"]
            at_least("authz throughput budgets on / off, c16", b["throughput_c16"], 0.70, "{:.1%}")
            at_most("budgets added p50 per check at c1", b["added_p50_ms_c1"], 0.3, "{:.3f} ms")
    tr = result.get("translator")
    if tr:
        g = tr["groups"]
        if "tiny/json" in g:
            at_least("translator / direct upstream, tiny, non-streaming", g["tiny/json"]["translator_over_direct"],
                     0.08, "{:.1%}")
        if "tiny/stream" in g:
            at_least("translator / direct upstream, tiny, streaming", g["tiny/stream"]["translator_over_direct"],
                     0.06, "{:.1%}")
        for name, grp in g.items():
            lp = grp.get("litellm")
            if lp and lp["translator_cpu_over_litellm"] == lp["translator_cpu_over_litellm"]:
                x = lp["translator_cpu_over_litellm"]
                out.append({"name": f"translator CPU/req vs LiteLLM proxy ({name})", "measured": x,
                            "target": "<= 1/50", "shown": f"1/{1 / x:.0f}" if x > 0 else "-", "ok": x <= 1 / 50,
                            "gap": None if x <= 1 / 50 else f"{x * 50:.2f}x over"})
    sc = result.get("stream_cost")
    if sc and sc.get("ratio") is not None:
        at_most("CPU per chunk: translator / httpx+json", sc["ratio"], 3.0, "{:.1f}x")
    rss = result.get("peak_rss_mb_max", {})
    if rss.get("ext_authz") is not None:
        at_most("peak RSS ext_authz (per process)", rss["ext_authz"], 80, "{:.0f} MB")
    if rss.get("translator") is not None:
        at_most("peak RSS translator (per process)", rss["translator"], 300, "{:.0f} MB")
    sc = result.get("scale")
    if sc and "2000" in sc["runs"] and sc.get("translator_workers", 1) == 1:
        r = sc["runs"]["2000"]
        at_least("scale N=2000: streams completed", r["completed"] / r["n"], 1.0, "{:.1%}")
        at_most("scale N=2000: added p99 delay per chunk", r["delay_ms"]["p99"], scale.TARGET_P99_MS, "{:.1f} ms")
        at_most("scale N=2000: translator RSS", r["rss_mb"]["translator"], scale.TARGET_TRANSLATOR_RSS_MB,
                "{:.0f} MB")
    return out


def render(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        f"keyrelay bench  {m['date_utc']}  commit {m['git_commit']}",
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['mem_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}, Envoy {m['envoy']}, {m['wrk']}",
        f"method: median of {s['runs']} runs x {s['duration_s']:.0f}s per point (warm-up {s['warmup_s']:.0f}s), "
        f"points interleaved ABC/CBA; ratios = median of per-run ratios; {s['pinning']}; "
        f"load avg at start {m['loadavg_start']}, end {result.get('loadavg_end')}",
    ]
    authz = result.get("authz")
    if authz:
        lines += ["", f"1. Authz path: Envoy direct_response, GET with a valid key, wrk -t1 "
                      f"(Envoy --concurrency {authz['envoy_concurrency']}; ext_authz filter settings from "
                      f"{authz['ext_authz_settings_source']})",
                  f"  {'listener':<22}{'req/s c16':>11}{'ratio':>8}{'p50 c1':>9}{'+p50 c1':>9}{'p99 c1':>9}"
                  f"{'p50 c16':>9}{'p99 c16':>9}{'authz CPU-s/1k':>16}{'envoy CPU-s/1k':>16}{'RSS MB':>8}"]
        pts = authz["points"]
        for label in ["plain"] + list(authz["ratios"]):
            c1, c16 = pts[f"{label}/c1"], pts[f"{label}/c16"]
            r = authz["ratios"].get(label, {})
            name = {"plain": "no authz", "base": "baseline, 1 worker"}.get(label, f"ext_authz {label[1:]} worker(s)")
            if label.endswith("budgets"):
                name = "ext_authz 1 + budgets"
            lines.append(
                f"  {name:<22}{_f(c16['rps']):>11}{_pct(r.get('throughput_c16')) if r else '':>8}"
                f"{_f(c1['p50_ms'], '{:.3f}'):>9}{_f(r.get('added_p50_ms_c1'), '{:+.3f}') if r else '':>9}"
                f"{_f(c1['p99_ms'], '{:.3f}'):>9}{_f(c16['p50_ms'], '{:.2f}'):>9}{_f(c16['p99_ms'], '{:.2f}'):>9}"
                f"{_f(c16['cpu_s_per_1k'].get('ext_authz'), '{:.3f}'):>16}"
                f"{_f(c16['cpu_s_per_1k'].get('envoy'), '{:.3f}'):>16}"
                f"{_f(_max_rss(authz['peak_rss_mb'].get(label)), '{:.0f}'):>8}")
            if any(p["errors"] for p in (c1, c16)):
                lines.append(f"    ! errors: c1 {c1['errors']}, c16 {c16['errors']}")
        lines.append("  (latencies in ms, measured by wrk; CPU-s/1k = CPU seconds per 1,000 requests at c16; "
                     "RSS = peak per process)")
        reuse = authz.get("requests_per_connection")
        if reuse:
            lines.append("  requests per connection (Envoy stats; must be >> 1): "
                         + ", ".join(f"{k} {_f(v, '{:,.0f}')}" for k, v in reuse.items()))
        for label, split in authz.get("worker_cpu_split", {}).items():
            busy = sorted(split.values(), reverse=True)
            if len(busy) > 1 and sum(busy):
                lines.append(f"  {label}: CPU seconds per ext_authz process (supervisor and workers): "
                             + ", ".join(f"{x:.1f}" for x in busy))
                if busy[1] < 0.25 * busy[0]:
                    lines.append(f"    ! {label}: one worker did nearly all the work: SO_REUSEPORT spreads "
                                 "connections, not requests, and Envoy opens one HTTP/2 connection per worker "
                                 "thread to the ext_authz cluster")
    tr = result.get("translator")
    if tr:
        lines += ["", f"2. Translator: fast loopback upstream ({tr['upstream_procs']} process), wrk -t1 "
                      f"-c{tr['connections']}, streaming = {tr['chunks']} chunks "
                      f"({tr.get('stream_writes', 'whole')} writes); "
                      f"full path Envoy config from "
                      f"{tr['full_path_envoy_config']}",
                  f"  {'body/mode':<19}{'path':<16}{'req/s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}"
                  f"   CPU-s per 1k requests: {'translator':>10}{'ext_authz':>10}{'envoy':>8}{'upstream':>9}"]
        names = {"a_direct": "(a) direct", "b_translator": "(b) translator", "c_full": "(c) full path",
                 "l_litellm": "(l) LiteLLM", "B_translator": "(b) baseline", "C_full": "(c) baseline",
                 "b_responses": "(b) Responses API"}
        for group, g in tr["groups"].items():
            for k, p in g["points"].items():
                ratio = ""
                if k == "b_translator":
                    ratio = _pct(g["translator_over_direct"])
                elif k == "c_full":
                    ratio = _pct(g["full_over_translator"])
                elif k == "l_litellm":
                    ratio = _pct(g["litellm"]["litellm_over_direct"])
                cpu = p["cpu_s_per_1k"]
                lines.append(
                    f"  {group if k == 'a_direct' else '':<19}{names[k]:<16}{_f(p['rps']):>9}{ratio:>8}"
                    f"{_f(p['p50_ms'], '{:.2f}'):>9}{_f(p['p99_ms'], '{:.2f}'):>9}{'':>26}"
                    f"{_f(cpu.get('translator', cpu.get('litellm')), '{:.3f}'):>10}"
                    f"{_f(cpu.get('ext_authz'), '{:.3f}'):>10}"
                    f"{_f(cpu.get('envoy'), '{:.3f}'):>8}{_f(cpu.get('upstream'), '{:.3f}'):>9}"
                    + (f"  ! {p['errors']} errors" if p["errors"] else ""))
            lines.append(f"  {'':<19}upstream busy {g['upstream_busy_during_b']:.0%} of a core during (b)"
                         + (f"; translator {g['translator_cpu_us_per_chunk']:.1f} us CPU per upstream chunk"
                            if "translator_cpu_us_per_chunk" in g else "")
                         + (f"; per text delta: chat {g['chat_cpu_us_per_delta']:.1f} us, Responses API "
                            f"{g['responses_cpu_us_per_delta']:.1f} us ({g['responses_over_chat_cpu']:.2f}x)"
                            if g.get("responses_over_chat_cpu") else ""))
            lp = g.get("litellm")
            if lp:
                lines.append(f"  {'':<19}CPU per request vs the LiteLLM proxy: translator "
                             f"1/{_f(_inv(lp['translator_cpu_over_litellm']))}, full path (Envoy + ext_authz + "
                             f"translator) 1/{_f(_inv(lp['full_cpu_over_litellm']))}")
        lines.append("  ratio: (b) = translator / direct upstream, (c) = full path / translator alone"
                     + (", (l) = LiteLLM proxy server / direct upstream (its CPU in the translator column; "
                        f"streams at c{tr.get('litellm_stream_connections')} for at least 5 s)"
                        if any("l_litellm" in g["points"] for g in tr["groups"].values()) else "")
                     + (", (b)/(c) baseline = the same points with the baseline tree's services"
                        if any("B_translator" in g["points"] for g in tr["groups"].values()) else "")
                     + "; same runs, same concurrency")
        lines.append("  bodies: " + "; ".join(f"{k} {v['anthropic_bytes']:,} B ({v['anthropic_from']})"
                                          for k, v in tr.get("bodies", {}).items() if k.endswith("/json")))
        reuse = tr.get("envoy_connection_reuse") or {}
        if reuse:
            lines.append("  full path, requests per connection (Envoy stats): "
                         + ", ".join(f"{k} {_f(v, '{:,.0f}')}" for k, v in reuse.items()))
        rss = tr["peak_rss_mb"]
        lines.append("  peak RSS MB: " + ", ".join(f"{n} {_f(_max_rss(v), '{:.0f}')}" for n, v in rss.items()))
        lines += cost_per_load(tr)
    if result.get("baseline"):
        lines += baseline_table(result)
    sc = result.get("stream_cost")
    if sc:
        lines += ["", "Streaming cost (CPU per upstream SSE frame, tiny body, "
                      f"{sc['frames_per_stream']} frames per stream)"]
        for row in sc["rows"]:
            lines.append(f"  {row['name']:<50}{_f(row['us_per_frame'], '{:.1f}'):>8} us/frame"
                         f"{_f(row['frames_per_cpu_s'], '{:,.0f}'):>12} frames per CPU-s"
                         f"{_f(row.get('vs_httpx'), '{:.1f}x'):>8}")
    cold = result.get("cold_start")
    if cold:
        lines += ["", "3. Cold start (process start -> ready line; median, warm page cache; first start apart)"]
        for name, c in cold.items():
            lines.append(f"  {name:<14}{c['median_s']:.2f} s   (first {c['first_s']:.2f} s; runs "
                         f"{', '.join(f'{x:.2f}' for x in c['runs_s'])})")
            if "first_response_median_s" in c:
                lines.append(f"  {'':<14}{c['first_response_median_s']:.2f} s   to the first answered request "
                             "(tiny body)")
    if result.get("scale"):
        lines += scale_table(result["scale"])
    if result.get("envoy"):
        lines += envoy_table(result["envoy"])
    ts = result.get("targets") or []
    if ts:
        lines += ["", "Targets", f"  {'target':<58}{'measured':>12}{'wanted':>14}  result"]
        for t in ts:
            verdict = "PASS" if t["ok"] else f"MISS ({t['gap']})"
            lines.append(f"  {t['name']:<58}{t['shown']:>12}{t['target']:>14}  {verdict}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)



def _inv(x: Any) -> float | None:
    return 1 / x if x and x == x else None


def cost_per_load(tr: dict) -> list[str]:
    """CPU cores per 1,000 requests/s on the full path (numerically the CPU seconds per 1,000 requests), by
    process: what a deployment needs per unit of load, independent of how the cores were shared here."""
    lines = ["", "Cost per load: CPU cores per 1,000 requests/s, full path (c), by process",
             f"  {'body/mode':<19}{'envoy':>8}{'ext_authz':>11}{'translator':>12}{'total':>8}"]
    for group, g in tr["groups"].items():
        cpu = g["points"]["c_full"]["cpu_s_per_1k"]
        parts = [cpu.get(p) for p in ("envoy", "ext_authz", "translator")]
        total = sum(x for x in parts if x == x and x is not None)
        lines.append(f"  {group:<19}{_f(parts[0], '{:.3f}'):>8}{_f(parts[1], '{:.3f}'):>11}"
                     f"{_f(parts[2], '{:.3f}'):>12}{_f(total, '{:.3f}'):>8}")
    stats = tr.get("envoy_stats")
    if stats:
        lines.append("  envoy: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return lines


def baseline_table(result: dict) -> list[str]:
    """Current tree against the baseline tree, measured interleaved in the same runs (ratio = current /
    baseline, median of per-repetition ratios; below 1 is less CPU)."""
    b = result["baseline"]
    lines = ["", f"Before/after in one run: current tree vs baseline {b['label']} (same runs, interleaved; "
                 "ratio = current / baseline, median of per-run ratios)",
             f"  {'metric':<66}{'current':>10}{'baseline':>10}{'ratio':>8}"]
    authz = (result.get("authz") or {}).get("baseline")
    if authz:
        t, p, c = authz["throughput_c16"], authz["added_p50_ms_c1"], authz["ext_authz_cpu_ms_c16"]
        lines.append(f"  {'authz throughput / no authz, c16 (1 worker)':<66}{_pct(t['current']):>10}"
                     f"{_pct(t['baseline']):>10}{_f(t['ratio'], '{:.2f}'):>8}")
        lines.append(f"  {'authz added p50 at c1, ms (1 worker)':<66}{_f(p['current'], '{:.3f}'):>10}"
                     f"{_f(p['baseline'], '{:.3f}'):>10}{_f(p['diff'], '{:+.3f}'):>8}")
        lines.append(f"  {'ext_authz CPU per request, ms (c16)':<66}{_f(c['current'], '{:.4f}'):>10}"
                     f"{_f(c['baseline'], '{:.4f}'):>10}{_f(c['ratio'], '{:.2f}'):>8}")
    for group, g in ((result.get("translator") or {}).get("groups") or {}).items():
        cmp_ = g.get("baseline")
        if not cmp_:
            continue
        for key, label in (("translator/translator", "translator alone: translator CPU/request, ms"),
                           ("full/translator", "full path: translator CPU/request, ms"),
                           ("full/ext_authz", "full path: ext_authz CPU/request, ms"),
                           ("full/envoy", "full path: envoy CPU/request, ms")):
            x = cmp_[key]
            lines.append(f"  {group + ' ' + label:<66}{_f(x['current_ms'], '{:.4f}'):>10}"
                         f"{_f(x['baseline_ms'], '{:.4f}'):>10}{_f(x['ratio'], '{:.2f}'):>8}")
        if "translator/us_per_chunk" in cmp_:
            x = cmp_["translator/us_per_chunk"]
            lines.append(f"  {group + ' translator CPU per upstream chunk, us':<66}{_f(x['current_us'], '{:.2f}'):>10}"
                         f"{_f(x['baseline_us'], '{:.2f}'):>10}{_f(x['ratio'], '{:.2f}'):>8}")
        x = cmp_["translator/rps"]
        lines.append(f"  {group + ' translator alone req/s':<66}{_f(x['current']):>10}{_f(x['baseline']):>10}"
                     f"{_f(x['ratio'], '{:.2f}'):>8}")
    return lines


def scale_table(sc: dict) -> list[str]:
    lines = ["", f"4. Concurrent long streams, full path (Envoy + ext_authz + "
                 f"{sc.get('translator_workers', 1)} translator worker(s)): each stream the "
                 f"Claude-Code-sized request, {sc['chunks_per_stream']} chunks every {sc['interval_ms']:.0f} ms "
                 f"(~{sc['hold_s']:.0f} s), then a tool call; upstream {sc['upstream_procs']} process(es)",
             "  added delay per chunk = arrival at the client - the upstream's stamp at its write (ms); "
             "RSS = peak during the run (MB); CPU = cores used on average over the run",
             f"  {'N':>6}{'completed':>11}{'p50':>7}{'p99':>7}{'p99.9':>7}{'max':>7}{'ttfb p99':>10}"
             f"{'RSS tr':>8}{'envoy':>7}{'authz':>7}   {'CPU tr':>7}{'envoy':>7}{'authz':>7}{'upstr':>7}"
             f"{'client':>8}{'load':>6}"]
    for n, r in sc["runs"].items():
        d, rss, cpu = r["delay_ms"], r["rss_mb"], r["cpu_cores"]
        lines.append(
            f"  {n:>6}{r['completed']:>6}/{r['n']:<4}{_f(d['p50'], '{:.1f}'):>7}{_f(d['p99'], '{:.1f}'):>7}"
            f"{_f(d['p999'], '{:.1f}'):>7}{_f(d['max'], '{:.0f}'):>7}{_f(r['ttfb_ms']['p99'], '{:.0f}'):>10}"
            f"{_f(rss['translator']):>8}{_f(rss['envoy']):>7}{_f(rss['ext_authz']):>7}   "
            f"{_f(cpu['translator'], '{:.2f}'):>7}{_f(cpu['envoy'], '{:.2f}'):>7}{_f(cpu['ext_authz'], '{:.2f}'):>7}"
            f"{_f(cpu['upstream'], '{:.2f}'):>7}{_f(r['client']['cores'], '{:.2f}'):>8}"
            f"{_f(r.get('loadavg'), '{:.1f}'):>6}")
        lines.append(f"  {'':>6}CPU per chunk (us): translator {_f(r['us_per_chunk']['translator'], '{:.0f}')}, "
                     f"envoy {_f(r['us_per_chunk']['envoy'], '{:.0f}')}, upstream "
                     f"{_f(r['us_per_chunk']['upstream'], '{:.0f}')}; translator runnable "
                     f"{_f(r['translator_runnable_share'], '{:.0%}')} of the wall time (all its processes), of "
                     f"which waiting for a CPU "
                     f"{_f(r['cpu_wait_s']['translator'], '{:.1f}')} s of {r['wall_s']:.0f} s")
        if r.get("capacity"):
            lines.append(capacity_line(r["capacity"], sc))
        if "targets_missed" in r:
            lines.append(f"  {'':>6}targets (every stream completed, added p99 <= {scale.TARGET_P99_MS:.0f} ms, "
                         f"translator RSS <= {scale.TARGET_TRANSLATOR_RSS_MB:.0f} MB): "
                         + ("met" if not r["targets_missed"] else "missed: " + "; ".join(r["targets_missed"])))
        if r.get("envoy_variants"):
            lines += variants_lines(r["envoy_variants"], sc)
        if r["errors"]:
            lines.append("    ! " + ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())))
    met = [int(n) for n, r in sc["runs"].items() if "targets_missed" in r and not r["targets_missed"]]
    if any("targets_missed" in r for r in sc["runs"].values()):
        lines.append(f"  largest N that met the targets in this run: {max(met) if met else 'none'} "
                     f"(of {', '.join(sc['runs'])}; {sc.get('translator_workers', 1)} translator worker(s))")
    return lines


def capacity_line(cap: dict, sc: dict) -> str:
    """The cores each process needs for the offered load, against what it can use and the machine's cores."""
    need, caps, over = cap["cores_needed"], cap["caps"], cap["over_cap"]
    cap_text = {"translator": lambda c: f"{c} worker(s) = at most {c} core(s)",
                "envoy": lambda c: f"--concurrency {c}", "ext_authz": lambda c: f"{c} worker"}

    def part(name: str) -> str:
        text = f"{name} {need.get(name, float('nan')):.2f}"
        notes = [cap_text[name](caps[name])] if name in caps and name in cap_text else []
        if name in over:
            notes.append(f"{over[name]:.1f}x over")
        return text + (f" ({', '.join(notes)})" if notes else "")

    total = cap["keyrelay_cores"] + cap["bench_cores"]
    verdict = ("fits" if cap["fits"] else
               "does not fit" + (f": needs {total / cap['machine_cores']:.2f}x the cores"
                                 if total > cap["machine_cores"] else ": a one-process cap is exceeded"))
    return (f"  {'':>6}capacity at the offered {cap['chunks_per_s']:,.0f} chunks/s (cores = CPU per chunk x "
            f"chunks/s): {', '.join(part(n) for n in ('translator', 'envoy', 'ext_authz'))}; keyrelay "
            f"{cap['keyrelay_cores']:.2f} + the bench's upstream and client {cap['bench_cores']:.2f} = {total:.2f} "
            f"of {cap['machine_cores']} cores: {verdict}")


def variants_lines(variants: dict, sc: dict) -> list[str]:
    base = (variants.get("as_is") or {}).get("envoy_us_per_chunk")
    conf = sc.get("envoy_variants", {})
    lines = [f"  {'':>6}Envoy variants in this run (its streams dealt over them): streams completed, added "
             f"p50 / p99 (ms), Envoy CPU per chunk, and that against as_is"]
    for name, v in variants.items():
        label = f"{name} (--concurrency {conf.get(name, {}).get('concurrency', '?')})"
        us = v["envoy_us_per_chunk"]
        lines.append(f"  {'':>8}{label:<36}{v['completed']:>6}/{v['streams']:<6}"
                     f"{_f(v['delay_ms']['p50'], '{:.1f}'):>7} /{_f(v['delay_ms']['p99'], '{:.1f}'):>7}"
                     f"{_f(us, '{:.1f}'):>8} us{_f(us / base if base and us else None, '{:.2f}'):>8}")
    return lines


def envoy_table(ev: dict) -> list[str]:
    names = {"as_is": "envoy.yaml as is", "no_access_log": "without the access log",
             "one_worker": "--concurrency 1"}
    lines = ["", "5. Envoy's share of the full path: the same translator and ext_authz behind Envoy variants, "
                 "interleaved, wrk c16",
             f"  {'body/mode':<19}{'variant':<24}{'req/s':>8}{'p50 ms':>8}   CPU-ms per request: "
             f"{'envoy':>7}{'ext_authz':>10}{'translator':>11}   envoy vs as is"]
    for group, g in ev["groups"].items():
        for i, (name, p) in enumerate(g.items()):
            cpu = p["cpu_s_per_1k"]
            lines.append(f"  {group if i == 0 else '':<19}{names.get(name, name):<24}{_f(p['rps']):>8}"
                         f"{_f(p['p50_ms'], '{:.2f}'):>8}{'':>23}{_f(cpu['envoy'], '{:.3f}'):>7}"
                         f"{_f(cpu['ext_authz'], '{:.3f}'):>10}{_f(cpu['translator'], '{:.3f}'):>11}"
                         f"   {_f(p['envoy_cpu_ratio'], '{:.2f}'):>6}"
                         + (f"  ! {p['errors']} errors" if p["errors"] else ""))
    st = ev.get("stats") or {}
    if st:
        lines.append("  envoy stats (as is): " + ", ".join(
            f"{k.replace('_', ' ')} {_f(v, '{:,.1f}')}" for k, v in st.items() if k != "requests"))
    perf = ev.get("perf") or {}
    if perf.get("error"):
        lines.append(f"  perf: {perf['error']}")
    elif perf:
        lines.append("  perf (as is, claude_code/json): by object " + ", ".join(
            f"{name} {pct:.0f}%" for name, pct in perf["by_dso"]))
        for name, pct in perf["top_symbols"][:10]:
            lines.append(f"    {pct:5.1f}%  {name}")
    return lines
