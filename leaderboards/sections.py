"""One README section per bench whose CSV is not an accuracy or noise leaderboard: `SECTIONS` maps a CSV name's
prefix to the function that renders it (README lines and the PNGs it wrote). A new bench adds its function and one
entry here; `leaderboards/render.py` finds it by the prefix of its CSV (the longest prefix wins)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from ._boards import plot_cost
from ._common import _f, _fmt2, _group, _method_key, load_board, setup_name
from ._depth import depth_section
from ._memory import memory_section

__all__ = ["SECTIONS"]

Section = Callable[[Path], tuple[list[str], list[Path]]]


def _throughput_section(path: Path) -> tuple[list[str], list[Path]]:
    """One-device step time and memory per method, against BP."""
    rows = load_board(path)
    if not rows:
        return [], []
    groups = _group(rows)
    md = [f"## {path.stem}", "", "| setup | method | stages | ms/step | × bp | samples/s | peak MB |",
          "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for rs in groups.values():
        for r in sorted(rs, key=lambda r: _method_key(r["method"])):
            ratio = _f(r.get("ratio_vs_bp"))
            md.append(
                f"| {setup_name(r)} | {r['method']} | {r.get('stages')} | {float(r['step_ms']):.1f} "
                f"| {'' if ratio is None else f'{ratio:.2f}'} | {float(r['samples_per_s']):.1f} "
                f"| {_f(r.get('peak_mem_mb')) or 0:.0f} |"
            )
    md.append("")
    cost = plot_cost(groups, path.with_name(f"{path.stem}_cost.png"))
    if not cost:
        return md, []
    return md + [f"![{path.stem} cost]({cost.name})", ""], [cost]


def _lines_only(fn: Callable[[Path], list[str]]) -> Section:
    return lambda path: (fn(path), [])


def _speed_section(path: Path) -> list[str]:
    rows = load_board(path)
    out = [f"### Step-time ratio ({path.name}, pytest-benchmark)", ""]
    out += ["| model | img | batch | projector | bp ms | deinforeg ms | ratio | ratio (interleaved) | target | device "
            "| date |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for r in rows:
        out.append(
            f"| {r.get('model')} | {r.get('img_size')} | {r.get('batch_size')} | {r.get('projector')} "
            f"| {float(r['bp_ms']):.1f} | {float(r['deinforeg_ms']):.1f} | {float(r['ratio']):.3f} "
            f"| {_f(r.get('ratio_interleaved')) or 0:.3f} | ≤ {r.get('target')} | {r.get('device')} "
            f"| {r.get('date', '')[:10]} |"
        )
    return out + [""]


def _pipeline_section(path: Path) -> list[str]:
    """Multi-process pipeline rows (written by benchmarks/pipeline.py, which also draws the scaling plot)."""
    rows = list(csv.DictReader(path.open(newline="")))
    out = [f"## {path.stem}", "", "Each CPU stage process runs one thread and stands for one device (on its own core "
           "where the note says so). `M`: micro-batches per batch; `× best GPipe/1F1B` compares with the best "
           "GPipe / 1F1B row of the same run. `limit`: the × BP that as many independent single-device BP processes "
           "reach run at once (`bp-contended`, same run): the machine's own ceiling; `of limit`: a pipeline's × BP "
           "as a fraction of it. `balance`: mean over max of the stages' measured compute (1 = equal stages); "
           "`if balanced`: of limit ÷ balance, what the same work would reach split into equal stages, so the "
           "gap between it and 100% is the pipeline's extra work (local heads, communication), not its cut.",
           ""]  # fmt: skip
    out += ["| model | engine | stages | batch | partition | samples/s | × BP | × best GPipe/1F1B | limit | of limit "
            "| balance | if balanced | busy/stage | ms/stage predicted → measured | optimizer | commit | date (UTC) |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        engine, m = r.get("engine"), r.get("micro_batches", "1")
        if engine in ("gpipe", "1f1b"):
            engine += f" (M={m})"
        opt = r.get("note", "").partition("optimizer ")[2] or "not recorded (see findings)"
        if "gpu:" in r.get("note", ""):
            engine += f" [{r.get('device')}]"
        balance = stage_balance(r.get("measured_ms_per_stage")) if r.get("engine") == "deinforeg-pipe" else None
        frac = _f(r.get("fraction_of_limit"))
        out.append(
            f"| {r.get('model')} ({r.get('task')}, {r.get('img_size')}px) | {engine} | {r.get('stages')} "
            f"| {r.get('batch_size')} | {r.get('partition')} | {float(r['samples_per_s']):.1f} "
            f"| {_fmt2(r.get('speedup_vs_bp'))} | {_fmt2(r.get('speedup_vs_pipelining_bp'))} "
            f"| {_fmt2(r.get('contended_limit'))} | {_pct(r.get('fraction_of_limit'))} "
            f"| {'-' if balance is None else f'{balance:.2f}'} "
            f"| {'-' if balance is None or frac is None else f'{frac / balance:.0%}'} "
            f"| {r.get('busy_per_stage')} | {r.get('predicted_ms_per_stage')} → {r.get('measured_ms_per_stage')} "
            f"| {opt} | {r.get('commit', '')} | {r.get('date', '')[:16].replace('T', ' ')} |"
        )
    for png in sorted(path.parent.glob(f"{path.stem}_*.png")):
        out += ["", f"![{png.stem}]({png.name})"]
    return out + [""]


def stage_balance(ms_per_stage: str | None) -> float | None:
    """Mean over max of the stages' measured compute ms ("101.4/121.4" → 0.92): 1 when every stage works as long
    as the slowest, which sets a pipeline's pace; None for one stage or no figures."""
    ms = [x for x in (_f(v) for v in (ms_per_stage or "").split("/")) if x is not None]
    if len(ms) < 2 or max(ms) <= 0:
        return None
    return sum(ms) / len(ms) / max(ms)


def _pct(v: str | None) -> str:
    x = _f(v)
    return "-" if x is None else f"{x:.0%}"


def _grow_section(path: Path) -> list[str]:
    """Grown models next to the same model trained whole: every exit, and what each spent (every row: each run is
    its own comparison)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = [f"## {path.stem}", "",
           "A grown model against the same model trained with all blocks (same seeds, same epochs). `block-steps`: "
           "optimizer steps summed over the blocks that trained; ratios against the whole-model row of the run.", "",
           "| model | variant | setup | epochs | seeds | chosen exit (mean ± std) | every exit | block-steps (×) "
           "| train s (×) | commit |",
           "|---|---|---|---:|---|---:|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        setup = f"grow at {r['grow_at']}" if r.get("grow_at") else ""
        if r.get("freeze_overtaken") == "true" and r.get("variant") == "progressive":
            setup += ", overtaken frozen"
        if r.get("init_from"):
            setup = f"{r['init_from']} + {r.get('add_blocks')}"
        exits = " / ".join(r.get("per_block_mean", "").split(";"))
        out.append(
            f"| {r['model']} | {r['variant']} | {setup} | {r['epochs']} | {r['seeds'].replace(';', ', ')} "
            f"| {float(r['metric_mean']):.2f} ± {float(r['metric_std']):.2f} | {exits} "
            f"| {_f(r.get('block_steps')) or 0:.0f} ({_fmt2(r.get('block_steps_ratio'))}) "
            f"| {_f(r.get('train_s')) or 0:.1f} ({_fmt2(r.get('train_s_ratio'))}) | {r.get('commit', '')} |"
        )
    return out + [""]


SECTIONS: dict[str, Section] = {
    "speed_": _lines_only(_speed_section),
    "throughput_pipeline_": _lines_only(_pipeline_section),
    "throughput_": _throughput_section,
    "grow_": _lines_only(_grow_section),
    "depth_": depth_section,  # leaderboards/_depth.py; its `_runs.csv` sidecar renders with it
    "memory_": memory_section,
}
