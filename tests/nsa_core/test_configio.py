"""Config files and ``--set`` overrides: one behaviour for every CLI."""

from __future__ import annotations

import pytest

from nsa_core.configio import apply_assignments, deep_merge, parse_assignment, read_yaml_mapping


def test_assignments_parse_yaml_values_and_merge_nested_keys():
    data = {"optim": {"lr": 1.0, "betas": [0.9, 0.999]}, "name": "tiny"}
    merged = apply_assignments(data, ["optim.lr=1.0e-4", "loop.max_steps=20", "name=big", "flags=[a, b]"])
    assert merged == {
        "optim": {"lr": 1e-4, "betas": [0.9, 0.999]},
        "loop": {"max_steps": 20},
        "name": "big",
        "flags": ["a", "b"],
    }
    assert data["optim"]["lr"] == 1.0


def test_deep_merge_replaces_non_mappings():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {"a": {"b": 3, "c": 2}, "d": [2]}


@pytest.mark.parametrize("item", ["novalue", "=3", ""])
def test_malformed_assignment_names_the_expected_form(item):
    with pytest.raises(ValueError, match="key=value"):
        parse_assignment(item)


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"params file .*missing\.yaml"):
        read_yaml_mapping(tmp_path / "missing.yaml", "params file")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a YAML mapping"):
        read_yaml_mapping(listing)
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
