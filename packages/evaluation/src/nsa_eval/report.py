"""Render finished sweeps as a Markdown and a self-contained HTML page with matplotlib plots (no network).

Plots: accuracy per branch combination (bar), accuracy over the b × w budget grid (x = log2 w, y = b, with
γ annotated), accuracy over frames × TPF, and accuracy per method.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from nsa_core.tracking import Tracker, choose_tracker
from nsa_eval.config import ReportConfig


def find_results(paths: tuple[str, ...]) -> list[Path]:
    """``results.json`` files named directly or found (recursively) in the named folders, sorted."""
    found: set[Path] = set()
    for name in paths:
        path = Path(name)
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(path.rglob("results.json"))
        else:
            raise FileNotFoundError(f"report input {path} does not exist; run the evaluate/ablate stage first")
    return sorted(found)


def _plot(doc: dict[str, Any], out_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r["ok"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if doc["kind"] == "budget":
        xs = [math.log2(r["coords"]["w"]) for r in rows]
        ys = [r["coords"]["b"] for r in rows]
        acc = [r["metrics"].get("accuracy", 0.0) for r in rows]
        points = ax.scatter(xs, ys, c=acc, s=[40 + 3 * a for a in acc], cmap="viridis", vmin=0, vmax=100)
        for x, y, r in zip(xs, ys, rows, strict=True):
            gamma = r["coords"].get("gamma")
            ax.annotate(
                f"\N{GREEK SMALL LETTER GAMMA}={100 * gamma:.1f}%" if gamma is not None else "",
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        fig.colorbar(points, ax=ax, label="accuracy (%)")
        ax.set(xlabel="log2 window w", ylabel="selected blocks b")
    elif doc["kind"] == "information":
        xs = [r["coords"]["frames"] for r in rows]
        ys = [r["coords"]["tokens_per_frame"] for r in rows]
        acc = [r["metrics"].get("accuracy", 0.0) for r in rows]
        points = ax.scatter(xs, ys, c=acc, s=[40 + 3 * a for a in acc], cmap="viridis", vmin=0, vmax=100)
        best = max(range(len(rows)), key=lambda i: acc[i])
        ax.annotate(
            f"best {acc[best]:.1f}", (xs[best], ys[best]), fontsize=8, xytext=(4, -10), textcoords="offset points"
        )
        ax.set(xscale="log", yscale="log", xlabel="frames F", ylabel="tokens per frame")
        fig.colorbar(points, ax=ax, label="accuracy (%)")
    else:
        labels = [r["label"] for r in rows]
        ax.bar(labels, [r["metrics"].get("accuracy", 0.0) for r in rows], color="tab:blue")
        ax.set(ylabel="accuracy (%)", ylim=(0, 100))
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.set_title(doc["sweep"], fontsize=10)
    fig.tight_layout()
    path = out_dir / f"{doc['sweep']}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(doc: dict[str, Any]) -> list[list[str]]:
    header = ["configuration", "accuracy (%)", "samples", "unparsed", "L (vision tokens)"]
    extra = [k for k in ("K", "gamma") if any(k in r["coords"] for r in doc["rows"])]
    rows = [header + extra]
    for r in doc["rows"]:
        m = r["metrics"]
        acc = f"{m['accuracy']:.1f}" if r["ok"] and "accuracy" in m else f"failed: {r['error']}"
        line = [
            r["label"],
            acc,
            f"{m.get('num_samples', 0):.0f}",
            f"{m.get('num_unparsed', 0):.0f}",
            f"{m.get('vision_tokens_mean', 0):.0f}",
        ]
        for key in extra:
            value = r["coords"].get(key)
            line.append("" if value is None else f"{100 * value:.2f}%" if key == "gamma" else f"{value:.0f}")
        rows.append(line)
    return rows


def render_report(config: ReportConfig, tracker: Tracker | None = None) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` (plots inlined), ``report.json`` and one PNG per sweep.

    Args:
        config: Inputs and output folder.
        tracker: Where the report is attached (a run named ``report``); built from ``config.tracking`` if None.

    Returns:
        Paths of ``markdown``, ``html`` and ``json``.

    Raises:
        FileNotFoundError: when no ``results.json`` is found.
    """
    from nsa_data.atomic import write_json_atomic, write_text_atomic

    files = find_results(config.sweeps)
    if not files:
        raise FileNotFoundError(f"no results.json under {list(config.sweeps)}; run `nsa-eval sweep` first")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = [json.loads(f.read_text()) for f in files]
    md, body = [f"# {config.title}", ""], [f"<h1>{html.escape(config.title)}</h1>"]
    for doc in docs:
        plot = _plot(doc, out_dir)
        table = _table(doc)
        md += [f"## {doc['sweep']} ({doc['kind']}, task {doc['task']})", ""]
        if doc.get("note"):
            md += [f"_{doc['note']}_", ""]
        md += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        md += ["| " + " | ".join(row) + " |" for row in table[1:]]
        md += ["", f"![{doc['sweep']}]({plot.name})" if plot else "", ""]
        cells = "".join(
            "<tr>" + "".join(f"<{t}>{html.escape(c)}</{t}>" for c in row) + "</tr>"
            for t, row in [("th", table[0])] + [("td", row) for row in table[1:]]
        )
        body += [
            f"<h2>{html.escape(doc['sweep'])} ({doc['kind']}, task {html.escape(doc['task'])})</h2>",
            f"<p><em>{html.escape(doc.get('note', ''))}</em></p>",
            f"<table>{cells}</table>",
        ]
        if plot:
            data = base64.b64encode(plot.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(doc["sweep"])}" src="data:image/png;base64,{data}">')
    style = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(config.title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "report.json"}
    write_text_atomic(paths["markdown"], "\n".join(md) + "\n")
    write_text_atomic(paths["html"], page)
    write_json_atomic(paths["json"], {"sweeps": docs, "sources": [str(f) for f in files]})
    tracker = tracker or choose_tracker(config.tracking)
    with tracker.run("report", params={"sweeps": [d["sweep"] for d in docs]}, tags={"nsa.report": "1"}):
        tracker.log_artifact(out_dir)
    return {k: str(v) for k, v in paths.items()}
