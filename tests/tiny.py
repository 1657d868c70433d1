"""A tiny base model for end-to-end tests: a 2-layer Llama with a small byte-level BPE tokenizer trained on
the sample, saved as a normal transformers folder (built in seconds, never downloaded; byte-level BPE so
that GGUF export can carry the tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# The size of every tiny test model: two layers, 64 wide, four query heads over two key/value heads. Small
# enough to build and train in seconds, big enough to take each architecture's code paths.
TINY_SIZE: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def training_record(record_id: str, system: str, question: str, answer: str, doc: str, kind: str) -> dict:
    """One row in the dataset snapshot's format: ``{"id", "messages": [system, user, assistant], "doc", "kind"}``."""
    return {
        "id": record_id,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "doc": doc,
        "kind": kind,
    }


def memorise_fast(**more: Any) -> dict[str, Any]:
    """Training overrides for the tiny base: a random base needs more adapter capacity and a higher rate than
    a real one to memorise a few rows in seconds (``more`` adds or replaces settings)."""
    from tasks.train.train import ALL_LINEAR  # torch and transformers only when a test trains

    return {
        "learning_rate": 2e-2,
        "lora_dropout": 0.0,
        "lora_r": 16,
        "lora_alpha": 32,
        "target_modules": ALL_LINEAR,
        **more,
    }


def build_tiny_base(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tasks.answer.prompts import SYSTEM_PROMPT
    from tests.conftest import SAMPLE_MD  # here: benches import this module's builders without pytest's setup

    text = SAMPLE_MD.read_text(encoding="utf-8") + SYSTEM_PROMPT + "文件中没有相关规定。"
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(text.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SIZE,
        max_position_embeddings=1024,
        initializer_range=0.2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).float().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
