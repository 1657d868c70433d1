"""The offline default teacher: deterministic, no model.

For every ledger fact it asks several phrasings of a question built from the fact's subject, unit and
qualifier, and answers with the clause of the source that states the number. It adds non-numeric
questions from definitions, required documents, approvals and prohibitions, and, per document,
questions about plausible things the rules do not cover, answered "文件中没有相关规定".
"""

from __future__ import annotations

import hashlib
import re

from tasks.distill.teachers.base import ChunkContext, FactRef, QAPair, TeacherOutput
from tasks.ingest.chunk import LEADING_MARKER, heading
from tasks.ingest.facts import first_noun_phrase, trim_subject
from tasks.ingest.numbers import CN_NUMERALS, rule_numbers, units_agree
from tasks.vocabulary import ABSTAIN_TEXT

PROMPT_VERSION = "extractive-v1"

_SENTENCE = re.compile(r"[^。；;！？!?\n]+[。；;！？!?]?")
# A comma or colon between digits is part of a number (1,200元), not a clause break.
_CLAUSE = re.compile(r"(?:[^，,：:。；;！？!?\n]|(?<=\d)[,:](?=\d))+[，,：:。；;！？!?]?")
_LIMIT_QUALIFIERS = ("不超过", "以内", "以下", "最高", "最多", "不高于", "不得超过")
_FLOOR_QUALIFIERS = ("以上", "超过", "达到", "不低于", "至少", "满")

# Phrasings per kind of number. {s} is the subject. Order matters: the first ones are the plainest.
_MONEY = ["{s}的标准是多少？", "按规定，{s}是多少元？", "{s}有什么金额规定？"]
_MONEY_LIMIT = ["{s}最多是多少？", "{s}的上限是多少？"]
_MONEY_FLOOR = ["{s}在多少元以上有特别规定？", "{s}达到多少金额时要求不同？"]
_PERCENT = ["{s}的比例是多少？", "{s}按多大比例执行？", "{s}的百分比规定是多少？"]
_DURATION = ["{s}的时限是多少？", "{s}需要在多长时间内办理？", "关于{s}，时间上有什么规定？"]
# A duration "以上"/"超过" is a threshold, not a deadline ("连续乘车超过12小时" is no time to act within).
_DURATION_FLOOR = ["{s}超过多长时间有特别规定？", "{s}达到多长时间时要求不同？"]
_DURATION_LIMIT = ["{s}最长是多长时间？", "{s}不能超过多长时间？"]
_COUNT = ["{s}的数量规定是多少？", "{s}最多是多少？", "关于{s}，数量上有什么限制？"]
_DISCOUNT = ["{s}的折扣标准是多少？", "{s}按几折执行？"]
_OTHER = ["{s}的规定数值是多少？", "关于{s}，文件规定的数字是多少？"]
_DURATION_UNITS = {"天", "工作日", "月", "年", "周", "小时", "学时", "课时"}

_DEFINITION = re.compile(r"^(.{2,24}?)(?:是指|系指|指的是)(.{4,})")
_DOCUMENTS = re.compile(r"须提供|应提供|应当提供|须附|应附|应当附|须提交|应提交|应当提交|附上|凭.{1,20}报销")
_APPROVAL = re.compile(r"由(.{2,24}?)(?:审批|批准|审核|签字)")
_PROHIBITION = re.compile(r"不得|严禁|禁止")

# Plausible expenses a finance office is asked about. Asked only when the document never mentions them.
UNANSWERABLE_TOPICS = [
    "宠物托运费",
    "高尔夫球场会员费",
    "私家车年度保险费",
    "员工生日蛋糕",
    "子女课外辅导费",
    "健身房年卡",
    "个人理发费",
    "家属探亲机票",
    "美容美发支出",
    "网络游戏点卡",
    "个人手机购置费",
    "婚礼礼金",
    "境外购物退税",
    "个人所得税滞纳金",
    "奢侈品购置",
    "私人旅游门票",
    "家用电器购置",
    "个人房屋装修费",
    "无人机竞赛奖金",
    "宠物医疗费",
    "个人信用卡年费",
    "彩票购买支出",
    "演唱会门票",
    "个人体检升级套餐",
    "外籍教师子女学费",
    "员工婚假礼品",
    "个人车辆违章罚款",
    "游艇租赁费",
    "私人司机工资",
    "个人股票交易手续费",
]
_UNANSWERABLE_PHRASINGS = ["{t}可以报销吗？标准是多少？", "学校对{t}的报销标准是多少？"]


class ExtractiveTeacher:
    name = "extractive"
    model = "rules"
    prompt_version = PROMPT_VERSION

    def __init__(self, per_fact: int = 2) -> None:
        self.per_fact = max(1, per_fact)

    def generate(self, chunk: ChunkContext) -> TeacherOutput:
        rows: list[QAPair] = []
        for fact in chunk.facts:
            rows.extend(self.fact_rows(chunk, fact))
        rows.extend(text_rows(chunk))
        return TeacherOutput(rows=_unique(rows))

    def fact_rows(self, chunk: ChunkContext, fact: FactRef) -> list[QAPair]:
        """``per_fact`` questions about one fact, answered with the clause that states it.

        When the subject alone does not pin the fact down (another fact of the chunk has the same subject,
        as in approval tiers), the questions are the clause itself with the number asked for, so that two
        rows never ask the same question and expect different numbers.

        A number that is only a condition of another rule gets no question of its own: its answer would be
        the bare condition ("会期超过2天的。", "超过1000万元的部分。"), or its question would give the rule's figure
        and ask for the condition ("多少元以下的部分为20%？"), which no one asks and which teaches the model to
        say the question back. The rule's own fact states the condition in its answer.
        """
        subject = _clean_subject(fact.subject) or _heading_subject(chunk)
        answer, evidence, (start, end), condition = _answer_for(chunk.text, fact, subject)
        if only_condition(answer):
            return []
        if _ambiguous(chunk, fact, subject):
            cloze = _cloze(evidence, fact)
            if conditions_other_figure(cloze, fact):
                return []
            if subject not in cloze and subject not in _GENERIC_SUBJECTS:
                cloze = f"{subject}：{cloze}"
            questions = [
                cloze,
                f"按照《{_doc_title(chunk)}》，{cloze}",
                f"{_heading_subject(chunk)}方面，{cloze}",
            ]
        else:
            phrasings = _phrasings(fact)
            offset = int(hashlib.sha256(fact.fact_id.encode()).hexdigest(), 16) % len(phrasings)
            # The condition the rule holds under is part of what is asked:
            # "接待对象在10人以内的，陪餐人数最多是多少？".
            questions = [
                condition + phrasings[(offset + i) % len(phrasings)].format(s=subject)
                for i in range(len(phrasings))
            ]
        return [
            QAPair(
                question=q,
                answer=answer,
                evidence=evidence,
                numbers=(fact.raw,),
                kind="numeric",
                # The facts the answer states: its own, and a condition or range bound in its clauses.
                fact_ids=(
                    fact.fact_id,
                    *(
                        f.fact_id
                        for f in chunk.facts
                        if f.fact_id != fact.fact_id and start <= f.span_start < end
                    ),
                ),
            )
            for q in questions[: self.per_fact]
        ]


def text_rows(chunk: ChunkContext) -> list[QAPair]:
    """Non-numeric questions from definitions, required documents, approvals and prohibitions."""
    rows: list[QAPair] = []
    for match in _SENTENCE.finditer(chunk.text):
        sentence = match.group(0).strip()
        body = LEADING_MARKER.sub("", sentence)
        if len(body) < 8:
            continue
        topic = trim_subject(first_noun_phrase(body)) or _heading_subject(chunk)
        definition = _DEFINITION.match(body)
        if definition:
            term = trim_subject(definition.group(1))
            rows.append(QAPair(f"什么是{term}？", body, sentence))
            continue
        if _DOCUMENTS.search(body):
            rows.append(QAPair(f"办理{topic}相关事项需要提供哪些材料？", body, sentence))
        elif (approver := _APPROVAL.search(body)) and approver:
            rows.append(QAPair(f"{topic}由谁审批？", body, sentence))
        elif _PROHIBITION.search(body):
            rows.append(QAPair(f"关于{topic}，有哪些禁止性规定？", body, sentence))
    return rows


def unanswerable_rows(document_text: str, count: int, seed: str) -> list[QAPair]:
    """``count`` questions about topics the document never mentions, each answered with an abstention."""
    topics = [t for t in UNANSWERABLE_TOPICS if not _mentions(document_text, t)]
    topics.sort(key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    rows = []
    for i in range(min(count, len(topics) * len(_UNANSWERABLE_PHRASINGS))):
        topic = topics[i % len(topics)]
        phrasing = _UNANSWERABLE_PHRASINGS[(i // len(topics)) % len(_UNANSWERABLE_PHRASINGS)]
        rows.append(QAPair(phrasing.format(t=topic), ABSTAIN_TEXT, "", kind="unanswerable"))
    return rows


def _mentions(text: str, topic: str) -> bool:
    # A topic counts as covered when any 2-character piece of its head noun appears: conservative on purpose.
    core = topic[:4]
    return any(core[i : i + 2] in text for i in range(len(core) - 1))


def _phrasings(fact: FactRef) -> list[str]:
    unit = fact.unit
    if unit == "%":
        return _PERCENT
    if unit == "折":
        return _DISCOUNT
    if unit.startswith("元"):
        if any(q in fact.qualifier for q in _LIMIT_QUALIFIERS):
            return _MONEY_LIMIT + _MONEY
        if any(q in fact.qualifier for q in _FLOOR_QUALIFIERS):
            return _MONEY_FLOOR + _MONEY
        return _MONEY
    if unit in _DURATION_UNITS:
        # Whole qualifier words: "不超过3天" is a limit although it contains 超过; "15日内" is a deadline.
        words = set(fact.qualifier.split("|"))
        if words & {"以内", "内"}:
            return _DURATION
        if words & set(_LIMIT_QUALIFIERS):
            return _DURATION_LIMIT + _DURATION[:1]
        if words & set(_FLOOR_QUALIFIERS):
            return _DURATION_FLOOR
        return _DURATION
    if unit:
        return _COUNT
    return _OTHER


def _answer_for(text: str, fact: FactRef, subject: str) -> tuple[str, str, tuple[int, int], str]:
    """The clause stating the fact, after the condition clause just before it if there is one, running on to
    the sentence end but not into the next number's clause; with the evidence, its span in ``text`` and the
    condition clause ("" when there is none)."""
    sentence_start = 0
    for match in _SENTENCE.finditer(text):
        if match.start() <= fact.span_start < match.end():
            sentence_start = match.start()
            sentence = match.group(0)
            break
    else:
        return f"{subject}：{fact.raw}。", fact.raw, (fact.span_start, fact.span_end), ""
    matches = list(_CLAUSE.finditer(sentence))
    clauses = [c.group(0) for c in matches]
    bounds = [(sentence_start + c.start(), sentence_start + c.end()) for c in matches]
    holding = next((i for i, (start, end) in enumerate(bounds) if start <= fact.span_start < end), 0)
    # A condition clause just before ("接待对象在10人以内的，") belongs to the rule: without it the answer
    # ("陪餐人数不超过3人") is another case's too.
    first = holding - 1 if holding and only_condition(clauses[holding - 1].rstrip("，,：:")) else holding
    last = holding
    while last + 1 < len(clauses) and not rule_numbers(clauses[last + 1]):
        last += 1
    picked = clauses[first : last + 1]
    evidence = "".join(picked).strip()
    answer = LEADING_MARKER.sub("", evidence).rstrip("，,：:；;")
    if subject and subject not in answer:
        answer = f"{subject}：{answer}"
    span = (bounds[first][0], bounds[last][1]) if bounds else (fact.span_start, fact.span_end)
    condition = LEADING_MARKER.sub("", clauses[first]).strip() if first < holding else ""
    return answer + ("" if answer.endswith(("。", "！", "？")) else "。"), evidence, span, condition


_GENERIC_SUBJECTS = {"部分", "标准", "金额", "项目", "费用", "经费", "支出", "合同", "款", "费"}
_NUMERAL_PART = re.compile(rf"^[0-9０-９.,，~～\-—–至到{CN_NUMERALS}]+")


# An answer that ends in a condition states no rule: "接待对象在10人以内的。", "500万元以下的部分。"
_CONDITION_END = re.compile(r"(?:的|的部分|部分)[。！？]?$")


def only_condition(answer: str) -> bool:
    """Whether ``answer`` (a fact's clause) is only a condition, ending before what follows from it."""
    return bool(_CONDITION_END.search(answer.strip()))


def conditions_other_figure(cloze: str, fact: FactRef) -> bool:
    """Whether the cloze question still states a figure of another kind after the asked one: the fact is
    that figure's condition ("超过多少元的部分按照1%比例核定？" asks for a bracket given its rate)."""
    asked = cloze.find("多少")
    return any(m.start > asked and not units_agree(m.unit, fact.unit) for m in rule_numbers(cloze))


def _ambiguous(chunk: ChunkContext, fact: FactRef, subject: str) -> bool:
    if len(subject) < 2 or subject in _GENERIC_SUBJECTS:
        return True
    return any(
        other.fact_id != fact.fact_id and other.subject == fact.subject and other.value != fact.value
        for other in chunk.facts
    )


def _cloze(evidence: str, fact: FactRef) -> str:
    """The clause as a question: the fact's number replaced by 多少 (百分之多少 for percentages)."""
    raw = fact.raw
    percent = raw.endswith(("%", "％")) or raw.startswith("百分之")
    asked = "百分之多少" if percent else _NUMERAL_PART.sub("多少", raw)
    body = LEADING_MARKER.sub("", evidence).replace(raw, asked, 1).rstrip("，,。；;：: ")
    return body + "？"


def _doc_title(chunk: ChunkContext) -> str:
    return re.sub(r"\.(pdf|txt|md|markdown)$", "", chunk.doc_name, flags=re.IGNORECASE)


def _clean_subject(subject: str) -> str:
    subject = subject.strip()
    return "" if subject in {"", "(未识别)"} else subject


_HEADING_LABEL = re.compile("^" + heading("章节条") + r"\s*")


def _heading_subject(chunk: ChunkContext) -> str:
    last = chunk.heading_path.split(" > ")[0] if chunk.heading_path else ""
    return _HEADING_LABEL.sub("", last) or "该事项"


def _unique(rows: list[QAPair]) -> list[QAPair]:
    seen: set[tuple[str, str]] = set()
    out = []
    for row in rows:
        key = (row.question, row.answer)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out
