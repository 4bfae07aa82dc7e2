"""Errors are types, never sentences to search: a failed pipeline stage's record crosses the process boundary as
data, the pipeline bench skips a zero-bubble schedule only when the record says it cannot run here, and unknown
keywords are found from the callee's signature (a TypeError inside a constructor stays a bug)."""

from __future__ import annotations

import pytest
from _pipeline_setup import BATCHES, BUILDER, tiny

import datasets
import zoo
from benchmarks.pipeline import _not_runnable
from zoo.errors import UserError
from zoo.pipeline import PipelineError, launch
from zoo.pipeline.launch import StageFailure


@pytest.mark.dist
def test_a_failed_stage_reports_its_index_type_and_kind():
    with pytest.raises(PipelineError) as err:
        launch(tiny(fault="1:2:raise", steps=6), BUILDER, BATCHES)
    f = err.value.failure
    assert (f.stage, f.error_type, f.user_error) == (1, "RuntimeError", False)
    assert f.origin == "zoo.pipeline.engine" and f.message == "injected fault at step 2"


def _failure(**kw) -> PipelineError:
    base = dict(stage=0, error_type="ValueError", user_error=False, origin="zoo.pipeline._bp", message="boom")
    return PipelineError("pipeline failed: stage 0 failed", StageFailure(**(base | kw)))


def test_zero_bubble_skips_only_what_cannot_run_here():
    assert _not_runnable(UserError("zbv runs 2 pipeline stages per rank")) == "zbv runs 2 pipeline stages per rank"
    assert _not_runnable(_failure(user_error=True, error_type="LaunchError")) == "stage 0: LaunchError: boom"
    torch_refusal = _failure(origin="torch.distributed.pipelining.schedules")
    assert _not_runnable(torch_refusal) == "stage 0: ValueError: boom"
    assert _not_runnable(_failure()) is None  # a bug in our engine surfaces
    assert _not_runnable(_failure(origin="torch.nn.functional")) is None  # our bug, raised deeper in torch
    assert _not_runnable(PipelineError("stage 1 was killed by SIGKILL")) is None  # no record: not ours to excuse


def test_unknown_keywords_come_from_the_signature_and_inner_type_errors_stay_bugs():
    with pytest.raises(UserError, match="takes no keyword drop_rat \\(did you mean drop_rate\\?\\)"):
        zoo.create_model("resnet18", num_classes=10, img_size=32, drop_rat=0.1)
    with pytest.raises(TypeError) as err:  # a keyword resnet18 takes, with a value its constructor cannot use
        zoo.create_model("resnet18", num_classes=10, img_size=32, drop_path_rate="x")
    assert not isinstance(err.value, UserError)
    with pytest.raises(datasets.DatasetError, match=r"does not accept these options: \['foo'\]"):
        datasets.create_dataset("digits", "train", foo=1)
