"""The Label Studio labelling interface for reviewing one question/answer row, and the task data it shows.

An annotator never judges a bare answer: the task shows the source chunk with every number the row states
highlighted (``<mark>``), where the chunk stands (document, 章 > 条), the question and the answer. The verdict
is a required single choice with hotkeys (a = accept, c = correct, r = reject), so a reviewer can work from
the keyboard; a correction carries the new answer text and the corrected number(s), checked against the
ledger again at sync time (see ``review.sync``).

Everything taken from documents or teachers is HTML-escaped: a chunk that contains ``<script>`` shows it as
text. Only the ``<mark>``, ``<br/>`` and wrapper elements built here are markup.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from tasks.ingest.numbers import rule_numbers

# Names of the control tags; sync reads the annotation results by these names.
VERDICT = "verdict"
CORRECTED_ANSWER = "corrected_answer"
CORRECTED_NUMBERS = "corrected_numbers"
COMMENT = "comment"
VERDICTS = ("accept", "correct", "reject")
HOTKEYS = {"accept": "a", "correct": "c", "reject": "r"}
CONFIG_VERSION = "review-v1"  # bump when the interface changes; stored with each task

_HINTS = {
    "accept": "答案正确，数字与原文一致 (a)",
    "correct": "答案需要修改：填写修改后的答案和数字 (c)",
    "reject": "问题或答案无用，丢弃 (r)",
}
_LABELS = {"accept": "接受 accept", "correct": "修改 correct", "reject": "拒绝 reject"}  # LS shows the hotkey

# Inline HyperText keeps the page's own CSS; a <mark> needs a visible style of its own.
_MARK_STYLE = "background:#ffe066;padding:0 2px;border-radius:2px;font-weight:600"
_MISS_STYLE = "background:#ffc9c9;padding:0 2px;border-radius:2px;font-weight:600"


def label_config() -> str:
    """The labelling config XML (Label Studio tags) for a review project."""
    choices = "\n".join(
        f'      <Choice value="{v}" hotkey="{HOTKEYS[v]}" hint="{html.escape(_HINTS[v])}"'
        f' html="{html.escape("<b>" + _LABELS[v] + "</b>")}"/>'
        for v in VERDICTS
    )
    return f"""<View>
  <Style>
    .slm-src {{ line-height: 1.9; font-size: 15px; }}
    .slm-box {{ border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; margin: 6px 0 12px 0; }}
    .slm-muted {{ color: #57606a; font-size: 13px; }}
  </Style>
  <Header value="来源 Source" size="5"/>
  <HyperText name="where" value="$where_html" inline="true" selectionEnabled="false"/>
  <View className="slm-box">
    <HyperText name="source" value="$source_html" inline="true" selectionEnabled="false"/>
  </View>
  <Header value="问题 Question" size="5"/>
  <Text name="question" value="$question" selectionEnabled="false"/>
  <Header value="答案 Answer" size="5"/>
  <View className="slm-box">
    <HyperText name="answer" value="$answer_html" inline="true" selectionEnabled="false"/>
  </View>
  <HyperText name="notes" value="$notes_html" inline="true" selectionEnabled="false"/>
  <Header value="结论 Verdict" size="5"/>
  <Choices name="{VERDICT}" toName="answer" choice="single-radio" required="true"
           requiredMessage="请选择 accept / correct / reject" showInline="true">
{choices}
  </Choices>
  <Header value="修改后的答案 Corrected answer (only for correct)" size="6"/>
  <TextArea name="{CORRECTED_ANSWER}" toName="answer" rows="3" editable="true" maxSubmissions="1"
            placeholder="完整的正确答案"/>
  <Header value="修改后的数字 Corrected number(s), e.g. 800元; 1200元" size="6"/>
  <TextArea name="{CORRECTED_NUMBERS}" toName="answer" rows="1" editable="true" maxSubmissions="1"
            placeholder="例如 800元"/>
  <Header value="备注 Comment" size="6"/>
  <TextArea name="{COMMENT}" toName="answer" rows="2" editable="true" maxSubmissions="1"/>
</View>
"""


def _as_decimals(numbers: Iterable[str]) -> set[Decimal]:
    out = set()
    for n in numbers:
        try:
            out.add(Decimal(str(n)))
        except InvalidOperation:
            continue  # a malformed stored value highlights nothing rather than failing the whole batch
    return out


def marked_html(text: str, numbers: Iterable[str], style: str = _MARK_STYLE) -> tuple[str, set[Decimal]]:
    """``text`` HTML-escaped, each rule number whose value is in ``numbers`` wrapped in ``<mark>``.

    Returns the HTML and the values that were found (so the caller can list the ones that were not).
    Numbers are found with the one parser (``tasks.ingest.numbers``), so "三个月" and "3 个月" both light up for 3.
    """
    wanted = _as_decimals(numbers)
    parts: list[str] = []
    found: set[Decimal] = set()
    pos = 0
    for mention in rule_numbers(text):
        hit = [v for v in mention.values() if v in wanted]
        if not hit:
            continue
        found.update(hit)
        parts.append(html.escape(text[pos : mention.start]))
        parts.append(f'<mark style="{style}">{html.escape(mention.raw)}</mark>')
        pos = mention.end
    parts.append(html.escape(text[pos:]))
    return "".join(parts).replace("\n", "<br/>"), found


def _fmt(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def task_key(row_id: str, batch_id: str) -> str:
    """A stable id for the task of ``row_id`` in ``batch_id`` (the same inputs always give the same key)."""
    return hashlib.sha256(f"{batch_id}\x1f{row_id}\x1f{CONFIG_VERSION}".encode()).hexdigest()[:24]


def task_for_row(
    row: dict[str, Any],
    chunk: dict[str, Any],
    batch_id: str,
    doc_name: str | None = None,
) -> dict[str, Any]:
    """The Label Studio task data for one row (``{"data": {...}}`` is added by the caller).

    ``row`` needs row_id, question, answer and numbers (canonical values); verify_notes is shown if present.
    ``chunk`` needs text and heading_path (and doc_name unless given).
    """
    numbers: Sequence[str] = list(row.get("numbers") or [])
    source_html, found = marked_html(chunk["text"], numbers)
    answer_html, _ = marked_html(row["answer"], numbers)
    missing = sorted(_as_decimals(numbers) - found)
    doc = doc_name or chunk.get("doc_name") or ""
    heading = chunk.get("heading_path") or ""
    where_html = (
        f'<div class="slm-muted">文件 <b>{html.escape(doc)}</b>'
        f" &nbsp;·&nbsp; 位置 <b>{html.escape(heading or '(无标题)')}</b></div>"
    )
    notes: list[str] = []
    if missing:
        listed = "、".join(_fmt(v) for v in missing)
        notes.append(
            f'<mark style="{_MISS_STYLE}">原文中找不到的数字 Not in the source: {html.escape(listed)}</mark>'
        )
    if row.get("verify_notes"):
        notes.append(f"校验 Checks: {html.escape(str(row['verify_notes']))}")
    notes_html = (
        "".join(f'<div class="slm-muted">{n}</div>' for n in notes) or '<div class="slm-muted"></div>'
    )
    return {
        "task_key": task_key(row["row_id"], batch_id),
        "row_id": row["row_id"],
        "batch_id": batch_id,
        "config_version": CONFIG_VERSION,
        "doc_name": doc,
        "heading_path": heading,
        "question": row["question"],
        "answer": row["answer"],
        "numbers": ", ".join(numbers),
        "where_html": where_html,
        "source_html": f'<div class="slm-src">{source_html}</div>',
        "answer_html": f'<div class="slm-src">{answer_html}</div>',
        "notes_html": notes_html,
    }
