"""`python -m leaderboards.render` on small CSVs: Markdown tables against BP and PNG plots."""

from __future__ import annotations

from benchmarks import accuracy, sidecars, throughput
from benchmarks.results import append_rows
from leaderboards.render import BEGIN, END, main, paired_diff


def _row(method, rate, per_seed, per_block, step, protocol="clean", final=None):
    mean = sum(per_seed) / len(per_seed)
    std = (sum((v - mean) ** 2 for v in per_seed) / (len(per_seed) - 1)) ** 0.5
    final = final or [v - 1 for v in per_seed]  # the last epoch, one point below the selected one
    fmean = sum(final) / len(final)
    return {
        "val_protocol": protocol, "selected_epoch": "2;3;2", "final_mean": fmean,
        "final_std": (sum((v - fmean) ** 2 for v in final) / (len(final) - 1)) ** 0.5,
        "final_per_seed": ";".join(f"{v:.4f}" for v in final), "final_block": "4;4;4", "threads": "1;1;2",
        "device": "cpu" if method == "bp" else "cuda:H200",
        "bench": "noise", "task": "cls", "model": "paper_vgg", "model_kwargs": "width=0.25", "img_size": 16,
        "method": method, "num_blocks": 4, "dataset": "digits", "train_size": 512, "epochs": 3, "batch_size": 64,
        "noise_kind": "symmetric", "noise_rate": rate, "seeds": "0;1;2", "metric": "accuracy", "metric_mean": mean,
        "metric_std": std, "metric_per_seed": ";".join(f"{v:.4f}" for v in per_seed), "best_block": "4;4;3",
        "per_block_mean": per_block, "last_mean": float(per_block.split(";")[-1]) - rate * 10,
        "adaptive_mean": None if method == "bp" else mean - 1, "adaptive_depth": 2.5,
        "params": 1000, "step_ms": step, "samples_per_s": 64000 / step, "peak_mem_mb": 50.0,
        "mem_kind": "cpu_peak_rss_growth", "torch": "2.14.1", "commit": "abc" if method == "bp" else "def",
        "date": "2026-01-01" if method == "bp" else "2026-01-03", "run_id": "r1",
    }  # fmt: skip


def test_render_writes_tables_and_plots(tmp_path):
    rows = []
    for rate, drop in ((0.0, 0), (0.2, 5), (0.4, 12)):
        rows.append(_row("bp", rate, [90 - drop, 91 - drop, 89 - drop], "-;-;-;90.00", 100.0))
        rows.append(_row("deinforeg", rate, [88 - drop / 2, 89 - drop / 2, 88 - drop / 2], "70;80;85;88", 110.0))
    append_rows(tmp_path / "noise_cls_digits.csv", rows, accuracy.COLUMNS)
    thr = {k: "" for k in throughput.COLUMNS} | {"model": "resnet18", "method": "bp", "step_ms": 10.0,
                                                 "samples_per_s": 6400, "stages": 1, "ratio_vs_bp": 1.0}  # fmt: skip
    append_rows(tmp_path / "throughput_cls_digits.csv", [thr], throughput.COLUMNS)
    (tmp_path / "README.md").write_text("# Leaderboards\n\nHand-written intro.\n")
    assert main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "Hand-written intro." in text and BEGIN in text and END in text
    # Δ with the paired t-test's p (differences 4, 4, 5: t = 13, 2 df); bold only at p < 0.05
    assert "| 0.4 | deinforeg | 82.33 ± 0.58 | **+4.33 ± 0.58 (p = 0.006)** | 2 3 2 | 4 4 3 | 81.33 ± 0.58 |" in text
    assert "| 0.2 | deinforeg | 85.83 ± 0.58 | +0.83 ± 0.58 (p = 0.130) |" in text  # t = 2.5: not significant
    assert "| 0 | bp | 90.00 ± 1.00 |  | 2 3 2 | 4 4 3 | 89.00 ± 1.00 |" in text  # BP selected and BP final
    assert (
        "DeInfoReg (selected) beats BP at noise 0.4 (+4.33 ± 0.58 (p = 0.006)); loses to BP at noise 0 "
        "(-1.67 ± 0.58 (p = 0.038)); no significant difference from BP at noise 0.2 (+0.83 ± 0.58 (p = 0.130)) "
        "(3 comparisons in its table). Its last block against BP's, by noise rate: 0: -2.00, 0.2: -2.00, 0.4: -2.00."
        in text
    )
    assert "selected on clean validation labels" in text and "(3 comparisons in this table)" in text
    # the setup line names every commit, device and thread count of the table, and the range of dates
    assert "devices: cpu; cuda:H200; threads per run: 1, 2;" in text
    assert "commits abc, def; 2026-01-01 to 2026-01-03" in text
    for png in ("noise_cls_digits_noise.png", "noise_cls_digits_blocks.png", "noise_cls_digits_cost.png",
                "throughput_cls_digits_cost.png"):  # fmt: skip
        assert (tmp_path / png).stat().st_size > 5000, png
    # rendering again replaces the generated part, keeps the rest, and appended rows supersede old ones
    append_rows(tmp_path / "noise_cls_digits.csv", [_row("bp", 0.0, [50, 50, 50], "-;-;-;50", 100.0)], accuracy.COLUMNS)
    assert main(["--dir", str(tmp_path)]) == 0
    text2 = (tmp_path / "README.md").read_text()
    assert text2.count(BEGIN) == 1 and "Hand-written intro." in text2
    assert "| 0 | bp | 50.00 ± 0.00 |" in text2 and "| 0 | bp | 90.00" not in text2


def test_each_noise_kind_gets_its_own_table_and_bp(tmp_path):
    """Pair and symmetric noise at the same rate are different settings: each method is compared with its own
    kind's BP, never mixed into one table."""
    sym = [_row("bp", 0.2, [80, 81, 79], "-;-;-;80", 100.0), _row("deinforeg", 0.2, [85, 86, 84], "85;80;80;80", 110.0)]
    pair = [
        _row("bp", 0.2, [60, 61, 59], "-;-;-;60", 100.0),
        _row("deinforeg", 0.2, [70, 71, 69], "70;65;62;61", 110.0),
    ]
    for r in pair:
        r["noise_kind"] = "pair"
    append_rows(tmp_path / "noise_cls_digits.csv", sym + pair, accuracy.COLUMNS)
    (tmp_path / "README.md").write_text("# Leaderboards\n")
    assert main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "### paper_vgg (width=0.25, 16px, 3 ep)\n" in text
    assert "### paper_vgg (width=0.25, 16px, 3 ep, pair noise)\n" in text
    assert "| 0.2 | deinforeg | 85.00 ± 1.00 | **+5.00 ± 0.00 (p < 0.001)** |" in text  # against symmetric BP (80)
    assert "| 0.2 | deinforeg | 70.00 ± 1.00 | **+10.00 ± 0.00 (p < 0.001)** |" in text  # against pair BP (60)
    assert text.count("| 0.2 | bp |") == 2


def test_clean_and_noisy_validation_rows_never_share_a_table(tmp_path):
    """Rows that selected on noisy validation labels get their own table, compared with the BP of their own
    protocol; a row written before the selection rule (no val_protocol, archive/) is captioned as such."""
    clean = [
        _row("bp", 0.4, [80, 81, 79], "-;-;-;80", 100.0),
        _row("deinforeg", 0.4, [85, 86, 84], "85;80;80;80", 110.0),
    ]
    noisy = [_row(m, 0.4, v, b, 100.0, protocol="noisy") for m, v, b in (("bp", [60, 62, 61], "-;-;-;60"),
             ("deinforeg", [70, 71, 69], "70;65;62;61"))]  # fmt: skip
    append_rows(tmp_path / "noise_cls_digits.csv", clean + noisy, accuracy.COLUMNS)
    (tmp_path / "README.md").write_text("# Leaderboards\n")
    assert main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "### paper_vgg (width=0.25, 16px, 3 ep)\n" in text
    assert "### paper_vgg (width=0.25, 16px, 3 ep, noisy validation labels)\n" in text
    assert "| 0.4 | deinforeg | 85.00 ± 1.00 | **+5.00 ± 0.00 (p < 0.001)** |" in text  # against clean-val BP (80)
    assert "| 0.4 | deinforeg | 70.00 ± 1.00 | **+9.00 ± 1.00 (p = 0.004)** |" in text  # against noisy-val BP (61)
    assert "selected on noisy validation labels" in text and text.count("(1 comparison in this table)") == 2
    old = {k: v for k, v in _row("bp", 0.0, [90, 91, 89], "-;-;-;90", 100.0).items()
           if k in ("bench", "task", "model", "method", "noise_rate", "seeds", "metric", "metric_mean", "metric_std",
                    "metric_per_seed", "noise_kind")}  # fmt: skip
    append_rows(tmp_path / "old" / "noise_cls_digits.csv", [old], [*old])
    assert main(["--dir", str(tmp_path / "old"), "--readme", str(tmp_path / "old.md")]) == 0
    assert "rows written before the selection rule" in (tmp_path / "old.md").read_text()


def test_audit_lists_a_noisy_label_set_once_for_models_that_share_it(tmp_path):
    append_rows(tmp_path / "noise_cls_digits.csv", [_row("bp", 0.4, [60, 61, 59], "-;-;-;60", 100.0)], accuracy.COLUMNS)
    audit = {"noise_kind": "symmetric", "noise_rate": 0.4, "split": "train", "seed": 0, "unit": "labels",
             "num_items": 100, "num_flipped": 40, "expected": 40, "flips_per_class": "c0:20;c1:20",
             "config_hash": "abc"}  # fmt: skip
    other_seed = audit | {"seed": 1, "flips_per_class": "c0:19;c1:21"}
    val = audit | {"split": "val", "num_items": 50, "num_flipped": 20, "expected": 20}
    append_rows(tmp_path / "noise_cls_digits_audit.csv", [audit, audit, other_seed, val], sidecars.AUDIT_COLUMNS)
    (tmp_path / "README.md").write_text("# Leaderboards\n")
    assert main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.count("| abc | train | symmetric | 0.4 | 0 | 40 / 40 |") == 1
    assert text.count("| abc | train | symmetric | 0.4 | 1 | 40 / 40 |") == 1
    assert text.count("| abc | val | symmetric | 0.4 | 0 | 20 / 20 | 50 labels |") == 1


def test_paired_diff_pairs_by_seed():
    a = {"seeds": "0;1;2", "metric_per_seed": "10;20;30"}
    b = {"seeds": "2;1;0", "metric_per_seed": "29;19;9"}
    mean, std, n = paired_diff(a, b)
    assert (mean, std, n) == (1.0, 0.0, 3)


def _curve(method, rate, seed, epoch, val, run_id="r1", h="abc123def456"):
    return {
        "bench": "noise", "task": "cls", "dataset": "digits", "model": "paper_vgg", "img_size": 16, "train_size": 512,
        "epochs": 4, "lr": 0.002, "budget": "quick", "method": method, "noise_kind": "symmetric", "noise_rate": rate,
        "seed": seed, "epoch": epoch, "metric": "accuracy", "val_chosen": val, "val_last": val, "config_hash": h,
        "run_id": run_id,
    }  # fmt: skip


def test_render_draws_one_learning_curve_plot_per_recipe(tmp_path):
    rows = [_curve(m, rate, s, e, 10 * e + s + (5 if m == "deinforeg" else 0) - 20 * rate)
            for m in ("bp", "deinforeg") for rate in (0.0, 0.4) for s in (0, 1) for e in range(1, 5)]  # fmt: skip
    rows += [_curve("bp", 0.0, 0, e, 99.0, run_id="r0", h="0123456789ab") for e in (1, 2)]  # another recipe
    rows += [_curve("bp", 0.0, 0, e, 1.0, run_id="r2") for e in range(1, 5)]  # a rerun supersedes bp seed 0
    sidecars_path = tmp_path / "curves_cls_digits.csv"
    append_rows(sidecars_path, rows, sidecars.CURVE_COLUMNS)
    assert main(["--dir", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "## Learning curves" in text
    for h in ("abc123def456", "0123456789ab"):
        png = tmp_path / f"curves_cls_digits_{h}.png"
        assert png.stat().st_size > 5000 and f"]({png.name})" in text
    assert "paper_vgg on digits: 16 px, train 512 images, 4 epochs, lr 0.002, quick budget" in text
    assert "## curves_cls_digits" not in text  # not rendered as a leaderboard


def test_latest_curve_rows_win():
    from leaderboards.render import _latest_runs

    rows = [_curve("bp", 0.0, 0, 1, 5.0, "r1"), _curve("bp", 0.0, 0, 1, 7.0, "r2"), _curve("bp", 0.0, 1, 1, 6.0, "r1")]
    rows = [{k: str(v) for k, v in r.items()} for r in rows]
    assert [r["val_chosen"] for r in _latest_runs(rows)] == ["7.0", "6.0"]
