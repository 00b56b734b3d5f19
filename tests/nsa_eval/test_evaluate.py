"""The evaluation loop on a tiny checkpoint: outputs, resume after a kill, methods, rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsa_eval import EvalConfig, MethodConfig, TaskConfig, evaluate
from nsa_eval.predictions import read_predictions


def _config(ckpt: Path, data: Path, out: Path, **method) -> EvalConfig:
    return EvalConfig(
        model_dir=str(ckpt),
        task=TaskConfig(root=str(data / "prepared")),
        method=MethodConfig(**method),
        output_dir=str(out),
    )


def test_outputs_and_resume_after_a_kill(nsa_checkpoint, micro_data, tmp_path):
    config = _config(nsa_checkpoint, micro_data, tmp_path)
    first = evaluate(config)
    lines = first.predictions.read_text().splitlines()
    assert first.new_samples == len(lines) == 4
    assert first.metrics["num_samples"] == 4 and 0.0 <= first.metrics["accuracy"] <= 100.0
    assert json.loads((Path(first.run_dir) / "metrics.json").read_text()) == first.metrics
    record = json.loads(lines[0])
    assert {"id", "response", "parsed", "score", "answer", "vision_tokens"} <= set(record)

    first.predictions.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed mid-line
    resumed = evaluate(config)
    assert resumed.new_samples == 2
    again = read_predictions(resumed.predictions)
    assert set(again) == {json.loads(line)["id"] for line in lines}
    for line in lines:
        original = json.loads(line)
        assert again[original["id"]]["response"] == original["response"]  # greedy decoding is deterministic
    assert resumed.metrics == first.metrics
    assert evaluate(config).new_samples == 0


def test_unparsable_answers_count_wrong_and_are_recorded(nsa_checkpoint, micro_data, tmp_path):
    result = evaluate(_config(nsa_checkpoint, micro_data, tmp_path))
    records = read_predictions(result.predictions).values()
    unparsed = sum(r["parsed"] is None for r in records)
    assert result.metrics["num_unparsed"] == unparsed
    assert all(r["score"] == 0.0 for r in records if r["parsed"] is None)


def test_unreadable_video_is_recorded_and_the_run_goes_on(nsa_checkpoint, micro_data, tmp_path):
    broken = tmp_path / "synth"
    broken.mkdir()
    (broken / "manifest.parquet").write_bytes((micro_data / "synth" / "manifest.parquet").read_bytes())
    (broken / "videos").mkdir()
    config = EvalConfig(
        model_dir=str(nsa_checkpoint), task=TaskConfig(root=str(broken), frames=4), output_dir=str(tmp_path / "out")
    )
    result = evaluate(config)
    records = list(read_predictions(result.predictions).values())
    assert len(records) == 4 and all("VideoReadError" in r["error"] or "missing" in r["error"] for r in records)
    assert result.metrics["num_errors"] == 4 and result.metrics["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("method", "checkpoint", "error"),
    [
        pytest.param("dense-transfer", "dense_checkpoint", "needs NSA-trained weights", id="dense-transfer-on-dense"),
        pytest.param("nsa-at-test", "nsa_checkpoint", "needs dense weights", id="nsa-at-test-on-nsa"),
    ],
)
def test_method_must_fit_the_checkpoint(method, checkpoint, error, request, micro_data, tmp_path):
    from nsa_eval.inference import load_model

    ckpt = request.getfixturevalue(checkpoint)
    with pytest.raises(ValueError, match=error):
        load_model(_config(ckpt, micro_data, tmp_path, name=method))


def test_methods_set_the_attention_mode_and_overrides(nsa_checkpoint, dense_checkpoint, micro_data, tmp_path):
    from nsa_core.models.qwen2_5_vl import get_nsa_settings
    from nsa_eval.inference import load_model

    dense = get_nsa_settings(load_model(_config(nsa_checkpoint, micro_data, tmp_path, name="dense-transfer")))
    assert dense.attention == "dense"
    sparse = get_nsa_settings(
        load_model(_config(nsa_checkpoint, micro_data, tmp_path, name="nsa", window=8, branches=("cmp", "swd")))
    )
    assert (sparse.attention, sparse.nsa.window, sparse.nsa.branches) == ("nsa", 8, ("cmp", "swd"))
    at_test = get_nsa_settings(load_model(_config(dense_checkpoint, micro_data, tmp_path, name="nsa-at-test")))
    assert at_test.attention == "nsa"


def test_resampling_changes_the_video_token_count(nsa_checkpoint, micro_data, tmp_path):
    base = _config(nsa_checkpoint, micro_data, tmp_path)
    small = base.model_copy(
        update={"task": base.task.model_copy(update={"frames": 4, "tokens_per_frame": 4, "limit": 1})}
    )
    large = base.model_copy(
        update={"task": base.task.model_copy(update={"frames": 8, "tokens_per_frame": 4, "limit": 1})}
    )
    assert evaluate(small).metrics["vision_tokens_mean"] < evaluate(large).metrics["vision_tokens_mean"]
