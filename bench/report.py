"""The stdout table of a run (also pasted into README.md and docs/performance.md)."""
from __future__ import annotations

from typing import List

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
    reg = results.get("registry")
    if reg:
        p, s = reg["propagation"], reg["scale"]
        lines += ["", f"discovery propagation (n={p['n']}, from before the put/delete to the client's "
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
    lines.append(f"(whole run: {results['elapsed_s']:.0f} s)")
    return "\n".join(lines)
