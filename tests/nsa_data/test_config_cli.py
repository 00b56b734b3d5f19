"""Configs: shipped files validate and round-trip; errors name the field; the CLI drives the library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nsa_data.cli import main
from nsa_data.config import DataParams, PrepareConfig, SamplingConfig, load_params

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "params.yaml", *sorted((REPO / "configs" / "data").glob("*.yaml"))]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in SHIPPED])
def test_shipped_params_validate_and_round_trip(path: Path) -> None:
    params = load_params(path)
    raw = yaml.safe_load(path.read_text())
    for section in ("synth", "prepare", "ingest"):
        if section in raw:
            assert getattr(params, section).model_dump(mode="json") == raw[section], section
    again = DataParams.model_validate(yaml.safe_load(yaml.safe_dump(params.model_dump(mode="json"))))
    assert again == params


def test_shipped_files_exist() -> None:
    assert (REPO / "params.yaml").is_file() and len(SHIPPED) >= 3


def test_other_sections_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("synth: {num_videos: 2}\ntrain: {lr: 0.001}\n")
    params = load_params(path)
    assert params.synth.num_videos == 2 and params.model_dump()["train"] == {"lr": 0.001}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("synth: {num_vidoes: 2}\n", "num_vidoes", id="typo"),
        pytest.param("prepare: {sampling: {fps: -1}}\n", "fps", id="negative-fps"),
        pytest.param("prepare: {store: jpeg}\n", "store", id="bad-enum"),
        pytest.param("- a list\n", "mapping", id="not-a-mapping"),
    ],
)
def test_params_errors_name_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_sampling_rejects_min_above_max_pixels() -> None:
    with pytest.raises(ValueError, match="min_pixels"):
        SamplingConfig(min_pixels=200704, max_pixels=50176)


def test_config_import_is_light() -> None:
    code = "import sys, nsa_data, nsa_data.config; print(sorted({'av', 'numpy', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_synth_prepare_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth = ["synth", "--out", str(tmp_path / "s"), "--quiet", "--set", "num_videos=3", "--set", "durations=[4.0]"]
    assert main(synth) == 0
    assert json.loads(capsys.readouterr().out)["videos"] == 3
    prep = ["prepare", "--manifest", str(tmp_path / "s" / "manifest.parquet"), "--out", str(tmp_path / "p"), "--quiet"]
    assert main([*prep, "--set", "sampling.fps=2", "--set", "num_workers=1"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    assert PrepareConfig.model_validate_json((tmp_path / "p" / "prepare_config.json").read_text()).sampling.fps == 2
    assert main([*prep, "--set", "shard_size"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["prepare", "--manifest", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "q")]) == 2
    assert "none.parquet" in capsys.readouterr().err
    assert main(["probe", str(tmp_path / "s" / "videos" / "synth-0-00000.mp4")]) == 0
    assert json.loads(capsys.readouterr().out)["video_grid_thw"] == [8, 8, 8]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "nsa-data"
    out = subprocess.run([str(script), "check-params", str(REPO / "params.yaml")], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["ok"]


def test_lazy_exports_resolve() -> None:
    import nsa_data

    for name in nsa_data.__all__:
        assert getattr(nsa_data, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute"):
        nsa_data.does_not_exist  # noqa: B018
