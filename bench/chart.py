"""``python -m bench.chart results.json results.png``: calls/s and p99 per system, 1 and 64 callers."""
from __future__ import annotations

import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.run import LABELS  # noqa: E402


def draw(results: dict, path: str) -> None:
    systems = list(results["systems"])
    labels = [textwrap.fill(LABELS.get(s, s), 14) for s in systems]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.38
    xs = range(len(systems))
    for ax, key, title in ((axes[0], "calls_per_s", "calls/s (higher is better)"),
                           (axes[1], "p99_ms", "p99 latency, ms (lower is better, log scale)")):
        for k, (callers, color) in enumerate(((1, "#4C72B0"), (64, "#DD8452"))):
            values = [next(r[key] for r in results["systems"][s] if r["callers"] == callers)
                      for s in systems]
            bars = ax.bar([x + (k - 0.5) * width for x in xs], values, width,
                          label=f"{callers} caller{'s' if callers > 1 else ''}", color=color)
            ax.bar_label(bars, fmt="{:,.0f}" if key == "calls_per_s" else "{:.2g}", fontsize=7)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title)
        ax.legend()
        if key == "p99_ms":
            ax.set_yscale("log")
    fig.suptitle(f"Hello(\"world\"), 1 client process, 1 server process, loopback - {results['date']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        draw(json.load(f), sys.argv[2])
