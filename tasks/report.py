"""The evaluation report: Markdown and HTML under <workspace>/reports/, a bar chart per metric (base,
champion, challenger), regressed and fixed items side by side, the loss curve, the dataset and review policy."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from tasks.evaluate import Decision, ItemResult

METRICS = ("accuracy", "numeric_accuracy", "keyword_coverage", "invented_number_rate", "abstention_accuracy")


def bar_chart(scores: dict[str, dict[str, Any]], path: Path) -> Path:
    """One group of bars per metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(scores)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = [scores[label].get(m) or 0.0 for m in METRICS]
        positions = [x + i * width for x in range(len(METRICS))]
        bars = ax.bar(positions, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(METRICS))])
    ax.set_xticklabels([m.replace("_", "\n") for m in METRICS], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of items")
    ax.legend(fontsize=8)
    ax.set_title("evaluation on the golden set (invented_number_rate: lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    out_dir: Path,
    name: str,
    scores: dict[str, dict[str, Any]],
    decision: Decision | None,
    champion_items: list[ItemResult],
    challenger_items: list[ItemResult],
    context: dict[str, Any],
    loss_png: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.html`` (with ``<name>-metrics.png``); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = bar_chart(scores, out_dir / f"{name}-metrics.png")
    loss = None
    if loss_png and loss_png.exists():
        loss = out_dir / f"{name}-loss.png"
        shutil.copyfile(loss_png, loss)
    by_id = {r.id: r for r in champion_items}
    regressed = [
        (by_id[i], r) for r in challenger_items if (i := r.id) in (decision.regressed if decision else [])
    ]
    fixed = [(by_id[i], r) for r in challenger_items if (i := r.id) in (decision.fixed if decision else [])]

    md = [f"# Evaluation report `{name}`", ""]
    for key, value in context.items():
        md.append(f"- **{key}**: {value}")
    md += ["", "| metric | " + " | ".join(scores) + " |", "|---|" + "---|" * len(scores)]
    for metric in METRICS:
        cells = [_pct(scores[label].get(metric)) for label in scores]
        md.append(f"| {metric} | " + " | ".join(cells) + " |")
    md.append("| n | " + " | ".join(str(scores[label].get("n")) for label in scores) + " |")
    md += ["", f"![metrics]({chart.name})"]
    if loss:
        md += ["", f"![loss curve]({loss.name})"]
    if decision:
        md += ["", f"## Decision: {'PROMOTED' if decision.promote else 'REFUSED'}", ""]
        md += [f"- {reason}" for reason in decision.reasons]
        for label, pairs in (("Regressed", regressed), ("Fixed", fixed)):
            md += [
                "",
                f"### {label} items ({len(pairs)})",
                "",
                "| question | champion said | challenger said |",
                "|---|---|---|",
            ]
            md += [f"| {_cell(a.question)} | {_cell(a.given)} | {_cell(b.given)} |" for a, b in pairs[:30]]
    md_path = out_dir / f"{name}.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path = out_dir / f"{name}.html"
    html_path.write_text(_html(name, md, chart, loss), encoding="utf-8")
    return md_path, html_path


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    return (flat[:80] + "…" if len(flat) > 80 else flat).replace("|", "\\|")


def _html(name: str, md: list[str], chart: Path, loss: Path | None) -> str:
    """A self-contained page: the Markdown lines rendered simply (tables as tables, images inline)."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *rows = [r for r in table if not set("".join(r)) <= set("-")]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>"
            )
            table.clear()

    for line in md:
        if line.startswith("|"):
            table.append([html.escape(c.strip().replace("\\|", "|")) for c in line.strip("|").split(" | ")])
            continue
        flush()
        if line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<img src="{html.escape(src)}" alt="">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)}</title><style>{style}</style>"
        + "".join(body)
    )
