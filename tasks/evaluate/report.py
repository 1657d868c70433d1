"""The evaluation report: Markdown and HTML under <workspace>/reports/. Both score families (the *model*'s own
answers and what was *shown*) for every model and mode, per question set, a bar chart of the model scores, the
guard's actions as a chart, the decision per mode with its intervals and McNemar p-values, the items that
regressed and were fixed in every mode side by side, the loss curve, the dataset and who reviewed it."""

from __future__ import annotations

import base64
import html
import re
import shutil
from pathlib import Path
from typing import Any

from tasks.evaluate.evaluate import FAMILIES, MODE_NAMES, Decision, Evaluation, fmt

METRICS = (
    "accuracy",
    "numeric_accuracy",
    "keyword_coverage",
    "invented_number_rate",
    "abstention_accuracy",
    "echo_rate",
)
GUARD_ACTIONS = ("passed", "retried_ok", "quoted_evidence", "abstained", "flagged", "unguarded")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(scores: dict[str, dict[str, Any]], path: Path, family: str = "model") -> Path:
    """One group of bars per metric, one bar per model and mode (``family`` scores; n/a drawn as 0)."""
    plt = _pyplot()
    labels = list(scores)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = [scores[label][family].get(m) for m in METRICS]
        positions = [x + i * width for x in range(len(METRICS))]
        bars = ax.bar(positions, [v or 0.0 for v in values], width, label=label)
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=7)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(METRICS))])
    ax.set_xticklabels([m.replace("_", "\n") for m in METRICS], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of items")
    ax.legend(fontsize=8)
    ax.set_title(f"{family} scores (invented_number_rate, echo_rate: lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def guard_chart(scores: dict[str, dict[str, Any]], path: Path) -> Path:
    """Stacked bars: what the guard did with each model's answers, per model and mode."""
    plt = _pyplot()
    labels = list(scores)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = [0.0] * len(labels)
    for action in GUARD_ACTIONS:
        counts = [float(scores[label]["guard_actions"].get(action, 0)) for label in labels]
        if not any(counts):
            continue
        ax.bar(labels, counts, bottom=bottom, label=action)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_ylabel("answers")
    ax.set_title("guard actions (quoted_evidence and abstained: the model's answer was not shown)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def column_name(label: str, mode: str) -> str:
    """How a model and mode head a report column: "challenger" (closed book), "challenger grounded"."""
    return label if mode == "closed_book" else f"{label} {mode}"


def write_report(
    out_dir: Path,
    name: str,
    by_mode: dict[str, dict[str, dict[str, Any]]],
    decisions: dict[str, Decision],
    evaluations: dict[str, dict[str, Evaluation]],
    context: dict[str, Any],
    loss_png: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.html`` (with ``<name>-metrics.png`` and ``<name>-guard.png``);
    ``scores`` maps mode -> label -> an evaluation's metrics. Returns both paths."""
    scores = {
        column_name(label, mode): metrics
        for mode, by_label in by_mode.items()
        for label, metrics in by_label.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = bar_chart(scores, out_dir / f"{name}-metrics.png")
    guard = guard_chart(scores, out_dir / f"{name}-guard.png")
    loss = None
    if loss_png and loss_png.exists():
        loss = out_dir / f"{name}-loss.png"
        shutil.copyfile(loss_png, loss)

    md = [f"# Evaluation report `{name}`", ""]
    for key, value in context.items():
        md.append(f"- **{key}**: {value}")
    md += [
        "",
        "*model*: the model's own answer (its draft, or its constrained retry); a quote or abstention by the "
        "guard counts as the model failing. *shown*: what the user saw. n/a: no item measures it.",
        "",
        "| family | metric | " + " | ".join(scores) + " |",
        "|---|---|" + "---|" * len(scores),
    ]
    for family in FAMILIES:
        for metric in METRICS:
            cells = [fmt(scores[label][family].get(metric)) for label in scores]
            md.append(f"| {family} | {metric} | " + " | ".join(cells) + " |")
    md.append("| | n | " + " | ".join(str(scores[label]["model"].get("n")) for label in scores) + " |")
    md += ["", f"![model scores]({chart.name})", "", "## By question set", ""]
    md += ["| model and mode | set | n | model accuracy | model numeric | shown accuracy | shown numeric |"]
    md += ["|---|---|---|---|---|---|---|"]
    for label, metrics in scores.items():
        for set_name, families in metrics.get("per_set", {}).items():
            m, s = families["model"], families["shown"]
            md.append(
                f"| {label} | {set_name} | {m['n']} | {fmt(m['accuracy'])} | {fmt(m['numeric_accuracy'])} | "
                f"{fmt(s['accuracy'])} | {fmt(s['numeric_accuracy'])} |"
            )
    md += ["", "## Guard actions", "", "| model and mode | " + " | ".join(GUARD_ACTIONS) + " |"]
    md += ["|---|" + "---|" * len(GUARD_ACTIONS)]
    for label, metrics in scores.items():
        counts = metrics.get("guard_actions", {})
        md.append(f"| {label} | " + " | ".join(str(counts.get(a, 0)) for a in GUARD_ACTIONS) + " |")
    md += ["", f"![guard actions]({guard.name})"]
    if loss:
        md += ["", f"![loss curve]({loss.name})"]
    if decisions:
        promoted = all(d.promote for d in decisions.values())
        md += ["", f"## Decision: {'PROMOTED' if promoted else 'REFUSED'} (on model scores)", ""]
        for mode, decision in decisions.items():
            md += [f"- {MODE_NAMES[mode]}: {reason}" for reason in decision.reasons]
        md += [
            "",
            "| mode | metric | reference | challenger | difference | 95% interval | McNemar p | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode, decision in decisions.items():
            for metric, check in decision.checks.items():
                p_value = check.get("mcnemar_p")
                md.append(
                    f"| {MODE_NAMES[mode]} | {metric} | {check['champion']:.1%} | {check['challenger']:.1%} | "
                    f"{check['difference']:+.3f} | [{check['low']:+.3f}, {check['high']:+.3f}] | "
                    f"{'-' if p_value is None else f'{p_value:.3f}'} | {int(check['n'])} |"
                )
        for mode, decision in decisions.items():
            results = evaluations.get(mode, {})
            reference = results.get("champion") or results.get("base")
            challenger = results.get("challenger")
            if reference is None or challenger is None:
                continue
            for title, ids in (("Regressed", decision.regressed), ("Fixed", decision.fixed)):
                md += _side_by_side(f"{title} items, {MODE_NAMES[mode]}", ids, reference, challenger)
    md_path = out_dir / f"{name}.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path = out_dir / f"{name}.html"
    html_path.write_text(_html(name, md), encoding="utf-8")
    return md_path, html_path


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^()\s:]+\.png)\)")


def embedded_markdown(md_path: Path) -> str:
    """The report's Markdown with its charts inline as ``data:image/png;base64`` URIs: a Prefect markdown
    artifact cannot reach files beside the report (its relative links show as broken images in the UI)."""

    def inline(match: re.Match[str]) -> str:
        image = md_path.parent / match.group(2)
        if not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE.sub(inline, md_path.read_text(encoding="utf-8"))


def _side_by_side(title: str, ids: list[str], reference: Evaluation, challenger: Evaluation) -> list[str]:
    """The model's answers of both sides (and the guard's action) for the items named."""
    old = {r.id: (r, reply) for r, reply in zip(reference.model, reference.replies, strict=True)}
    new = {r.id: (r, reply) for r, reply in zip(challenger.model, challenger.replies, strict=True)}
    pairs = [(old[i], new[i]) for i in ids if i in old and i in new]
    lines = [
        "",
        f"### {title} ({len(pairs)})",
        "",
        "| question | reference's model answer | challenger's model answer |",
        "|---|---|---|",
    ]
    for (a, a_reply), (_, b_reply) in pairs[:30]:
        lines.append(
            f"| {_cell(a.question)} | {_cell(a_reply.model)} ({a_reply.guard_action}) | "
            f"{_cell(b_reply.model)} ({b_reply.guard_action}) |"
        )
    return lines


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    return (flat[:80] + "…" if len(flat) > 80 else flat).replace("|", "\\|")


def _html(name: str, md: list[str]) -> str:
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


def describe_review(sources: dict[str, int]) -> str:
    """Who approved the trainable rows: the auto policy (the ledger, no person), people, or both."""
    from warehouse.review import AUTO_REVIEWER

    if not sources:
        return "no reviewed rows"
    auto = sources.get(AUTO_REVIEWER, 0)
    verified = sources.get("ledger-verified", 0)
    people = {k: v for k, v in sources.items() if k not in (AUTO_REVIEWER, "ledger-verified")}
    parts = [f"{verified} rows verified by the ledger without review"] if verified else []
    if auto:
        parts.append(f"auto policy: the ledger approved {auto} rows, no person reviewed them")
    if people:
        parts.append("people: " + ", ".join(f"{who} {n}" for who, n in sorted(people.items())))
    return "; ".join(parts)
