"""Answers end where training taught them to, in every backend, and loops are cut.

A tiny model (tests/tiny.py), given the chat template an instruction-tuned Gemma ships (its turns end with
``<end_of_turn>``, a token other than eos), is trained on three rows until it reproduces them, then exported
to an f16 GGUF: the labels end the answer with the chat template's end-of-turn token, transformers and
llama.cpp both stop there (not at the token limit), the GGUF names it as llama.cpp's eot token so that any
llama.cpp front end stops there too, and llama.cpp's log lines never reach the terminal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tasks.answer.prompts import chat_messages
from tasks.answer.stop import end_of_turn_token, repeated_span, stop_token_ids, turn_end_text
from tasks.models.base_models import GEMMA_CHAT_TEMPLATE, SIMPLE_CHAT_TEMPLATE, load_tokenizer
from tests.conftest import SAMPLE_MD, require_or_skip

ROWS = [
    ("出差伙食补助费每人每天多少钱？", "每人每天100元。"),
    ("会议费每人每天的标准是多少？", "每人每天550元。"),
    ("劳务费的上限是多少？", "劳务费不超过1200元。"),
]
# Taught on purpose, so that a loop is there to cut (as "【120元/人】" ran twenty times in `slm ask`).
LOOP = ("区域伙食补助标准是多少？", "【120元/人】" * 8)
# The start of a llama.cpp / ggml log line: "llama_model_loader: ...", "print_info: ...", "load_tensors: ...".
LLAMA_LOG = re.compile(
    r"^\s*(llama|ggml|gguf|llm_|print_info|load_tensors|load_backend|common_|graph_|sched_|init:|main:)\w*",
    re.MULTILINE,
)
# Google's Gemma format as an instruction-tuned Gemma ships it: every turn, the model's too, ends with
# <end_of_turn>. (The template this project gives a template-less, pretrained Gemma ends the model's turn
# with eos.)
GEMMA_IT_TEMPLATE = GEMMA_CHAT_TEMPLATE.replace(
    "(eos_token if role == 'model' else '<end_of_turn>')", "'<end_of_turn>'"
)
CHATML = (
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


# --- repeated spans -------------------------------------------------------------------------------------------


def test_repeated_span_finds_loops() -> None:
    assert repeated_span("答：【120元/人】【120元/人】【120元/人】") == "【120元/人】"
    assert repeated_span("【120元/人】\n" * 20) == "【120元/人】\n"
    assert repeated_span("…100元/人·天。 eleSp eleSp eleSp eleSp") == " eleSp"
    assert repeated_span("的" * 18) == "的" * 6  # a one-token loop, once it spans min_len characters
    assert repeated_span("ab" * 9) == "ababab"  # a short unit: found as the shortest unit of >= 6 characters


def test_repeated_span_spares_ordinary_answers() -> None:
    assert repeated_span("每人每天100元。") is None
    assert repeated_span("伙食补助费每人每天100元，住宿费每人每天500元，超出部分由个人承担。") is None
    assert repeated_span("【120元/人】【120元/人】") is None  # twice is not a loop
    assert repeated_span("【120元/人】，【120元/人】，【120元/人】", times=3) is None  # not in a row
    assert repeated_span("的的的的的") is None  # shorter than min_len
    assert repeated_span("abcabcabc", min_len=3) == "abc"
    assert repeated_span("abcabc", min_len=3, times=2) == "abc"
    assert repeated_span("") is None
    with pytest.raises(ValueError):
        repeated_span("x", times=1)


# --- the end-of-turn token, from the template -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base with an instruction-tuned Gemma's chat template saved beside it."""
    from tests.tiny import build_tiny_base

    folder = build_tiny_base(tmp_path_factory.mktemp("stop") / "base")
    tokenizer = load_tokenizer(folder)
    tokenizer.chat_template = GEMMA_IT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_end_of_turn_is_read_from_the_template(tiny_base: Path) -> None:
    import jinja2

    tokenizer = load_tokenizer(tiny_base)
    assert tokenizer.chat_template == GEMMA_IT_TEMPLATE  # saved with the folder: kept as it is
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn_token(tokenizer) == ("<end_of_turn>", eot)
    assert stop_token_ids(tokenizer)[:2] == [eot, tokenizer.eos_token_id]

    # A template-less (pretrained) Gemma gets Gemma's format with the model's turn closed by eos, a token
    # the pretrained model knows; the user's turn still closes with <end_of_turn>.
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    assert end_of_turn_token(tokenizer) == ("<eos>", tokenizer.eos_token_id)
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]
    rendered = tokenizer.apply_chat_template(chat_messages("Q", "A"), tokenize=False)
    assert rendered.endswith("Q<end_of_turn>\n<start_of_turn>model\nA<eos>\n")

    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE  # closes a turn with eos
    assert end_of_turn_token(tokenizer) == ("<eos>", tokenizer.eos_token_id)
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]

    def chatml(messages: list[dict[str, str]]) -> str:
        return jinja2.Template(CHATML).render(messages=messages, add_generation_prompt=False)

    assert turn_end_text(chatml) == "<|im_end|>"
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.chat_template = CHATML
    assert end_of_turn_token(tokenizer) == ("<|im_end|>", tokenizer.convert_tokens_to_ids("<|im_end|>"))

    def refuses(messages: list[dict[str, str]]) -> str:
        raise ValueError("roles must alternate")

    assert turn_end_text(refuses) is None
    assert turn_end_text(lambda m: m[-1]["content"]) is None  # nothing closes the turn


def test_transformers_penalty_spares_the_prompt() -> None:
    from tasks.answer.generate import _AnswerRepeatPenalty

    ids = torch.tensor([[5, 6, 7, 8]])  # prompt 5, 6; answer so far 7, 8
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, -2.0]])
    out = _AnswerRepeatPenalty(prompt_width=2, penalty=2.0)(ids, scores.clone())
    assert out.tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0, -4.0]]


# --- a trained tiny model, end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny base trained until it reproduces ROWS and LOOP, and its merged f16 GGUF export."""
    from tasks.export.export import export_model
    from tasks.train.train import train
    from tests.tiny import memorise_fast

    root = tmp_path_factory.mktemp("trained")
    dataset = root / "stopds"
    dataset.mkdir()
    rows = [
        {"id": f"r{i}", "messages": chat_messages(q, a), "doc": "sample_rules.md", "kind": "numeric"}
        for i, (q, a) in enumerate([*ROWS, LOOP])
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (dataset / "train.jsonl").write_text(text, encoding="utf-8")
    (dataset / "valid.jsonl").write_text(text, encoding="utf-8")
    result = train(
        dataset,
        str(tiny_base),
        root / "run",
        max_steps=60,
        save_steps=60,
        progress=False,
        threads=2,
        overrides=memorise_fast(batch_size=4, grad_accum=1, gradient_checkpointing=False),
    )
    adapter = result.adapter_dir
    gguf = None
    try:
        import llama_cpp  # noqa: F401

        gguf = export_model(adapter, str(tiny_base), root / "gguf", quant="f16", model_id="stop-test").path
    except ImportError:
        pass
    return {"base": tiny_base, "adapter": adapter, "gguf": gguf}


def test_labels_end_the_answer_with_end_of_turn(trained: dict) -> None:
    from tasks.train.train import IGNORE_INDEX, encode_messages

    tokenizer = load_tokenizer(trained["adapter"])
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    question, answer = ROWS[0]
    encoded = encode_messages(tokenizer, chat_messages(question, answer), 512)
    assert encoded is not None
    labels = [t for t in encoded["labels"] if t != IGNORE_INDEX]
    at = labels.index(eot)
    assert tokenizer.decode(labels[:at]) == answer  # the answer, then at once the end of turn
    assert tokenizer.decode(labels[at + 1 :]).strip() == ""  # only the template's newline after it


def test_transformers_generation_stops_at_end_of_turn(trained: dict) -> None:
    from tasks.answer.generate import TransformersGenerator

    generator = TransformersGenerator(str(trained["base"]), adapter_dir=trained["adapter"], max_new_tokens=64)
    eot = generator.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert generator.stop_ids[0] == eot and generator.repeat_penalty == pytest.approx(1.1)
    messages = [chat_messages(q) for q, _ in ROWS]
    rows = generator.generate_ids(messages)
    for ids in rows:
        assert ids[-1] == eot and len(ids) < 64  # stopped at the end of turn, not at the limit
    assert generator.chat(messages) == [a for _, a in ROWS]


def test_exported_gguf_names_end_of_turn(trained: dict) -> None:
    if trained["gguf"] is None:
        require_or_skip("llama-cpp-python is not installed")
    from tasks.export.export import read_gguf

    contents = read_gguf(trained["gguf"])
    tokens = contents.value("tokenizer.ggml.tokens")
    eot = contents.value("tokenizer.ggml.eot_token_id")
    token = tokens[eot]
    assert (token.decode() if isinstance(token, bytes) else token) == "<end_of_turn>"
    assert contents.value("tokenizer.ggml.eos_token_id") == load_tokenizer(trained["base"]).eos_token_id
    assert contents.value("tokenizer.chat_template") == GEMMA_IT_TEMPLATE


def test_llamacpp_generation_stops_at_end_of_turn(trained: dict) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from tasks.answer.serve import LlamaCppGenerator

    generator = LlamaCppGenerator(trained["gguf"], n_ctx=512, n_threads=2, max_new_tokens=64)
    try:
        assert generator.end_of_turn is not None and generator.end_of_turn[0] == "<end_of_turn>"
        eot = generator.end_of_turn[1]
        assert generator.stop_ids[0] == eot
        for question, answer in ROWS:
            assert generator(chat_messages(question)) == answer
            assert generator.finish_reason == "stop"
        # Any llama.cpp front end: the GGUF alone makes <end_of_turn> the end of generation.
        vocab = generator.llm._model.vocab
        assert llama_cpp.llama_vocab_eot(vocab) == eot and llama_cpp.llama_vocab_is_eog(vocab, eot)
    finally:
        generator.close()
    plain = llama_cpp.Llama(model_path=str(trained["gguf"]), n_ctx=512, n_threads=2, verbose=False)
    try:
        # llama-cpp-python's own chat handler from the GGUF's template, no stop strings given.
        out = plain.create_chat_completion(
            messages=chat_messages(ROWS[0][0]), max_tokens=64, temperature=0.0, repeat_penalty=1.0
        )
    finally:
        plain.close()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"].strip() == ROWS[0][1]


def test_a_loop_is_cut_in_both_backends(trained: dict) -> None:
    """The model was taught an answer that repeats itself eight times: both backends stop at the third."""
    from tasks.answer.generate import TransformersGenerator

    question, looping = LOOP
    hf = TransformersGenerator(
        str(trained["base"]), adapter_dir=trained["adapter"], max_new_tokens=96, repeat_penalty=1.0
    )
    text = hf.chat([chat_messages(question)])[0]
    assert repeated_span(text) == "【120元/人】" and looping.startswith(text) and len(text) < len(looping)
    hf.stop_on_repeats = False
    assert hf.chat([chat_messages(question)])[0] == looping  # without the cut it runs on
    if trained["gguf"] is None:
        return
    from tasks.answer.serve import LlamaCppGenerator

    generator = LlamaCppGenerator(
        trained["gguf"], n_ctx=512, n_threads=2, max_new_tokens=96, repeat_penalty=1.0
    )
    try:
        text = generator(chat_messages(question))
        assert generator.finish_reason == "repetition"
        assert repeated_span(text) == "【120元/人】" and looping.startswith(text) and len(text) < len(looping)
        generator.stop_on_repeats = False
        assert generator(chat_messages(question)) == looping and generator.finish_reason == "stop"
    finally:
        generator.close()


# --- library logs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swa_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma 3 GGUF: sliding-window attention and a 256-token training context make llama.cpp log
    at load ("llama_kv_cache_iswa: using full-size SWA cache", "n_ctx_seq > n_ctx_train"), lines that
    llama-cpp-python's own logger prints even with verbose=False."""
    pytest.importorskip("llama_cpp")
    from tasks.export.export import export_model
    from tests.test_export import make_model

    root = tmp_path_factory.mktemp("swa")
    make_model("gemma3", root / "base")
    return export_model(None, str(root / "base"), root / "out", quant="f16").path


def test_llamacpp_logs_never_reach_the_terminal(swa_gguf: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from tasks.answer.serve import LlamaCppGenerator, llama_log_tail

    capfd.readouterr()
    generator = LlamaCppGenerator(swa_gguf, n_ctx=512, n_threads=2, max_new_tokens=16)
    try:
        answer = generator(chat_messages(ROWS[0][0]))
    finally:
        generator.close()
    out, err = capfd.readouterr()
    assert isinstance(answer, str)
    assert out == "" and not LLAMA_LOG.search(err), (out, err)
    assert llama_log_tail()  # llama.cpp did log (loading the model): kept in memory, not printed


def test_slm_ask_prints_only_the_answer(swa_gguf: Path, tmp_path: Path) -> None:
    from tests.test_cli import slm

    ingested = slm("-w", "ws", "ingest", str(SAMPLE_MD), cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr
    asked = slm("-w", "ws", "ask", ROWS[0][0], "--model", str(swa_gguf), cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert not LLAMA_LOG.search(asked.stdout), asked.stdout
    assert not LLAMA_LOG.search(asked.stderr), asked.stderr
    lines = asked.stdout.splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.startswith("mode grounded"))
    # The answer first, then the sources of its numbers and the guard's verdict: nothing else.
    assert verdict >= 1 and all(line.startswith("source:") for line in lines[1:verdict]), lines
