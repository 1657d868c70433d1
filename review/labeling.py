"""The Label Studio labelling interface for reviewing one question/answer row or one ledger fact, and the
task data it shows.

A batch holds two kinds of task under one interface (one project per batch): a *row task* (below) and a
*fact task* (``task_for_fact``): the sentence with the one number highlighted, the document, article path and
page, the number as the ledger parsed it (value, unit, qualifier, subject), and the questions that cite it
(read-only). The same three keys answer both: a = correct, c = wrong value/unit/subject (type the corrected
number with its unit and/or the corrected subject), r = not a rule (a date, a form number, an example).

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
CORRECTED_SUBJECT = "corrected_subject"
COMMENT = "comment"
VERDICTS = ("accept", "correct", "reject")
HOTKEYS = {"accept": "a", "correct": "c", "reject": "r"}
CONFIG_VERSION = "review-v2"  # bump when the interface changes; stored with each task
# What the keys mean on a fact task (sync records these in fact_verdicts).
FACT_VERDICTS = {"accept": "correct", "correct": "corrected", "reject": "not_a_rule"}

_HINTS = {
    "accept": "答案正确 / 数字解析正确 (a)",
    "correct": "答案需要修改，或数字、单位、主题解析有误：填写修改后的内容 (c)",
    "reject": "问题或答案无用 / 这个数字不是规则（日期、文号、示例）(r)",
}
_LABELS = {  # LS shows the hotkey
    "accept": "接受·正确 accept",
    "correct": "修改 correct",
    "reject": "拒绝·不是规则 reject",
}

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
  <Header value="$question_title" size="5"/>
  <Text name="question" value="$question" selectionEnabled="false"/>
  <Header value="$answer_title" size="5"/>
  <View className="slm-box">
    <HyperText name="answer" value="$answer_html" inline="true" selectionEnabled="false"/>
  </View>
  <HyperText name="notes" value="$notes_html" inline="true" selectionEnabled="false"/>
  <Header value="结论 Verdict" size="5"/>
  <Choices name="{VERDICT}" toName="answer" choice="single-radio" required="true"
           requiredMessage="请选择 accept / correct / reject" showInline="true">
{choices}
  </Choices>
  <Header value="修改后的答案 Corrected answer (row tasks, only for correct)" size="6"/>
  <TextArea name="{CORRECTED_ANSWER}" toName="answer" rows="3" editable="true" maxSubmissions="1"
            placeholder="完整的正确答案"/>
  <Header value="修改后的数字 Corrected number(s) with unit, e.g. 800元; 1200元 (fact tasks: the one number)"
          size="6"/>
  <TextArea name="{CORRECTED_NUMBERS}" toName="answer" rows="1" editable="true" maxSubmissions="1"
            placeholder="例如 800元"/>
  <Header value="修改后的主题 Corrected subject (fact tasks, e.g. 住宿费)" size="6"/>
  <TextArea name="{CORRECTED_SUBJECT}" toName="answer" rows="1" editable="true" maxSubmissions="1"
            placeholder="例如 住宿费"/>
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
        "kind": "row",
        "question_title": "问题 Question",
        "answer_title": "答案 Answer",
        "question": row["question"],
        "answer": row["answer"],
        "numbers": ", ".join(numbers),
        "where_html": where_html,
        "source_html": f'<div class="slm-src">{source_html}</div>',
        "answer_html": f'<div class="slm-src">{answer_html}</div>',
        "notes_html": notes_html,
    }


def fact_task_key(fact_id: str, batch_id: str) -> str:
    return task_key(f"fact:{fact_id}", batch_id)


def _sentence_html(chunk_text: str, start: int, end: int) -> str:
    """The sentence around chunk_text[start:end] with exactly that span marked (not every equal number)."""
    from tasks.ingest.facts import sentence_around

    left, right = sentence_around(chunk_text, start, end)
    return (
        html.escape(chunk_text[left:start])
        + f'<mark style="{_MARK_STYLE}">{html.escape(chunk_text[start:end])}</mark>'
        + html.escape(chunk_text[end:right])
    ).replace("\n", "<br/>")


def task_for_fact(fact: dict[str, Any], citing: Sequence[str], batch_id: str) -> dict[str, Any]:
    """The Label Studio task data for one ledger fact (``{"data": {...}}`` is added by the caller).

    ``fact`` needs fact_id, value, value_max, unit, raw, qualifier, subject, span_start, span_end, chunk_text,
    heading_path, doc_name and page; ``citing`` are the questions of the rows that rely on it (shown read-only).
    """
    doc, heading, page = fact.get("doc_name") or "", fact.get("heading_path") or "", fact.get("page")
    where_html = (
        f'<div class="slm-muted">文件 <b>{html.escape(doc)}</b>'
        f" &nbsp;·&nbsp; 位置 <b>{html.escape(heading or '(无标题)')}</b>"
        + (f" &nbsp;·&nbsp; 第 <b>{int(page)}</b> 页" if page else "")
        + "</div>"
    )
    value = _fmt(Decimal(fact["value"]))
    if fact.get("value_max"):
        value += f" – {_fmt(Decimal(fact['value_max']))}"
    parsed = [
        ("数值 value", value),
        ("单位 unit", fact.get("unit") or "—"),
        ("限定 qualifier", fact.get("qualifier") or "—"),
        ("主题 subject", fact.get("subject") or "—"),
        ("原文 as written", fact.get("raw") or ""),
    ]
    answer_html = "".join(
        f'<div><span class="slm-muted">{html.escape(k)}</span> &nbsp;<b>{html.escape(str(v))}</b></div>'
        for k, v in parsed
    )
    shown = list(citing)[:8]
    notes = [f"引用它的问题 Questions that cite it ({len(citing)}):"] + [f"· {html.escape(q)}" for q in shown]
    if len(citing) > len(shown):
        notes.append(f"… {len(citing) - len(shown)} more")
    return {
        "task_key": fact_task_key(fact["fact_id"], batch_id),
        "kind": "fact",
        "fact_id": fact["fact_id"],
        "batch_id": batch_id,
        "config_version": CONFIG_VERSION,
        "doc_name": doc,
        "heading_path": heading,
        "page": page,
        "question_title": "核对数字 Check this number at its source",
        "answer_title": "账本的解析 What the ledger parsed",
        "question": "这个数字是规则吗？数值、单位、主题对吗？ a 正确 · c 修改（填写数字/主题）· r 不是规则",
        "answer": f"{fact.get('subject') or ''} {fact.get('raw') or ''}".strip(),
        "numbers": value,
        "where_html": where_html,
        "source_html": '<div class="slm-src">'
        + _sentence_html(fact["chunk_text"], int(fact["span_start"]), int(fact["span_end"]))
        + "</div>",
        "answer_html": f'<div class="slm-src">{answer_html}</div>',
        "notes_html": "".join(f'<div class="slm-muted">{n}</div>' for n in notes),
    }


def prediction_for(suggested: str, model_version: str, score: float = 0.8) -> dict[str, Any]:
    """A Label Studio prediction (pre-annotation) choosing ``suggested`` as the verdict."""
    return {
        "model_version": model_version,
        "score": score,
        "result": [
            {"from_name": VERDICT, "to_name": "answer", "type": "choices", "value": {"choices": [suggested]}}
        ],
    }
