"""Fuzzing with hypothesis, bounded in examples and time (the file runs in well under a minute): the number
parser on arbitrary text, text decoding and the ingest pipeline on arbitrary bytes and text, and PDF
ingestion of mutated bytes of a small valid PDF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.config import Settings
from tasks.ingest.chunk import chunk_document
from tasks.ingest.extract import IngestError, decode_text
from tasks.ingest.facts import extract_facts
from tasks.ingest.normalize import join_pages
from tasks.ingest.numbers import KINDS, canonical, find_numbers, parse_numeral, rule_numbers
from tests.reliability import scenarios_hostile as scenarios
from tests.reliability.hostile import GOOD_PAGES, pdf_bytes
from warehouse import ledger
from warehouse.db import connect

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOWER = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text a finance rule (or an attacker) might write: CJK, numerals, full-width digits, units, qualifiers,
# separators, invisible characters, and anything else.
_PIECES = list("0123456789０１２３４５６７８９零〇一二两三四五六七八九十百千万亿点分之元天人次年月日号条第")
_PIECES += [
    "％",
    "%",
    ",",
    ".",
    "．",
    "-",
    "—",
    "～",
    "至",
    "/",
    "·",
    "每人每天",
    "不超过",
    "以上",
    "以下",
    "（",
    "）",
]
_PIECES += [
    "\n",
    " ",
    "\u3000",
    "\u200b",
    "\u202e",
    "\ufeff",
    "。",
    "；",
    "，",
    "〔2022〕",
    "万元",
    "元/人·天",
]
rule_like = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=3)), max_size=60).map("".join)
any_text = st.one_of(st.text(max_size=300), rule_like)


@FAST
@given(any_text)
def test_number_parser_never_raises_and_spans_hold(text: str) -> None:
    mentions = find_numbers(text)
    previous_end = 0
    for m in mentions:
        assert m.raw == text[m.start : m.end] and m.start >= previous_end
        previous_end = m.end
        assert m.kind in KINDS
        assert m.value.is_finite()
        assert Decimal(canonical(m.value)) == m.value  # canonical strings read back to the same value
        if m.value_max is not None:
            assert m.value_max.is_finite()
    assert [m for m in mentions if m.kind == "quantity"] == rule_numbers(text)


_PLAIN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


@FAST
@given(rule_like)
def test_plain_arabic_amounts_are_read_from_their_own_digits(text: str) -> None:
    """A quantity written in plain ASCII digits with no scale word has the value its digits spell."""
    for m in rule_numbers(text):
        raw = m.raw
        if re.search(r"[^\x00-\x7f]", raw.replace("元", "").replace("天", "")) or "%" in raw or "/" in raw:
            continue  # CJK numerals, scales, per-units, fractions: other tests cover those
        found = _PLAIN.search(raw)
        if found and m.value_max is None and not re.search(r"[-~]", raw):
            assert m.value == Decimal(found.group().replace(",", "")), raw


@FAST
@given(st.integers(min_value=0, max_value=10**40))
def test_numeral_round_trips(n: int) -> None:
    assert parse_numeral(str(n)) == n
    assert parse_numeral(str(n).translate({ord("0") + i: 0xFF10 + i for i in range(10)})) == n
    assert parse_numeral(canonical(Decimal(n))) == n


@SLOWER
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(["1", "9", "0"]))
def test_huge_digit_strings_do_not_raise(length: int, digit: str) -> None:
    for text in (
        digit * length + "元",
        "第" + digit * length + "条",
        digit * length + "万元",
        "1." + digit * length,
    ):
        for m in find_numbers(text):
            assert m.raw == text[m.start : m.end] and m.value.is_finite()


@FAST
@given(
    st.integers(min_value=1, max_value=10**9),
    st.text(alphabet="伙食补助费交通住宿会议标准按规定的", max_size=20),
)
def test_an_amount_in_noise_is_found(amount: int, noise: str) -> None:
    text = f"{noise}，每人每天{amount}元。{noise}"
    assert Decimal(amount) in {m.value for m in rule_numbers(text)}


@FAST
@given(st.binary(max_size=600))
def test_decoding_arbitrary_bytes_refuses_or_reads(data: bytes) -> None:
    try:
        text, encoding = decode_text(data)
    except IngestError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(text, str) and encoding and "\x00" not in text


@SLOWER
@given(any_text)
def test_the_text_pipeline_keeps_its_offsets(raw: str) -> None:
    """Normalise, chunk and extract facts from any text: no exception, every offset points at its text."""
    text, pages = join_pages([raw], is_pdf=False)
    if not text.strip():
        return
    chunks = chunk_document("d", text, pages, 120, 20)
    for chunk in chunks:
        assert text[chunk.start_char : chunk.end_char] == chunk.text
    by_id = {c.chunk_id: c for c in chunks}
    for fact in extract_facts("d", text, chunks):
        assert by_id[fact.chunk_id].text[fact.span_start : fact.span_end] == fact.raw
        assert len(fact.context) <= len(by_id[fact.chunk_id].text)


@pytest.fixture(scope="module")
def pdf_warehouse(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Settings, Path]]:
    work = tmp_path_factory.mktemp("pdf-fuzz")
    cfg = scenarios.workspace(work)
    con = connect(cfg.warehouse_path)
    try:
        yield con, cfg, work
    finally:
        con.close()


_VALID_PDF = pdf_bytes(GOOD_PAGES)


@SLOWER
@given(st.data())
def test_mutated_pdfs_are_added_or_refused_clearly(pdf_warehouse, data: st.DataObject) -> None:
    con, cfg, work = pdf_warehouse
    buf = bytearray(_VALID_PDF)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]), label="kind")
        at = data.draw(st.integers(0, len(buf) - 1), label="at")
        if kind == "flip":
            buf[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del buf[max(at, 1) :]
        elif kind == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del buf[at : at + data.draw(st.integers(1, 200))]
        else:
            chunk = data.draw(
                st.sampled_from([b"0 0 obj", b"<<<<", b"]]]]", b"endstream", b"xref", b"\x00" * 8])
            )
            buf[at : at + len(chunk)] = chunk
        if len(buf) < 2:
            break
    before = ledger.table_counts(con)
    problems = scenarios.check_pdf_bytes(con, cfg, work / "mutant.pdf", bytes(buf))
    assert problems == []
    after = ledger.table_counts(con)
    assert after["documents"] - before["documents"] <= 1
