"""Ingest of LLaVA-Video-178K and ms-swift annotations: parsing, per-rule reports and rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsa_data.config import IngestConfig, NonEmptyRule, ReadableRule, SampledFramesRule, UniqueIdRule
from nsa_data.errors import ManifestError
from nsa_data.ingest import ingest, split_options
from nsa_data.manifest import read_manifest


@pytest.mark.parametrize(
    ("text", "question", "options"),
    [
        pytest.param(
            "What is shown?\nA. a cat\nB. a dog\nC. a bird\nAnswer with the option's letter from the given choices "
            "directly.",
            "What is shown?",
            ("a cat", "a dog", "a bird"),
            id="llava-mc",
        ),
        pytest.param("Where?\n(A) left\n(B) right", "Where?", ("left", "right"), id="parenthesised"),
        pytest.param("Describe the video in detail.", "Describe the video in detail.", (), id="open-ended"),
        pytest.param("Pick\nA. only one", "Pick\nA. only one", (), id="single-option-is-text"),
        pytest.param("Q\nB. starts at B\nC. x", "Q\nB. starts at B\nC. x", (), id="not-from-A"),
    ],
)
def test_split_options(text: str, question: str, options: tuple[str, ...]) -> None:
    assert split_options(text) == (question, options)


@pytest.fixture
def annotations(tmp_path: Path, make_clip) -> tuple[Path, Path, Path]:
    """A LLaVA-Video JSON and an ms-swift JSONL over clips of 1 s, 3 s and 8 s (4, 12, 32 frames at 4 fps)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, seconds in (("short", 1), ("mid", 3), ("long", 8)):
        make_clip(num=8 * seconds, fps=8.0).rename(videos / f"{name}.mp4")
    llava = [
        {
            "id": "mc1",
            "video": "videos/mid.mp4",
            "data_source": "academic",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat color?\nA. red\nB. blue\nAnswer with the option's letter."},
                {"from": "gpt", "value": "B."},
            ],
        },
        {
            "id": "oe",
            "video": "videos/mid.mp4",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat happens?"},
                {"from": "gpt", "value": "A ball rolls."},
                {"from": "human", "value": "And then?"},
                {"from": "gpt", "value": "It stops."},
            ],
        },
        {
            "id": "short",
            "video": "videos/short.mp4",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}],
        },
        {
            "id": "long",
            "video": "videos/long.mp4",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}],
        },
        {
            "id": "gone",
            "video": "videos/missing.mp4",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}],
        },
        {
            "id": "empty",
            "video": "videos/mid.mp4",
            "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "  "}],
        },
        {"id": "broken", "video": "videos/mid.mp4"},
        {
            "id": "badmc",
            "video": "videos/mid.mp4",
            "conversations": [{"from": "human", "value": "Q?\nA. x\nB. y"}, {"from": "gpt", "value": "maybe z"}],
        },
    ]
    swift = [
        {
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "<video>Which one?\nA. up\nB. down"},
                {"role": "assistant", "content": "down"},
            ],
            "videos": ["videos/mid.mp4"],
        },
        {
            "id": "mc1",
            "messages": [{"role": "user", "content": "<video>Dup?"}, {"role": "assistant", "content": "yes"}],
            "videos": ["videos/mid.mp4"],
        },
    ]
    llava_path, swift_path = tmp_path / "llava.json", tmp_path / "swift.jsonl"
    llava_path.write_text(json.dumps(llava))
    swift_path.write_text("\n".join(json.dumps(r) for r in swift))
    return llava_path, swift_path, tmp_path


def test_ingest_reports_every_rule(annotations) -> None:
    llava, swift, root = annotations
    rules = (ReadableRule(), NonEmptyRule(), UniqueIdRule(), SampledFramesRule(fps=4.0, min=8, max=20))
    report = ingest([llava, swift], root / "out" / "manifest.parquet", IngestConfig(rules=rules), progress=False)
    removed = {r["rule"]["rule"]: r["removed"] for r in report["rules"]}
    assert report["malformed_records"] == 2 and report["rows_parsed"] == 9
    assert removed == {"readable": 1, "non_empty": 1, "unique_id": 1, "sampled_frames": 2}
    rows = {r.id: r for r in read_manifest(root / "out" / "manifest.parquet")}
    assert report["rows_kept"] == len(rows) == 4
    assert (
        rows["mc1"].options == ("red", "blue") and rows["mc1"].answer == "B" and rows["mc1"].question == "What color?"
    )
    assert rows["oe-1"].question == "And then?" and rows["oe-1"].answer == "It stops." and rows["oe-1"].options == ()
    assert rows["swift-0"].answer == "B" and rows["swift-0"].task == "multiple_choice"
    assert rows["mc1"].frames == 24 and rows["mc1"].duration == pytest.approx(3.0)
    rejects = [json.loads(line) for line in (root / "out" / "manifest.rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects} == {"broken", "badmc", "gone", "empty", "mc1", "short", "long"}
    assert len(rejects) == report["rows_parsed"] - len(rows) + report["malformed_records"]


def test_videonsa_filter_defaults(annotations) -> None:
    llava, _, root = annotations
    report = ingest([llava], root / "m.parquet", progress=False)
    assert report["rules"][-1]["rule"] == {"rule": "sampled_frames", "fps": 4.0, "min": 350, "max": 550}
    assert report["rows_kept"] == 0 and (root / "m.report.json").is_file()


def test_bad_annotation_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"x\.json"):
        ingest([tmp_path / "x.json"], tmp_path / "m.parquet", progress=False)


def test_cli_ingest_with_rule_override(annotations, capsys: pytest.CaptureFixture[str]) -> None:
    from nsa_data.cli import main

    llava, swift, root = annotations
    out = root / "cli" / "manifest.parquet"
    args = ["ingest", "--input", str(llava), "--input", str(swift), "--out", str(out), "--quiet"]
    assert main([*args, "--set", "rules=[{rule: readable}]", "--video-root", str(root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["rule"]["rule"] for r in report["rules"]] == ["readable"] and report["rows_kept"] == 8
    assert len(read_manifest(out)) == 8
    assert main([*args, "--set", "rules=[{rule: sharpness}]"]) == 2
    assert "sharpness" in capsys.readouterr().err
