"""Subprocess entry of :class:`nsa_eval.executors.SubprocessGPUExecutor`: ``python -m nsa_eval.worker IN OUT``.

``IN`` holds ``{"fn": "module:qualname", "item": ...}``; ``OUT`` receives ``{"ok", "value"}`` or ``{"ok", "error"}``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run one item.

    Args:
        argv: ``[input_json, output_json]``; ``sys.argv[1:]`` when None.

    Returns:
        0 when the output was written (even for a failed item), 2 for bad arguments.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m nsa_eval.worker INPUT.json OUTPUT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    module, _, name = job["fn"].partition(":")
    try:
        value = getattr(importlib.import_module(module), name)(job["item"])
        result = {"ok": True, "value": value}
    except Exception as err:
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    Path(args[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
