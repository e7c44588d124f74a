"""The stdout table of a run (also pasted into README.md and docs/performance.md)."""
from __future__ import annotations

from typing import List, Optional

from bench.run import LABELS


def _row(rows: List[dict], callers: int) -> dict:
    return next((r for r in rows if r["callers"] == callers), {})


def table(results: dict) -> str:
    lines = [f"{results['date']} on {results['machine']}; median of {results['rounds']} interleaved "
             f"rounds, {results['seconds_per_measurement']:.1f} s each", "",
             "| system | calls/s, 1 caller | p50 ms | p99 ms | calls/s, 64 callers | p50 ms | p99 ms "
             "| vs bare, 1 | vs bare, 64 | CPU us/call at 64: client / server |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = results["systems"].get("baseline")
    for system, rows in results["systems"].items():
        one, many = _row(rows, 1), _row(rows, 64)
        vs1 = f"{one['calls_per_s'] / _row(base, 1)['calls_per_s']:.2f}x" if base else "-"
        vs64 = f"{many['calls_per_s'] / _row(base, 64)['calls_per_s']:.2f}x" if base else "-"
        lines.append(f"| {LABELS.get(system, system)} | {one['calls_per_s']:,.0f} | "
                     f"{one['p50_ms']:.2f} | {one['p99_ms']:.2f} | {many['calls_per_s']:,.0f} | "
                     f"{many['p50_ms']:.2f} | {many['p99_ms']:.1f} | {vs1} | {vs64} | "
                     f"{many['client_cpu_us_per_call']:.0f} / {many['server_cpu_us_per_call']:.0f} |")
    for system, why in results.get("skipped", {}).items():
        lines.append(f"| {LABELS.get(system, system)} | skipped: {why} | | | | | | | | |")
    if results.get("ratios"):
        lines += ["", "ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in results["ratios"].items())]
    if results.get("balancer"):
        lines += ["", "| balancer case (2 nodes) | policy | calls/s, 1 caller | p99 ms | "
                  "calls/s, 64 callers | p50 ms | p99 ms |", "|---|---|---:|---:|---:|---:|---:|"]
        for key, rows in results["balancer"].items():
            case, policy = key.split("|")
            one, many = _row(rows, 1), _row(rows, 64)
            lines.append(f"| {case} | {policy} | {one['calls_per_s']:,.0f} | {one['p99_ms']:.2f} | "
                         f"{many['calls_per_s']:,.0f} | {many['p50_ms']:.2f} | {many['p99_ms']:.1f} |")
    lines += _registry_lines(results.get("registry"))
    lines += _scale_lines(results.get("scale"), results.get("registry"))
    lines.append(f"(whole run: {results['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def _registry_lines(reg: Optional[dict]) -> List[str]:
    if not reg:
        return []
    p, s = reg["propagation"], reg["scale"]
    lines = ["", f"discovery propagation (n={p['n']}, from before the put/delete to the client's "
             f"cache): add p50 {p['add_p50_ms']:.2f} ms (max {p['add_max_ms']:.1f}), "
             f"remove p50 {p['remove_p50_ms']:.2f} ms (max {p['remove_max_ms']:.1f})",
             f"scale: {s['services']:,} services x {s['nodes_per_service']} nodes "
             f"({s['registered']:,} records; client cached {s['cached_nodes']:,}, listed all in "
             f"{s['watch_all_s']:.1f} s)",
             "| registry | client RSS MB | first call ms | per call us (wall) | per call us (client CPU) |",
             "|---|---:|---:|---:|---:|"]
    for name in ("small", "large"):
        row = s[name]
        label = "HelloService only" if name == "small" else f"+{s['registered']:,} nodes, all watched"
        lines.append(f"| {label} | {row['rss_mb']:.1f} | {row['first_call_ms']:.2f} | "
                     f"{row['per_call_us']:.0f} | {row['per_call_cpu_us']:.0f} |")
    lean = s["large"]["lean_client"]
    lines.append(f"| same registry, a client watching only HelloService | | | "
                 f"{lean['per_call_us']:.0f} | {lean['per_call_cpu_us']:.0f} |")
    lines.append(f"per-call client CPU with the large registry: {s['per_call_growth']:.2f}x the small "
                 f"one, {s['per_call_growth_vs_lean']:.2f}x a lean client on the same registry")
    return lines


def _scale_lines(scale: Optional[dict], reg: Optional[dict]) -> List[str]:
    """The scale section: one line per measured figure, then the gateway and asyncio rows."""
    if scale is None and not reg:
        return []
    lines = ["", "scale (bench.scale, bench.registry):", "| figure | value | from |", "|---|---|---|"]
    for figure, value, source in _scale_rows(scale or {}, (reg or {}).get("scale", {})):
        lines.append(f"| {figure} | {value} | {source} |")
    if scale:
        lines.append("(scale parts: " + ", ".join(f"{part} {got.get('elapsed_s', 0):.0f} s"
                                                  for part, got in scale.items()) + ")")
    for part in ("gateway", "aio"):
        got = (scale or {}).get(part)
        if got is None:
            continue
        if "rows" not in got:
            lines += ["", f"{part}: {got.get('missing') or got.get('error')}"]
        elif got["rows"]:
            keys = [k for k in got["rows"][0]]
            lines += ["", f"{part} (bench.{part}.measure()):", "| " + " | ".join(keys) + " |",
                      "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in got["rows"]]
    return lines


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _scale_rows(scale: dict, reg: dict):
    """``(figure, value, source)`` for each figure that was measured, and why any part was not."""
    for part in ("etcd_load", "fanout", "workers"):
        if "error" in scale.get(part, {}):
            yield part, f"failed: {scale[part]['error']}", f"bench.{part}"
    load = scale.get("etcd_load", {}).get("per_1000_nodes")
    if load:
        yield ("etcd load per 1,000 nodes (TTL 10 s, keep-alive)",
               f"{load['requests_per_s']:.0f} requests/s, {load['new_connections_per_s']:.1f} new "
               f"connections/s, {load['connections_held']:.0f} held, etcd CPU "
               f"{load['etcd_cpu_pct']:.0f}%", "bench.etcd_load")
    watch = reg.get("watch_connections")
    if watch:
        yield (f"watch connections for {watch['services']:,} services",
               f"{watch['shared_connections']} shared (listed in {watch['shared_list_s']:.1f} s), "
               f"{watch['per_service_connections']} with a watch per service "
               f"({watch['per_service_list_s']:.1f} s)", "bench.registry")
    fanned = scale.get("fanout") or {}
    for fan, how in ((fanned, "a watch each"), (fanned.get("shared"), "one shared watch a process")):
        if fan and "join" in fan:
            yield (f"fan-out of one registration to {fan['watchers']:,} caches "
                   f"({fan['procs']} processes, {how}, {fan['registrations']} registrations)",
                   f"p50 {fan['join']['p50_ms']:.0f} ms, p99 {fan['join']['p99_ms']:.0f} ms, max "
                   f"{fan['join']['max_ms']:.0f} ms; missed {fan['missed']}; etcd "
                   f"{fan['etcd_cpu_s_per_registration'] * 1000:.0f} ms CPU per registration, "
                   f"{fan['etcd_cpu_pct']:.0f}% of a core; {fan['etcd_connections']:,} connections",
                   "bench.fanout")
    heap = reg.get("heap")
    if heap:
        rss = reg["large"]["rss_mb"] - reg["small"]["rss_mb"]
        yield (f"memory per cached node ({heap['cached_nodes']:,} nodes)",
               f"{heap['bytes_per_node']:.0f} bytes of Python heap, {100 * heap['records_share']:.0f}% "
               f"of it records; client RSS {rss:+.1f} MB with them all watched", "bench.registry")
    for row in scale.get("workers", {}).get("rows", ()):
        yield (f"workers: {row['what']}", f"1: {row['one_worker_per_s']:,.0f}/s, 2: "
               f"{row['two_workers_per_s']:,.0f}/s ({row['ratio']:.2f}x)", "bench.workers")
