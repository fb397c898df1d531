"""The benchmark's chart: throughput and the latency distribution of every target, per protocol era, from a results
JSON (`python -m bench.chart [results.json] [out.png]`; `bench.run` draws it after every run).

Left: requests/s at the throughput concurrency (log scale: the proxies differ by two orders of magnitude). Right:
p50, p90 and p99 latency at concurrency 1 (log scale), so the latency each proxy adds over the direct backend shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def render(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["results"] if r.get("latency_run") and r.get("throughput_run")]
    eras = list(dict.fromkeys(r["era"] for r in runs))
    labels = list(dict.fromkeys(r["label"] for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(len(eras), 1)
    for e, era in enumerate(eras):
        by_label = {r["label"]: r for r in runs if r["era"] == era}
        xs = [i + e * width for i in range(len(labels))]
        rps = [by_label[label]["throughput_run"]["rps"] if label in by_label else 0 for label in labels]
        bars = axes[0].bar(xs, rps, width, label=era)
        axes[0].bar_label(bars, fmt="%.0f", fontsize=7)
        for q, marker in (("p50_ms", "o"), ("p90_ms", "^"), ("p99_ms", "v")):
            values = [by_label[label]["latency_run"][q] if label in by_label else None for label in labels]
            axes[1].scatter(xs, values, marker=marker, label=f"{era} {q.removesuffix('_ms')}", s=28)
    concurrency = result["config"]["concurrency"]
    for ax, title, unit in (
        (axes[0], f"throughput at c={concurrency} (server on one core)", "requests/s"),
        (axes[1], "latency at c=1", "ms"),
    ):
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        ax.set_xticks([i + width * (len(eras) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels([label.replace(" (", "\n(") for label in labels], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    commit = result.get("environment", {}).get("git", {}).get("commit", "")[:10]
    fig.suptitle(
        f"tools/call of an echo tool: direct vs virtual-mcp vs fastmcp proxy ({result['started_at']}, {commit})"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    render(json.loads(source.read_text()), out)
    print(f"chart: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
