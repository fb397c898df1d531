"""Results of a run: per target and era, ratios against the backend reached directly, a markdown table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.wrk import WrkResult

DIRECT = "direct"


@dataclass
class Outcome:
    """One target in one protocol era: its latency run (concurrency 1) and its throughput run, or why not."""

    target: str
    label: str
    era: str
    latency: WrkResult | None = None
    throughput: WrkResult | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in (self.latency, self.throughput) if r is not None)

    def error_sample(self) -> str:
        for run in (self.latency, self.throughput):
            if run is not None and run.error_sample:
                return run.error_sample
        return ""


def vs_direct(outcome: Outcome, direct: Outcome | None) -> dict[str, float | None]:
    """Ratios against the backend reached directly in the same era (None where either side is missing)."""
    ratios: dict[str, float | None] = {
        "throughput_rps_ratio": None,
        "latency_p50_ratio": None,
        "latency_p99_ratio": None,
        "added_p50_ms": None,
        "added_p99_ms": None,
    }
    if direct is None:
        return ratios
    if outcome.throughput and direct.throughput and direct.throughput.rps > 0:
        ratios["throughput_rps_ratio"] = round(outcome.throughput.rps / direct.throughput.rps, 3)
    if outcome.latency and direct.latency:
        for pct in ("p50", "p99"):
            mine, base = getattr(outcome.latency, f"{pct}_ms"), getattr(direct.latency, f"{pct}_ms")
            if mine is None or not base:
                continue
            ratios[f"latency_{pct}_ratio"] = round(mine / base, 3)
            ratios[f"added_{pct}_ms"] = round(mine - base, 3)
    return ratios


def direct_of(outcomes: list[Outcome], era: str) -> Outcome | None:
    return next((o for o in outcomes if o.target == DIRECT and o.era == era and o.error is None), None)


def outcome_json(outcome: Outcome, outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "target": outcome.target,
        "label": outcome.label,
        "era": outcome.era,
        "status": "error" if outcome.error else "ok",
        "error": outcome.error,
        "notes": outcome.notes,
        "latency_run": outcome.latency.as_dict() if outcome.latency else None,
        "throughput_run": outcome.throughput.as_dict() if outcome.throughput else None,
        "vs_direct": vs_direct(outcome, direct_of(outcomes, outcome.era)),
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(outcomes: list[Outcome], concurrency: int) -> str:
    c = concurrency
    header = (
        f"| era | target | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c={c} req/s | c={c} p50 ms | c={c} p99 ms "
        f"| c={c} req/s vs direct | c=1 p50 vs direct | c=1 added p50 ms | c=1 added p99 ms | errors |"
    )
    lines = [header, "|" + "---|" * 13]
    footnotes: list[str] = []
    for outcome in outcomes:
        if outcome.error:
            footnotes.append(f"{outcome.label} ({outcome.era}): {outcome.error}")
            lines.append(f"| {outcome.era} | {outcome.label} | error [{len(footnotes)}] |" + " |" * 10)
            continue
        lat, thr = outcome.latency, outcome.throughput
        ratios = vs_direct(outcome, direct_of(outcomes, outcome.era))
        errors = str(outcome.errors)
        if outcome.errors:
            footnotes.append(f"{outcome.label} ({outcome.era}) first bad response: {outcome.error_sample()[:300]}")
            errors += f" [{len(footnotes)}]"
        for run in (lat, thr):
            if run is not None and run.requests == 0:
                footnotes.append(
                    f"{outcome.label} ({outcome.era}) c={run.concurrency}: no call completed within the "
                    f"{run.duration_s:.0f} s run (every call took longer), so there is no latency figure"
                )
                errors += f" [{len(footnotes)}]"
        rps_ratio = ratios["throughput_rps_ratio"]
        p50_ratio = ratios["latency_p50_ratio"]
        added, added_p99 = ratios["added_p50_ms"], ratios["added_p99_ms"]
        cells = [
            outcome.era,
            outcome.label,
            _num(lat.rps if lat else None, ".0f"),
            _num(lat.p50_ms if lat else None, ".2f"),
            _num(lat.p99_ms if lat else None, ".2f"),
            _num(thr.rps if thr else None, ".0f"),
            _num(thr.p50_ms if thr else None, ".2f"),
            _num(thr.p99_ms if thr else None, ".2f"),
            "-" if rps_ratio is None else f"{rps_ratio:.2f}x",
            "-" if p50_ratio is None else f"{p50_ratio:.2f}x",
            "-" if added is None else f"{added:+.2f}",
            "-" if added_p99 is None else f"{added_p99:+.2f}",
            errors,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    compared = "\n".join(
        line for line in (peer_comparison(outcomes), baseline_comparison(outcomes), era_comparison(outcomes)) if line
    )
    if compared:
        text += "\n\n" + compared
    if footnotes:
        text += "\n\n" + "\n".join(f"[{i}] {note}" for i, note in enumerate(footnotes, 1))
    return text


def era_comparison(outcomes: list[Outcome]) -> str:
    """Per target measured in two eras: how much slower the slower era is (throughput, and c=1 p50)."""
    lines = []
    for target in dict.fromkeys(o.target for o in outcomes if o.target != DIRECT):
        runs = [o for o in outcomes if o.target == target and o.error is None and o.throughput and o.latency]
        if len(runs) != 2:
            continue
        a, b = runs
        assert a.throughput and b.throughput and a.latency and b.latency
        if not (a.throughput.rps and b.throughput.rps and a.latency.p50_ms and b.latency.p50_ms):
            continue
        rps = max(a.throughput.rps, b.throughput.rps) / min(a.throughput.rps, b.throughput.rps)
        p50 = max(a.latency.p50_ms, b.latency.p50_ms) / min(a.latency.p50_ms, b.latency.p50_ms)
        slower = a if a.throughput.rps < b.throughput.rps else b
        lines.append(
            f"{a.label}: {slower.era} is the slower era, {rps:.2f}x in throughput, {p50:.2f}x in c=1 p50 latency"
        )
    return "\n".join(lines)


def baseline_comparison(outcomes: list[Outcome], ours: str = "virtual-mcp", base: str = "virtual-mcp-baseline") -> str:
    """Per era: this checkout against the baseline commit measured in the same run (throughput, c=1 p50 and p99)."""
    lines = []
    for era in dict.fromkeys(o.era for o in outcomes):
        mine = next((o for o in outcomes if o.target == ours and o.era == era and o.error is None), None)
        then = next((o for o in outcomes if o.target == base and o.era == era and o.error is None), None)
        if mine is None or then is None:
            continue
        runs = (mine.throughput, then.throughput, mine.latency, then.latency)
        if any(r is None for r in runs):
            continue
        assert mine.throughput and then.throughput and mine.latency and then.latency
        if None in (mine.latency.p50_ms, then.latency.p50_ms, mine.latency.p99_ms, then.latency.p99_ms):
            continue
        assert mine.latency.p50_ms is not None and then.latency.p50_ms is not None
        assert mine.latency.p99_ms is not None and then.latency.p99_ms is not None
        lines.append(
            f"{era}: {mine.label} against {then.label}: throughput {mine.throughput.rps / then.throughput.rps:.2f}x, "
            f"c=1 p50 {mine.latency.p50_ms - then.latency.p50_ms:+.2f} ms, "
            f"c=1 p99 {mine.latency.p99_ms - then.latency.p99_ms:+.2f} ms"
        )
    return "\n".join(lines)


def peer_comparison(outcomes: list[Outcome], ours: str = "virtual-mcp") -> str:
    """Per era: our throughput (the c=N run) as a multiple of each peer's, measured in the same run."""
    lines = []
    for era in dict.fromkeys(o.era for o in outcomes):
        mine = next((o for o in outcomes if o.target == ours and o.era == era and o.error is None), None)
        if mine is None or mine.throughput is None:
            continue
        ratios = [
            f"{mine.throughput.rps / peer.throughput.rps:.1f}x {peer.label}"
            for peer in outcomes
            if peer.era == era
            and peer.target not in (ours, DIRECT, "virtual-mcp-baseline")
            and peer.error is None
            and peer.throughput is not None
            and peer.throughput.rps > 0
        ]
        if ratios:
            lines.append(f"{era}: {mine.label} throughput is " + ", ".join(ratios))
    return "\n".join(lines)
