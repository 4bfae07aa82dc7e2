"""The CSVs beside a leaderboard: every run's learning curve, and the label-noise audit of every noisy training set.

- `<leaderboard dir>/curves_<task>_<dataset>.csv`: one row per run × epoch (accuracy and noise benches): the
  validation metric of the best exit that epoch (`val_chosen`; BP has one exit, its last), of the last exit, the
  final exit's training loss, the epoch's learning rate and the validation protocol (`val_protocol`: clean, or noisy
  labels like the training ones). `leaderboards.render` plots one PNG per recipe.
- `<leaderboard>_audit.csv` (e.g. `noise_cls_digits_audit.csv`): one row per recipe × seed × noise rate × split
  (`train`, and `val` under the noisy-validation protocol), the same for every model and method trained on it: how
  many labels (cls) or object regions (seg) flipped, against `round(rate · N)`, per true class and per
  (true → noisy) transition.

Both are appended like the leaderboard rows (`results.append_rows`: locked, atomic) and carry the same environment
columns (commit, date) and run id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._runner import RunSpec
from .results import ENV_COLUMNS, append_rows
from .settings import RunConfig

__all__ = ["AUDIT_COLUMNS", "CURVE_COLUMNS", "audit_path", "audit_rows", "curve_rows", "curves_path", "write"]

CURVE_COLUMNS = (
    "bench", "task", "dataset", "model", "arch", "model_kwargs", "img_size", "train_size", "eval_size", "epochs",
    "batch_size", "lr", "budget", "method", "noise_kind", "noise_rate", "val_protocol", "seed", "epoch", "metric",
    "val_chosen", "val_block", "val_last", "train_loss", "epoch_lr", "config_hash", *ENV_COLUMNS, "run_id",
)  # fmt: skip
AUDIT_COLUMNS = (
    "bench", "task", "dataset", "img_size", "train_size", "budget", "noise_kind", "noise_rate", "split", "seed", "unit",
    "num_items", "num_flipped", "expected", "flips_per_class", "transitions", "images_changed", "config_hash",
    *ENV_COLUMNS, "run_id",
)  # fmt: skip


def curves_path(cfg: RunConfig) -> Path:
    return Path(cfg.leaderboard_dir) / f"curves_{cfg.task}_{cfg.dataset}.csv"


def audit_path(leaderboard: str | Path) -> Path:
    """The audit file beside a leaderboard CSV: `noise_cls_digits.csv` → `noise_cls_digits_audit.csv`."""
    leaderboard = Path(leaderboard)
    return leaderboard.with_name(f"{leaderboard.stem}_audit.csv")


def _chosen(record: dict[str, Any], method: str) -> tuple[float | None, int | None]:
    """The best exit's validation metric that epoch and its block (1-based); BP's one exit is its last."""
    last = record.get("val_last")
    vals = [(v, k + 1) for k, v in enumerate(record.get("val_per_block") or []) if v is not None]
    if method == "bp" or not vals:
        return last, len(record.get("val_per_block") or []) or None
    return max(vals)


def curve_rows(
    cfg: RunConfig, results: Iterable[dict[str, Any]], env: dict[str, str], run_id: str
) -> list[dict[str, Any]]:
    """One row per epoch of every run, from the runs' `history` (also kept in a resumed run's result.json)."""
    rows = []
    kwargs = ";".join(f"{k}={v}" for k, v in sorted(cfg.model_kwargs.items()))
    for r in results:
        for rec in r.get("history", []):
            if "val_per_block" not in rec:
                continue
            chosen, block = _chosen(rec, r["method"])
            losses = rec.get("train_loss") or []
            rows.append({
                "bench": cfg.bench, "task": cfg.task, "dataset": cfg.dataset, "model": r["model"],
                "arch": cfg.arch or "", "model_kwargs": kwargs,
                "img_size": cfg.img_size or "", "train_size": r.get("train_size"),
                "eval_size": cfg.eval_size or "all",
                "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "budget": cfg.budget,
                "method": r["method"], "noise_kind": cfg.opt("noise_kind"), "noise_rate": float(r["noise_rate"]),
                "val_protocol": r.get("val_protocol", "clean"), "seed": r["seed"], "epoch": rec["epoch"],
                "metric": rec.get("metric_name"), "val_chosen": chosen,
                "val_block": block, "val_last": rec.get("val_last"), "train_loss": losses[-1] if losses else None,
                "epoch_lr": rec.get("lr"), "config_hash": cfg.config_hash(), **env, "run_id": run_id,
            })  # fmt: skip
    return rows


def _audit_row(
    cfg: RunConfig, audit: dict[str, Any], train_size: int, env: dict[str, str], run_id: str
) -> dict[str, Any]:
    seg = "num_regions" in audit
    n = audit["num_regions"] if seg else audit["num_samples"]
    per_class = audit.get("flips_per_class") or []
    classes = range(1 if seg else 0, len(per_class))  # seg: background is never relabelled
    return {
        "bench": cfg.bench, "task": cfg.task, "dataset": cfg.dataset, "img_size": cfg.img_size or "",
        "train_size": train_size, "budget": cfg.budget, "noise_kind": audit["kind"],
        "noise_rate": float(audit["rate"]), "split": audit.get("split", "train"), "seed": audit["seed"],
        "unit": "regions" if seg else "labels",
        "num_items": n, "num_flipped": audit["num_flipped"], "expected": round(float(audit["rate"]) * n),
        "flips_per_class": ";".join(f"c{c}:{per_class[c]}" for c in classes),
        "transitions": ";".join(f"{a}>{b}:{k}" for a, b, k in audit.get("transitions", [])),
        "images_changed": len(audit.get("flipped_indices", [])), "config_hash": cfg.config_hash(), **env,
        "run_id": run_id,
    }  # fmt: skip


def audit_rows(
    cfg: RunConfig, results: Iterable[dict[str, Any]], run_dir: Path, env: dict[str, str], run_id: str
) -> list[dict[str, Any]]:
    """One row per (seed, noise rate, split) with noise, read from the runs' `noise_audit.json` (training labels) and
    `noise_audit_val.json` (validation labels, noisy-validation protocol); the audit is the same for every model and
    method of the recipe, so each (config hash, seed, rate, split) is written once."""
    seen: set[tuple] = set()
    rows = []
    for r in results:
        if not r["noise_rate"]:
            continue
        spec = RunSpec(r["model"], r["method"], r["seed"], r["noise_rate"], val_noise=r.get("val_protocol") == "noisy")
        for split, name in (("train", "noise_audit.json"), ("val", "noise_audit_val.json")):
            key = (cfg.config_hash(), r["seed"], float(r["noise_rate"]), split)
            path = Path(run_dir) / "runs" / spec.key / name
            if key in seen or not path.is_file():
                continue
            audit = json.loads(path.read_text())
            if not audit.get("kind"):
                continue
            seen.add(key)
            rows.append(_audit_row(cfg, {"split": split, **audit}, r["train_size"], env, run_id))
    return rows


def write(
    cfg: RunConfig, results: list[dict[str, Any]], run_dir: Path, leaderboard: Path, env: dict[str, str], run_id: str
) -> list[Path]:
    """Append the run's curves and (noisy runs) audit rows; returns the files appended to."""
    out = []
    curves = curve_rows(cfg, results, env, run_id)
    if curves:
        append_rows(curves_path(cfg), curves, CURVE_COLUMNS)
        out.append(curves_path(cfg))
    audits = audit_rows(cfg, results, run_dir, env, run_id)
    if audits:
        append_rows(audit_path(leaderboard), audits, AUDIT_COLUMNS)
        out.append(audit_path(leaderboard))
    return out
