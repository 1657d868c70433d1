"""The Label Studio labelling interface for reviewing one question/answer row or one ledger fact, and the
task data it shows.

A batch holds two kinds of task under one interface (one project per batch): a *row task* (below) and a
*fact task* (``task_for_sentence``): one source sentence, read once, with every ledger fact in it marked and
numbered, the document, article path and page, each number as the ledger parsed it (value, unit, qualifier,
subject) and the questions waiting on them (read-only). Each fact has its own verdict field
(``fact_verdict_<i>``): key i marks fact i wrong (type the corrected number with its unit and/or subject),
shift+i marks it not a rule (a date, a form number, an example). The task's verdict covers every fact not
marked on its own: a = every number correct, c = the marked ones are wrong (the rest correct), r = none is a
rule. A sentence of one number can be corrected in the task's own fields too.

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
CONFIG_VERSION = "review-v3"  # bump when the interface changes; stored with each task
# A fact task (one source sentence) gives each of its facts its own verdict: ``fact_verdict_<i>`` (and, for a
# wrong one, ``fact_numbers_<i>`` / ``fact_subject_<i>``), i = the fact's place in the task (0-9, its key).
FACT_VERDICT = "fact_verdict_"
FACT_NUMBERS = "fact_numbers_"
FACT_SUBJECT = "fact_subject_"
# Per-fact marks (key i: fact i wrong, shift+i: not a rule); a fact not marked takes the task's verdict.
# Every choice has its own key: Label Studio numbers choices without one (1, 2, ...), which would collide.
_FACT_CHOICES = (
    ("correct", "{{idx}}", "错 wrong"),
    ("reject", "shift+{{idx}}", "不是规则 not a rule"),
)
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
    fact_choices = "\n".join(
        f'        <Choice value="{v}" hotkey="{key}" html="{html.escape("<b>" + label + "</b>")}"/>'
        for v, key, label in _FACT_CHOICES
    )
    fact_blocks = f"""  <Repeater on="$facts" indexFlag="{{{{idx}}}}">
    <View className="slm-fact">
      <HyperText name="fact_{{{{idx}}}}" value="$facts[{{{{idx}}}}].html" inline="true" selectionEnabled="false"/>
      <Choices name="{FACT_VERDICT}{{{{idx}}}}" toName="fact_{{{{idx}}}}" choice="single-radio" showInline="true">
{fact_choices}
      </Choices>
      <View visibleWhen="choice-selected" whenTagName="{FACT_VERDICT}{{{{idx}}}}" whenChoiceValue="correct">
        <TextArea name="{FACT_NUMBERS}{{{{idx}}}}" toName="fact_{{{{idx}}}}" rows="1" editable="true"
                  maxSubmissions="1" placeholder="修改后的数字 corrected number with unit, e.g. 800元"/>
        <TextArea name="{FACT_SUBJECT}{{{{idx}}}}" toName="fact_{{{{idx}}}}" rows="1" editable="true"
                  maxSubmissions="1" placeholder="修改后的主题 corrected subject, e.g. 住宿费"/>
      </View>
    </View>
  </Repeater>"""
    return f"""<View>
  <Style>
    .slm-src {{ line-height: 1.9; font-size: 15px; }}
    .slm-box {{ border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; margin: 6px 0 12px 0; }}
    .slm-muted {{ color: #57606a; font-size: 13px; }}
    .slm-fact {{ border-left: 3px solid #ffe066; padding: 2px 10px; margin: 4px 0; }}
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
{fact_blocks}
  <Header value="$verdict_title" size="5"/>
  <Choices name="{VERDICT}" toName="answer" choice="single-radio" required="true"
           requiredMessage="请选择 accept / correct / reject" showInline="true">
{choices}
  </Choices>
  <Header value="修改后的答案 Corrected answer (row tasks, only for correct)" size="6"/>
  <TextArea name="{CORRECTED_ANSWER}" toName="answer" rows="3" editable="true" maxSubmissions="1"
            placeholder="完整的正确答案"/>
  <Header value="修改后的数字 Corrected number(s) with unit, e.g. 800元; 1200元 (a fact task of one number)"
          size="6"/>
  <TextArea name="{CORRECTED_NUMBERS}" toName="answer" rows="1" editable="true" maxSubmissions="1"
            placeholder="例如 800元"/>
  <Header value="修改后的主题 Corrected subject (a fact task of one number, e.g. 住宿费)" size="6"/>
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
        "verdict_title": "结论 Verdict",
        "facts": [],
    }


def fact_task_key(fact_id: str, batch_id: str) -> str:
    return task_key(f"fact:{fact_id}", batch_id)


def _sentence_html(chunk_text: str, spans: Sequence[tuple[int, int]]) -> str:
    """The sentence holding the spans, each span marked and numbered (its fact's key in the task)."""
    from tasks.ingest.facts import sentence_around

    left, right = sentence_around(chunk_text, *spans[0])
    for start, end in spans[1:]:
        a, b = sentence_around(chunk_text, start, end)
        left, right = min(left, a), max(right, b)
    parts, pos = [], left
    for i, (start, end) in sorted(enumerate(spans), key=lambda p: p[1]):
        if start < pos:
            continue  # overlapping spans (never from one parse): the first one marked is enough
        parts.append(html.escape(chunk_text[pos:start]))
        parts.append(
            f'<mark style="{_MARK_STYLE}">{html.escape(chunk_text[start:end])}</mark>'
            f'<sup class="slm-muted">[{i}]</sup>'
        )
        pos = end
    parts.append(html.escape(chunk_text[pos:right]))
    return "".join(parts).replace("\n", "<br/>")


def _parsed_html(index: int, fact: dict[str, Any]) -> str:
    """One fact as the ledger parsed it: its key, value, unit, qualifier, subject and how it is written."""
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
    if fact.get("cell"):  # a table cell: "r5c3" -> where to look in the printed table
        row, column = fact["cell"][1:].split("c")
        parsed.append(("表格 table cell", f"第{row}行第{column}列 row {row}, column {column}"))
    cells = " &nbsp;·&nbsp; ".join(
        f'<span class="slm-muted">{html.escape(k)}</span> <b>{html.escape(str(v))}</b>' for k, v in parsed
    )
    return f'<div class="slm-src"><b>[{index}]</b> &nbsp;{cells}</div>'


def task_for_sentence(
    facts: Sequence[dict[str, Any]], citing: dict[str, Sequence[str]], batch_id: str
) -> dict[str, Any]:
    """The Label Studio task data for the ledger facts of one source sentence (``{"data": {...}}`` is added
    by the caller): the sentence with each number marked and numbered, and per fact what the ledger parsed
    (its own verdict field in the interface); the questions of the rows waiting on them, read only.

    Each fact needs fact_id, value, value_max, unit, raw, qualifier, subject, span_start, span_end,
    chunk_text, heading_path, doc_name and page (all of one chunk and sentence)."""
    first = facts[0]
    doc, heading = first.get("doc_name") or "", first.get("heading_path") or ""
    pages = sorted({int(f["page"]) for f in facts if f.get("page")})
    where_html = (
        f'<div class="slm-muted">文件 <b>{html.escape(doc)}</b>'
        f" &nbsp;·&nbsp; 位置 <b>{html.escape(heading or '(无标题)')}</b>"
        + (f" &nbsp;·&nbsp; 第 <b>{'、'.join(str(p) for p in pages)}</b> 页" if pages else "")
        + "</div>"
    )
    questions = list(dict.fromkeys(q for f in facts for q in citing.get(f["fact_id"], ())))
    shown = questions[:8]
    notes = [f"等待这些数字的问题 Questions waiting on these numbers ({len(questions)}):"]
    notes += [f"· {html.escape(q)}" for q in shown]
    if len(questions) > len(shown):
        notes.append(f"… {len(questions) - len(shown)} more")
    one = len(facts) == 1
    return {
        "task_key": fact_task_key(first["fact_id"], batch_id),
        "kind": "fact",
        "fact_id": first["fact_id"],  # the task's key (its group); every fact is in fact_ids
        "fact_ids": [f["fact_id"] for f in facts],
        "batch_id": batch_id,
        "config_version": CONFIG_VERSION,
        "doc_name": doc,
        "heading_path": heading,
        "page": pages[0] if pages else None,
        "question_title": "核对数字 Check the numbers of this sentence",
        "answer_title": f"账本的解析 What the ledger parsed ({len(facts)})",
        "question": (
            "这个数字是规则吗？数值、单位、主题对吗？"
            if one
            else "这些数字是规则吗？数值、单位、主题对吗？每个数字各有结论：未单独标记的随整句结论。"
        ),
        "answer": "; ".join(f"{f.get('subject') or ''} {f.get('raw') or ''}".strip() for f in facts),
        "numbers": ", ".join(_fmt(Decimal(f["value"])) for f in facts),
        "where_html": where_html,
        "source_html": '<div class="slm-src">'
        + _sentence_html(first["chunk_text"], [(int(f["span_start"]), int(f["span_end"])) for f in facts])
        + "</div>",
        "answer_html": '<div class="slm-muted">每个数字 Each number [i]: 错 wrong = key i, 不是规则 not a rule ='
        " shift+i; 未标记的随整句结论 numbers not marked take the sentence's verdict</div>",
        "notes_html": "".join(f'<div class="slm-muted">{n}</div>' for n in notes),
        "verdict_title": "整句结论 The sentence: a 全部正确 every number correct · c 有错（标记错的）some wrong"
        " (marked ones) · r 都不是规则 none is a rule",
        "facts": [{"fact_id": f["fact_id"], "html": _parsed_html(i, f)} for i, f in enumerate(facts)],
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


def fact_task_result(
    verdicts: Sequence[str], numbers: dict[int, str] | None = None, subjects: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """The annotation result a person's keys give a fact task whose facts get ``verdicts`` (accept | correct |
    reject, in the task's order): a when all are accept, r when all are reject, else c with every fact that
    is not accept marked on its own (its corrected number or subject in ``numbers`` / ``subjects``, by
    index). The shape Label Studio exports; the bench and the tests answer fact tasks with it."""
    numbers, subjects = numbers or {}, subjects or {}
    overall = (
        "accept" if set(verdicts) == {"accept"} else "reject" if set(verdicts) == {"reject"} else "correct"
    )

    def choice(name: str, to: str, value: str) -> dict[str, Any]:
        return {"from_name": name, "to_name": to, "type": "choices", "value": {"choices": [value]}}

    def text(name: str, to: str, value: str) -> dict[str, Any]:
        return {"from_name": name, "to_name": to, "type": "textarea", "value": {"text": [value]}}

    out = [choice(VERDICT, "answer", overall)]
    for i, verdict in enumerate(verdicts):
        if overall == "correct" and verdict != "accept":
            out.append(choice(f"{FACT_VERDICT}{i}", f"fact_{i}", verdict))
        if numbers.get(i):
            out.append(text(f"{FACT_NUMBERS}{i}", f"fact_{i}", numbers[i]))
        if subjects.get(i):
            out.append(text(f"{FACT_SUBJECT}{i}", f"fact_{i}", subjects[i]))
    return out
