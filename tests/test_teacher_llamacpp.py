"""The llama.cpp teacher: configuration errors (fast), and a real run on Gemma 3 270M (slow).

The slow tests check structure, not quality: a 270M model writes poor rows, but grammar-constrained
decoding must still give JSON of the response schema, with token usage counted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.config import Settings
from tasks.distill.teachers.base import ChunkContext, FactRef, TeacherConfigError
from tasks.distill.teachers.llamacpp import INSTALL_HINT, LlamaCppTeacher
from tasks.distill.teachers.llm import PROMPT_VERSION, ResponseModel
from tests.conftest import require_or_skip

# Not imported here: the teacher sets OMP_WAIT_POLICY before llama_cpp (and OpenMP) first loads.
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
MAX_TOKENS = 256  # the row cap (per_fact=1: two rows) closes the JSON in ~60 tokens; this is a backstop

TEXT = "第十八条 伙食补助费按出差自然（日历）天数实行定额包干，每人每天100元。"
CHUNK = ChunkContext(
    chunk_id="c-meal",
    doc_id="d-travel",
    doc_name="差旅费管理办法",
    heading_path="第四章 伙食补助费",
    text=TEXT,
    facts=(
        FactRef(
            fact_id="f-meal-100",
            value="100",
            value_max=None,
            unit="元/人·天",
            raw="每人每天100元",
            qualifier="",
            subject="伙食补助费",
            context=TEXT,
            span_start=TEXT.index("每人"),
            span_end=TEXT.index("。"),
        ),
    ),
)


def _settings(**values: object) -> Settings:
    # Explicit values beat SLM_* variables, so the developer's environment cannot change the test.
    return Settings(llamacpp_threads=2, per_fact=1, **values)


def test_missing_model_file_names_path_and_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(TeacherConfigError) as info:
        LlamaCppTeacher(_settings(llamacpp_model_path=str(missing)))
    assert str(missing) in str(info.value)
    assert "llamacpp_model_path" in str(info.value)


def test_without_llama_cpp_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")  # never loaded: the import check comes first
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")  # the teacher sets it; keep this test's change local
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(TeacherConfigError, match="llama-cpp-python") as info:
        LlamaCppTeacher(_settings(llamacpp_model_path=str(model)))
    assert INSTALL_HINT in str(info.value)


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (slm-factory[llamacpp])")
def test_model_is_not_loaded_until_first_generate(tmp_path: Path) -> None:
    model = tmp_path / "custom-model.gguf"
    model.write_bytes(b"GGUF")
    teacher = LlamaCppTeacher(_settings(llamacpp_model_path=str(model)))
    assert (teacher.name, teacher.model, teacher.prompt_version) == ("llamacpp", model.name, PROMPT_VERSION)
    assert not teacher.loaded
    # The grammar may close the rows array after per_fact + 1 rows per fact (at least one fact's worth).
    assert teacher._schema_for(CHUNK)["properties"]["rows"]["maxItems"] == 2
    assert teacher._schema_for(ChunkContext("c", "d", "n", "", "x"))["properties"]["rows"]["maxItems"] == 2


@pytest.fixture(scope="module")
def gemma() -> Iterator[LlamaCppTeacher]:
    if not HAS_LLAMA_CPP:
        require_or_skip("llama-cpp-python is not installed (pip install 'slm-factory[llamacpp]')")
    teacher = LlamaCppTeacher(_settings(llamacpp_model_path="gemma3-270m"), max_tokens=MAX_TOKENS)
    yield teacher
    teacher.close()


@pytest.mark.slow
def test_gemma_returns_schema_json_and_reuses_the_model(gemma: LlamaCppTeacher) -> None:
    assert gemma.model == "gemma-3-270m-q4_k_m.gguf"
    assert not gemma.loaded

    first = gemma.generate(CHUNK)
    assert gemma.loaded and gemma.load_seconds is not None
    assert gemma._llm.chat_format == "gemma"  # the GGUF has no template; not llama-cpp's Llama 2 fallback
    assert first.raw_text is not None
    # Constrained decoding: whatever the rows say, the text is JSON of the response schema.
    json.loads(first.raw_text)
    ResponseModel.model_validate_json(first.raw_text)
    assert first.usage.calls == 1 and first.usage.cost_usd == 0.0
    assert first.usage.prompt_tokens > 50 and first.usage.completion_tokens > 0
    assert len(json.loads(first.raw_text)["rows"]) <= 2  # the grammar's row cap: 1 fact x (per_fact + 1)
    if first.error is None:
        assert first.rows and all(row.question and row.answer for row in first.rows)

    llm_before = gemma._llm
    started = time.perf_counter()
    second = gemma.generate(CHUNK)
    assert gemma._llm is llm_before  # same loaded model, not a second load
    assert second.raw_text is not None and second.usage.calls == 1
    ResponseModel.model_validate_json(second.raw_text)
    print(f"load {gemma.load_seconds:.2f}s, second generate {time.perf_counter() - started:.2f}s")


@pytest.mark.slow
def test_prompt_longer_than_context_is_reported_not_raised() -> None:
    if not HAS_LLAMA_CPP:
        require_or_skip("llama-cpp-python is not installed (pip install 'slm-factory[llamacpp]')")
    teacher = LlamaCppTeacher(_settings(llamacpp_model_path="gemma3-270m"), n_ctx=64)
    try:
        out = teacher.generate(CHUNK)
    finally:
        teacher.close()
    assert out.failed and "context window" in (out.error or "")
    assert out.rows == [] and out.raw_text is None
