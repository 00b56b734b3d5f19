"""Package dependencies run one way: kernels <- core <- data/training/evaluation <- flows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = {"prefect"}
FORBIDDEN = {
    "nsa-kernels/src/nsa_kernels": {"nsa_core", "nsa_data", "nsa_train", "nsa_eval", *ORCHESTRATION},
    "nsa-core/src/nsa_core": {
        "nsa_kernels",
        "nsa_data",
        "nsa_train",
        "nsa_eval",
        "ray",
        "mlflow",
        "dvc",
        *ORCHESTRATION,
    },
    "data-pipeline/src/nsa_data": {"nsa_kernels", "nsa_train", "nsa_eval", *ORCHESTRATION},
    "training/src/nsa_train": {"nsa_kernels", "nsa_eval", *ORCHESTRATION},
    "evaluation/src/nsa_eval": {"nsa_kernels", "nsa_train", *ORCHESTRATION},
}
ALLOWED_EXCEPTIONS = {
    # The entry-point target that hands the Triton backend to nsa-core imports nsa_core lazily;
    # nsa-core is the only caller, so it is always present there.
    ("nsa-kernels/src/nsa_kernels", "backend.py", "nsa_core"),
    # The MLflow tracker imports mlflow only when a caller chooses it (nsa-core[tracking]).
    ("nsa-core/src/nsa_core", "tracking.py", "mlflow"),
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downstream_layers(package):
    source = ROOT / "packages" / package
    violations = []
    for path in sorted(source.rglob("*.py")):
        relative = str(path.relative_to(source))
        for root in _imported_roots(path) & FORBIDDEN[package]:
            if (package, relative, root) not in ALLOWED_EXCEPTIONS:
                violations.append(f"{relative} imports {root}")
    assert not violations, f"{package} breaks the dependency direction: {violations}"
