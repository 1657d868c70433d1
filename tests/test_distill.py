"""Distillation with the extractive teacher, verification against the ledger, caching and failure records."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from runtime.config import Settings
from tasks.distill.distill import _verified_rows, distill, make_teacher
from tasks.distill.teachers.base import (
    ChunkContext,
    FactRef,
    QAPair,
    TeacherConfigError,
    TeacherOutput,
    Usage,
)
from tasks.distill.teachers.extractive import ExtractiveTeacher
from tasks.distill.verify import verify_row
from tasks.ingest.chunk import Chunk
from tasks.ingest.documents import ingest_file
from tasks.ingest.facts import extract_facts, trim_subject
from tests.conftest import SAMPLE_PDF, corpus_path
from warehouse import distill as queries

CORPUS_TEXTS = ["univ_sdvcst_reimbursement", "univ_sdvcst_research_funds", "univ_sdvcst_travel"]


def _assert_dataset_properties(con, settings: Settings, doc: str) -> dict:
    summary = distill(con, settings, make_teacher(settings), doc=doc)
    totals = summary.totals
    assert summary.failed == 0
    assert totals["facts_covered"] == totals["facts_total"] > 0, "every rule fact has a question"
    assert totals["numeric_share"] >= 0.30
    assert abs(totals["unanswerable_share"] - settings.unanswerable_share) <= 0.02
    facts_by_chunk: dict[str, set[Decimal]] = {}
    for chunk_id, value, value_max in con.execute("SELECT chunk_id, value, value_max FROM facts").fetchall():
        facts_by_chunk.setdefault(chunk_id, set()).update(
            {Decimal(value)} | ({Decimal(value_max)} if value_max else set())
        )
    for row in queries.list_rows(con, status="auto_verified", doc=doc):
        stated = {Decimal(n) for n in row["numbers"]}
        assert stated <= facts_by_chunk.get(row["chunk_id"], set()), row
    return totals


def test_sample_document_rows(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    totals = _assert_dataset_properties(con, settings, SAMPLE_PDF.name)
    assert totals["by_status"].get("needs_review", 0) > 0
    assert totals["by_status"].get("auto_verified", 0) > 0


@pytest.mark.parametrize("stem", CORPUS_TEXTS)
def test_real_texts_rows(con, settings: Settings, stem: str) -> None:
    path = corpus_path("text", f"{stem}.txt")
    ingest_file(con, path, settings)
    _assert_dataset_properties(con, settings, path.name)


def test_rerun_bills_nothing_and_changes_nothing(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    first = distill(con, settings, make_teacher(settings))
    before = con.execute("SELECT count(*), sum(hash(row_id || status)) FROM qa_rows").fetchone()
    second = distill(con, settings, make_teacher(settings))
    after = con.execute("SELECT count(*), sum(hash(row_id || status)) FROM qa_rows").fetchone()
    assert first.rows_added > 0 and second.rows_added == 0
    assert second.cached == second.chunks == first.chunks
    assert before == after


def test_configured_phrasings_and_unanswerable_share(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    more = settings.model_copy(update={"per_fact": 3, "unanswerable_share": 0.10})
    totals = distill(con, more, make_teacher(more)).totals
    facts = con.execute("SELECT count(*) FROM facts").fetchone()[0]
    numeric_questions = con.execute("SELECT count(*) FROM qa_rows WHERE kind = 'numeric'").fetchone()[0]
    assert numeric_questions >= 2.5 * facts
    assert abs(totals["unanswerable_share"] - 0.10) <= 0.02
    for row in queries.list_rows(con):
        if row["kind"] == "unanswerable":
            assert row["answer"] == "文件中没有相关规定。" and row["numbers"] == []
            assert row["status"] == "auto_verified"


# --- the prototype's failures, planted -------------------------------------------------------------------

BOOKS = "第十五条 购买图书资料单笔金额在30000元以上的，须附合同和验收单。"
MEALS = "第十八条 伙食补助费按每人每天100元包干使用；市内交通费按每人每天80元包干使用。"


def _fact(text: str, raw: str, value: str, unit: str, subject: str) -> FactRef:
    start = text.index(raw)
    return FactRef(f"f-{value}", value, None, unit, raw, "", subject, text, start, start + len(raw))


def test_invented_amount_is_not_auto_verified() -> None:
    facts = [_fact(BOOKS, "30000元", "30000", "元", "图书资料单笔金额")]
    good = QAPair(
        "图书资料多少钱以上要附合同？",
        "图书资料单笔金额在30000元以上的，须附合同和验收单。",
        "购买图书资料单笔金额在30000元以上的，须附合同和验收单。",
        kind="numeric",
    )
    bad = QAPair(
        "图书资料多少钱以上要附合同？",
        "图书资料5000元以上附合同。",
        "购买图书资料单笔金额在30000元以上的，须附合同和验收单。",
        kind="numeric",
    )
    assert verify_row(good, BOOKS, facts, review_numeric_rows=False).status == "auto_verified"
    verdict = verify_row(bad, BOOKS, facts, review_numeric_rows=False)
    assert verdict.status != "auto_verified" and not verdict.grounded
    assert "5000元 is not a ledger fact" in verdict.notes[0]


def test_number_of_another_subject_is_not_grounded() -> None:
    facts = [
        _fact(MEALS, "100元", "100", "元/人·天", "伙食补助费"),
        _fact(MEALS, "80元", "80", "元/人·天", "市内交通费"),
    ]
    right = QAPair(
        "伙食补助费每天多少？", "伙食补助费按每人每天100元包干使用。", "伙食补助费按每人每天100元包干使用"
    )
    reused = QAPair("洗衣费的标准是多少？", "洗衣费每人每天100元。", "伙食补助费按每人每天100元包干使用")
    assert verify_row(right, MEALS, facts, review_numeric_rows=False).status == "auto_verified"
    verdict = verify_row(reused, MEALS, facts, review_numeric_rows=False)
    assert verdict.status == "needs_review" and not verdict.grounded
    assert "belongs to 伙食补助费" in verdict.notes[0]


def test_missing_evidence_is_rejected_and_unsure_goes_to_people() -> None:
    facts = [_fact(MEALS, "100元", "100", "元/人·天", "伙食补助费")]
    invented = QAPair(
        "伙食补助费每天多少？", "每人每天100元。", "出差补助一律按每人每天一百五十元发放", kind="numeric"
    )
    assert verify_row(invented, MEALS, facts).status == "rejected"
    unsure = QAPair("伙食补助怎么算？", "包干使用。", "伙食补助费按每人每天100元包干使用", unsure=True)
    assert verify_row(unsure, MEALS, facts).status == "needs_review"
    noisy = QAPair(
        "伙食补助费每天多少？",
        "伙食补助费每人每天100元。",
        "伙食补助费按每人每天 100 元包干使用",
        kind="numeric",
    )
    assert verify_row(noisy, MEALS, facts).evidence_found  # PDF spacing differences are tolerated


# --- failures are recorded; model teachers run concurrently -----------------------------------------------


class _FlakyTeacher:
    """Fails on chunks whose text mentions 住宿费 until ``healthy`` is set; slow, to show concurrency."""

    name = "flaky"
    model = "test"
    prompt_version = "t1"

    def __init__(self) -> None:
        self.healthy = False
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def generate(self, chunk: ChunkContext) -> TeacherOutput:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        usage = Usage(calls=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.001)
        if "住宿费" in chunk.text and not self.healthy:
            return TeacherOutput(
                raw_text='{"rows": [{"question": ', usage=usage, error="HTTP 500 after 6 attempts"
            )
        if "会议费" in chunk.text and not self.healthy:
            raise RuntimeError("teacher bug")
        return TeacherOutput(rows=[QAPair("这一条讲什么？", chunk.text[:20], chunk.text[:20])], usage=usage)


def test_failures_are_recorded_and_retried_on_rerun(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    teacher = _FlakyTeacher()
    first = distill(con, settings.model_copy(update={"distill_concurrency": 4}), teacher)
    assert teacher.peak > 1, "model teachers are called concurrently"
    assert first.failed > 0
    failed = queries.failed_calls(con, first.run_id)
    assert len(failed) == first.failed
    assert any(f["raw_start"].startswith('{"rows"') for f in failed)
    assert any("teacher raised RuntimeError" in f["error"] for f in failed)
    stored_chunks = con.execute("SELECT count(DISTINCT chunk_id) FROM teacher_calls WHERE teacher = 'flaky'")
    assert stored_chunks.fetchone()[0] == first.chunks, "every chunk has rows or a recorded failure"
    run = con.execute("SELECT calls, cost_usd FROM distill_runs WHERE run_id = ?", [first.run_id]).fetchone()
    assert run[0] == first.usage.calls and run[1] == pytest.approx(first.usage.cost_usd)

    teacher.healthy = True
    second = distill(con, settings, teacher)
    assert second.failed == 0 and second.cached == first.chunks - first.failed
    assert not con.execute("SELECT count(*) FROM teacher_calls WHERE status = 'failed'").fetchone()[0]


def test_unknown_teacher_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(TeacherConfigError, match="unknown teacher 'gpt'"):
        make_teacher(settings, "gpt")


def test_cli_distill_and_rows(tmp_path: Path) -> None:
    from tests.test_cli import slm

    slm("-w", "ws", "ingest", str(SAMPLE_PDF), cwd=tmp_path)
    result = slm("-w", "ws", "distill", "--per-fact", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "numeric share" in result.stdout and "facts covered" in result.stdout
    rows = slm("-w", "ws", "rows", "--status", "needs_review", "--json", cwd=tmp_path)
    import json

    found = json.loads(rows.stdout)
    assert found and all(r["status"] == "needs_review" for r in found)


def _teacher_rows(text: str) -> list[QAPair]:
    """The extractive teacher's numeric rows for one chunk of ``text``, facts as ingestion extracts them."""
    chunk = Chunk("c1", 0, "第三章 差旅费 > 第十条", text, 0, len(text), 1, 1)
    facts = tuple(extract_facts("d1", text, [chunk]))
    context = ChunkContext("c1", "d1", "rules.txt", chunk.heading_path, text, facts)
    return [r for r in ExtractiveTeacher().generate(context).rows if r.kind == "numeric"]


def test_a_condition_is_asked_with_its_rule_not_on_its_own() -> None:
    text = "接待对象在10人以内的，陪餐人数不超过3人；超过10人的，陪餐人数不超过接待对象人数的三分之一。"
    rows = _teacher_rows(text)
    # No row asks for the bare condition ("接待对象在10人以内的。" answers nothing).
    assert rows and not any(r.answer.rstrip("。").endswith("的") for r in rows)
    three = [r for r in rows if "3人" in r.answer]
    assert three and all(r.answer == "接待对象在10人以内的，陪餐人数不超过3人。" for r in three)
    assert all(q.question.startswith("接待对象在10人以内的，") for q in three)
    # The condition's fact is claimed by the row that states it, so every fact still has a row.
    chunk = Chunk("c1", 0, "", text, 0, len(text), 1, 1)
    condition = next(f for f in extract_facts("d1", text, [chunk]) if f.span_start == text.index("10人"))
    assert any(condition.fact_id in r.fact_ids for r in three)


def test_a_row_cites_the_fact_it_asks_about_first() -> None:
    """Two mentions of 1000元 in one sentence: the row about the second rule cites the second mention first,
    not the first mention its answer's value also matches."""
    text = "审批权限1000元（含）以下由部门负责人审批；1000至10000元（含）以下的由部门负责人及分管院领导审批。"
    chunk = Chunk("c1", 0, "第三章 差旅费 > 第十条", text, 0, len(text), 1, 1)
    facts = tuple(extract_facts("d1", text, [chunk]))
    second = next(f for f in facts if f.span_start == text.index("1000至"))
    context = ChunkContext("c1", "d1", "rules.txt", chunk.heading_path, text, facts)
    rows = [r for r in _teacher_rows(text) if r.fact_ids[:1] == (second.fact_id,)]
    stored = _verified_rows(context, "key", rows, Settings())
    assert stored and all(r["fact_ids"][0] == second.fact_id for r in stored)


def test_a_bracket_is_not_asked_given_its_rate() -> None:
    text = "间接费用按照以下比例核定：超过20万元至50万元的部分按照5%的比例核定；超过50万元的部分按照2%的比例核定。"
    questions = [r.question for r in _teacher_rows(text)]
    assert any("百分之多少" in q or "比例" in q for q in questions)
    # "超过多少元至50万元的部分按照5%的比例核定？" gives the rate and asks for the bracket: nobody asks that.
    assert not [q for q in questions if "多少元" in q and "%" in q]


def test_a_duration_threshold_is_not_asked_as_a_deadline() -> None:
    rows = _teacher_rows("出差人员夜间乘坐火车连续超过6小时的，可以购买同席别卧铺。会议会期不超过3天。")
    by_number = {n: [r.question for r in rows if n in r.answer] for n in ("6小时", "3天")}
    assert by_number["6小时"] and not any("多长时间内办理" in q for q in by_number["6小时"])
    assert by_number["3天"] and all("超过多长时间有特别规定" not in q for q in by_number["3天"])
    deadline = _teacher_rows("借款人应当在公务活动结束后15日内办理报销冲账手续。")
    assert any("多长时间内办理" in r.question or "时限" in r.question for r in deadline)


def test_other_is_part_of_a_subject() -> None:
    assert trim_subject("其他人员出差预算金额") == "其他人员出差预算金额"
    assert trim_subject("其差旅费") == "差旅费"
