"""The pipeline engine: equality with single-process training, faults, wrong launches, the partitioner, the CLI."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _pipeline_setup import BATCHES, BUILDER, TINY_CLI
from _pipeline_setup import tiny as _tiny

import zoo
from zoo.errors import UserError
from zoo.pipeline import (
    LaunchError,
    PipelineError,
    balanced_split,
    check_batches,
    check_config,
    launch,
    run_single,
    synthetic_batches,
)
from zoo.pipeline.__main__ import main

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parents[1]


def test_two_stage_pipeline_equals_single_process(tmp_path):
    from zoo.checkpoints import load_checkpoint

    cfg = _tiny(checkpoint=str(tmp_path / "ckpt"))
    result = launch(cfg, BUILDER, BATCHES)
    affinity = getattr(os, "sched_getaffinity", lambda pid: None)
    cores = affinity(0)
    ref = run_single(cfg, BUILDER, BATCHES, "deinforeg")["model"]
    assert affinity(0) == cores  # pinned while it ran, the caller's cores restored
    ours, theirs = result.model.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=k)
    assert result.partition == [2, 2] and len(result.stages) == 2
    assert all(s["steps"] == cfg.steps for s in result.stages)
    assert result.stages[0]["bytes_sent"] > 0 and result.trainer_state["step"] == cfg.steps
    # the pipelined run's checkpoint loads and predicts like the single-process model
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 3, 16, 16)
    ref.eval()
    torch.testing.assert_close(loaded(x), ref(x), rtol=1e-4, atol=1e-5)
    assert loaded.checkpoint_meta["pipeline"]["partition"] == [2, 2]


@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_dead_stage_stops_every_stage_naming_it(tmp_path, kind):
    cfg = _tiny(fault=f"1:2:{kind}", steps=6, checkpoint=str(tmp_path / "ckpt"))
    t0 = time.monotonic()
    with pytest.raises(PipelineError) as err:
        launch(cfg, BUILDER, BATCHES)
    assert time.monotonic() - t0 < 40
    msg = str(err.value)
    assert "stage 1" in msg
    assert ("injected fault" in msg) if kind == "raise" else ("SIGKILL" in msg)
    assert "stage 0 exited with code 1" in msg  # stopped by the watchdog, not left hanging
    assert not (tmp_path / "ckpt").exists()  # nothing written as complete


def test_a_stalled_stage_stops_the_run_within_30_s_naming_what_each_waited_for():
    """Stage 0 hangs at step 2 with its process alive (heartbeats go on): its watchdog sees no progress."""
    t0 = time.monotonic()
    with pytest.raises(PipelineError) as err:
        launch(_tiny(fault="0:2:hang", steps=6), BUILDER, BATCHES)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "stage 0 stalled: no progress for over 15 s while computing step 2" in msg, msg
    assert "stage 1 was waiting for micro-batch 2 from stage 0" in msg, msg
    assert elapsed < 30 + 15, f"{elapsed:.0f} s"  # 30 s, plus starting two processes on a busy 2-core box


def test_bp_baseline_runs_over_torch_pipelining():
    result = launch(_tiny(engine="gpipe", steps=3, micro_batches=2), BUILDER, BATCHES)
    assert len(result.stages) == 2 and result.stages[-1]["samples_per_s"] > 0
    assert result.stages[0]["bytes_sent_per_step"] > 0


def test_zero_bubble_schedules_train_the_same_bp_model_as_gpipe():
    """ZB1P, ZBV and DualPipeV (2 pipeline stages per rank, backward split in input and weight gradients) run on
    CPU/gloo and give GPipe's weights: the same micro-batches, gradients summed in another order."""
    cfg = _tiny(engine="gpipe", steps=3, micro_batches=4)
    init = zoo.pipeline.build(cfg, BUILDER, "bp").state_dict()
    ref = launch(cfg, BUILDER, BATCHES).model.state_dict()
    assert any(not torch.equal(ref[k], init[k]) for k in ref if ref[k].is_floating_point())  # it trained
    for engine in ("zb-interleaved", "zbv", "dualpipev"):
        result = launch(replace(cfg, engine=engine), BUILDER, BATCHES)
        got = result.model.state_dict()
        assert all(torch.isfinite(v).all() for v in got.values() if v.is_floating_point()), engine
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"{engine}: {k}")
        assert result.stages[0]["bytes_sent_per_step"] > 0 and result.stages[-1]["samples_per_s"] > 0


def test_zero_bubble_schedules_refuse_what_they_cannot_run():
    with pytest.raises(LaunchError, match="zbv runs 2 pipeline stages per rank: partition \\[1, 3\\]"):
        check_config(_tiny(engine="zbv", partition=[1, 3]))
    with pytest.raises(LaunchError, match="2 ranks need at least 4 blocks, but the model has 3"):
        check_config(_tiny(engine="zb-interleaved", partition=None), model=BUILDER(method="bp", num_blocks=3))
    with pytest.raises(LaunchError, match="dualpipev needs at least as many micro-batches .* micro_batches=2 < 4"):
        check_config(_tiny(engine="dualpipev", micro_batches=2))


def test_wrong_launches_give_one_clear_error_each():
    assert issubclass(LaunchError, UserError)  # the CLIs print it as one line and exit 2
    with pytest.raises(LaunchError, match="5 stages need at least 5 blocks, but the model has 4"):
        launch(_tiny(stages=5, partition=None), BUILDER, BATCHES)
    with pytest.raises(LaunchError, match="does not match the world size 3"):
        check_config(_tiny(), world=3)
    with pytest.raises(LaunchError, match="not divisible by micro_batches=3; valid choices: 1, 2, 4, 8"):
        launch(_tiny(engine="gpipe", micro_batches=3), BUILDER, BATCHES)
    with pytest.raises(LaunchError, match="partition \\[3, 3\\] must give 2 stages"):
        launch(_tiny(partition=[3, 3]), BUILDER, BATCHES)
    with pytest.raises(LaunchError, match="valid choices: deinforeg, greedy, scpl"):
        launch(_tiny(method="bp"), BUILDER, BATCHES)
    with pytest.raises(LaunchError, match="batches is empty"):
        check_batches([])
    with pytest.raises(LaunchError, match="one batch size, found \\[4, 8\\]"):
        check_batches([BATCHES[0], synthetic_batches(4, 1, 16)[0]])
    with pytest.raises(LaunchError, match="tensor pairs"):
        check_batches([1, 2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} .* already in use"):
            launch(_tiny(port=port), BUILDER, BATCHES)


def test_partitioner_minimises_the_slowest_stage():
    assert balanced_split([1, 1, 1, 5], 2) == [3, 1]
    assert balanced_split([4, 1, 1, 1, 1], 2) == [1, 4]
    assert balanced_split([1, 1, 1, 1], 4) == [1, 1, 1, 1]
    assert balanced_split([2, 2, 2], 2, link=[0, 5, 0]) == [1, 2]  # an expensive link moves the cut
    with pytest.raises(ValueError, match="cannot split 2 blocks into 3 stages"):
        balanced_split([1, 1], 3)


@pytest.mark.slow
def test_ctrl_c_stops_every_stage(tmp_path):
    cmd = [sys.executable, "-m", "zoo.pipeline", *TINY_CLI, "--steps", "100000", "--partition", "2,2"]
    cmd += ["--checkpoint", str(tmp_path / "ckpt")]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(15)
    os.killpg(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 130, out.decode()
    assert not (tmp_path / "ckpt").exists()


def test_cpu_stages_are_pinned_to_their_own_cores():
    from zoo.pipeline.engine import pin_cpu

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    before = os.sched_getaffinity(0)
    cores = sorted(before)
    try:
        assert pin_cpu(_tiny(pin_cpu=False), 0, 1) is None
        assert pin_cpu(_tiny(device="cuda"), 0, 1) is None
        assert pin_cpu(_tiny(), 0, len(cores) + 1) is None  # more stages than cores: left to the OS
        assert os.sched_getaffinity(0) == before
        last = len(cores) - 1
        assert pin_cpu(_tiny(), last, len(cores)) == [cores[last]]
        assert os.sched_getaffinity(0) == {cores[last]}
    finally:
        os.sched_setaffinity(0, before)


def test_torchrun_launch_trains_like_one_process(tmp_path):
    """The same code under torchrun's rendezvous: one stage per torchrun process, checkpoint from stage 0."""
    from zoo.checkpoints import load_checkpoint

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "zoo.pipeline", *TINY_CLI, "--steps", "3", "--warmup", "1", "--partition", "2,2"]
    cmd += ["--optimizer", "sgd", "--lr", "0.05", "--checkpoint", str(tmp_path / "ckpt")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "partition [2, 2]" in done.stdout
    cfg = _tiny(steps=3, warmup_steps=1)
    # `--batches synthetic`: the CLI's 8 seeded batches, the same in every torchrun process
    ref = run_single(cfg, BUILDER, synthetic_batches(8, 8, 16), "deinforeg")["model"].state_dict()
    ours = load_checkpoint(tmp_path / "ckpt").state_dict()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


def test_segmentation_pipeline_equals_single_process_and_checkpoints(tmp_path):
    """Dense heads sample pixels at random: per-block RNG streams make the draws the same in both layouts."""
    from zoo.checkpoints import load_checkpoint

    builder = functools.partial(
        zoo.create_model, "resnet18", task="seg", num_classes=3, img_size=32, num_blocks=6, head="pointwise"
    )
    batches = synthetic_batches(4, 3, img_size=32, num_classes=3, task="seg")
    cfg = _tiny(steps=3, partition=[4, 2], checkpoint=str(tmp_path / "ckpt"))
    result = launch(cfg, builder, batches)
    ref = run_single(cfg, builder, batches, "deinforeg")["model"].state_dict()
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)
    first = result.stages[0]
    # the decoder on stage 1 reads every encoder feature: stage 0 sends them all, not just its last output
    assert first["bytes_sent_per_step"] > 4 * 3 * 32 * 32 * 4
    model = load_checkpoint(tmp_path / "ckpt").eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_cli_trains_on_synthetic_batches(capsys):
    assert main([*TINY_CLI, "--batches", "synthetic", "--steps", "3", "--warmup", "1", "--partition", "3,1"]) == 0
    out = capsys.readouterr().out
    assert "partition [3, 1]" in out and "stage 1:" in out


def test_cli_trains_on_the_batches_a_user_function_returns(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_batches.py").write_text(
        "import torch\n"
        "CALLS = []\n"
        "def train(batch_size, seed):\n"
        "    CALLS.append((batch_size, seed))\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    return [(torch.randn(batch_size, 3, 16, 16, generator=g), torch.arange(batch_size) % 10)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [*TINY_CLI, "--batch-size", "6", "--seed", "3", "--batches", "my_batches:train", "--steps", "3"]
    assert main([*argv, "--warmup", "1", "--partition", "2,2"]) == 0
    import my_batches

    assert my_batches.CALLS == [(6, 3)]
    assert "partition [2, 2]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model-kwargs", "width"], "--model-kwargs expects key=value pairs"),
        (["--batches", "digits"], "--batches 'digits' is not valid; valid choices: synthetic, module:function"),
        (["--batches", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["--batches", "os:no_such_function"], "module 'os' has no 'no_such_function'"),
        (["--partition", "2,x"], "--partition expects blocks per stage"),
        (["--stages", "5"], "5 stages need at least 5 blocks"),
        (["--engine", "gpipe", "--micro-batches", "3"], "batch_size=8 is not divisible by micro_batches=3"),
        (["--engine", "dualpipev", "--micro-batches", "2"], "dualpipev needs at least as many micro-batches"),
        (["--engine", "zbv", "--partition", "1,3"], "zbv runs 2 pipeline stages per rank: partition [1, 3]"),
    ],
)
def test_cli_wrong_launches_exit_2_with_one_line(argv, needle, capsys):
    assert main([*TINY_CLI, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["--model", "resnet18", "--model-kwargs", "foo=1"], ["--model", "no_such_net"]])
def test_cli_unknown_model_or_keyword_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m zoo.pipeline: error: ") and err.count("\n") == 1, err
