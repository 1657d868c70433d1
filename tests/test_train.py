"""LoRA training on a tiny Gemma-3-shaped model built here (2 layers, hidden 64, soft-capped logits).

The tokenizer is character-level, made offline from the fixture's own text, with Gemma's turn tokens so that
the Gemma chat template applies. Everything runs on CPU in well under a minute and a half.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, TrainerCallback

from tasks.answer.answer import CONTEXT_FORMAT
from tasks.models.base_models import (
    GEMMA_CHAT_TEMPLATE,
    SIMPLE_CHAT_TEMPLATE,
    BaseModelError,
    load_base,
    load_tokenizer,
    resolve_base,
)
from tasks.train.train import (
    IGNORE_INDEX,
    QLORA_NEEDS_CUDA,
    ChatDataset,
    PadCollator,
    SlmTrainer,
    TrainError,
    answer_only_loss,
    encode_messages,
    get_profile,
    last_complete_checkpoint,
    train,
    training_arguments,
)
from tests.tiny import TINY_SIZE, memorise_fast, training_record

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "你是高校财务制度助手，只依据制度原文回答。"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津", "长沙"]
ITEMS = ["住宿费", "伙食补助", "市内交通费", "会议费"]


def make_rows(n: int, offset: int = 0) -> list[dict]:
    """Rows of varied length, in the dataset snapshot's format."""
    rows = []
    for i in range(offset, offset + n):
        city, item = CITIES[i % len(CITIES)], ITEMS[i % len(ITEMS)]
        amount = 100 + 37 * i
        question = f"{city}出差的{item}标准是多少？" + "请说明依据。" * (i % 3)
        answer = f"{city}{item}标准为每人每天{amount}元。" + "超出部分由个人承担。" * (i % 4)
        rows.append(training_record(f"row{i}", SYSTEM, question, answer, "travel_rules.pdf", "numeric"))
    return rows


def write_dataset(folder: Path, train_rows: list[dict], valid_rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    for name, rows in (("train.jsonl", train_rows), ("valid.jsonl", valid_rows)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def make_tokenizer(with_turn_tokens: bool = True):
    """A character-level fast tokenizer over the fixture's characters plus ASCII."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = SYSTEM + "".join(CITIES + ITEMS) + "出差的标准是多少？请说明依据。为每人每天元。超出部分由个人承担"
    text += "".join(chr(c) for c in range(32, 127)) + "\n|"
    specials = SPECIALS if with_turn_tokens else SPECIALS[:4]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in dict.fromkeys(text):
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # characters join back without spaces
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    return tokenizer


def tiny_config(kind: str, vocab_size: int):
    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            **TINY_SIZE,
            max_position_embeddings=512,
            initializer_range=0.2,  # distinct embeddings, so that a few LoRA steps can move the logits
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        **{**TINY_SIZE, "num_attention_heads": 2, "num_key_value_heads": 1},
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        initializer_range=0.2,
        final_logit_softcapping=30.0,  # Gemma 2's value; exercises the soft-capping path of the loss
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def tiny_model(kind: str = "gemma3", vocab_size: int = 200):
    torch.manual_seed(0)
    config = tiny_config(kind, vocab_size)
    cls = LlamaForCausalLM if kind == "llama" else Gemma3ForCausalLM
    return cls(config).float()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A 64-wide model gains nothing from more threads, and on a busy machine they make it much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny base folder whose tokenizer has no chat template (load_base must add Gemma's)."""
    folder = tmp_path_factory.mktemp("tiny_base")
    tokenizer = make_tokenizer()
    tiny_model("gemma3", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds") / "d5e1a7c0ffee", make_rows(24), make_rows(6, 100))


def batch_of(tokenizer, rows: list[dict]) -> dict[str, torch.Tensor]:
    ds = ChatDataset(rows, tokenizer, 256)
    return PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


# ------------------------------------------------------------------------------------------------ models


def test_load_base_sets_chat_template_and_stable_identity(tiny_base: Path) -> None:
    model, tokenizer, identity = load_base(str(tiny_base))
    assert tokenizer.chat_template == GEMMA_CHAT_TEMPLATE
    assert next(model.parameters()).dtype == torch.float32
    assert identity.path == str(tiny_base) and len(identity.content_hash) == 64
    assert load_base(str(tiny_base))[2] == identity
    text = tokenizer.apply_chat_template(make_rows(1)[0]["messages"], tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n" + SYSTEM + "\n\n")
    assert text.endswith("<eos>\n")  # the model's turn ends with eos, a token a pretrained base knows


def test_tokenizer_without_turn_tokens_gets_simple_template(tmp_path: Path) -> None:
    make_tokenizer(with_turn_tokens=False).save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).chat_template == SIMPLE_CHAT_TEMPLATE


def test_unknown_hub_id_says_no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        BaseModelError, match="not in the local cache and the hub cannot be reached: HF_HUB_OFFLINE"
    ):
        resolve_base("some-org/not-cached-model", tmp_path)


# ------------------------------------------------------------------------------------------------ data


def test_labels_mask_the_prompt_and_keep_the_answer() -> None:
    tokenizer = make_tokenizer()
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    messages = make_rows(3)[2]["messages"]
    encoded = encode_messages(tokenizer, messages, 256)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and all(label != IGNORE_INDEX for label in labels[n_prompt:])
    assert tokenizer.decode(ids[n_prompt:]) == messages[-1]["content"] + "<eos>\n"
    assert tokenizer.decode(ids[:n_prompt]).endswith("<start_of_turn>model\n")
    # Padding never carries a label either.
    batch = PadCollator(tokenizer.pad_token_id, max_length=len(ids) + 5)([encoded])
    assert batch["labels"][0, -5:].tolist() == [IGNORE_INDEX] * 5
    assert batch["attention_mask"][0].sum() == len(ids)
    # A long prompt (a long retrieved context) loses its middle; the question and the answer stay whole.
    long_messages = [
        messages[0],
        {"role": "user", "content": "规定原文：" + "资料" * 400 + "问题：住宿费标准是多少？"},
        messages[-1],
    ]
    cut = encode_messages(tokenizer, long_messages, 128)
    assert cut is not None and len(cut["input_ids"]) == 128 and cut["truncated"]
    answer_tokens = [
        t for t, label in zip(cut["input_ids"], cut["labels"], strict=True) if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(answer_tokens) == messages[-1]["content"] + "<eos>\n"
    kept_prompt = tokenizer.decode(
        [t for t, label in zip(cut["input_ids"], cut["labels"], strict=True) if label == IGNORE_INDEX]
    )
    assert "住宿费标准是多少？" in kept_prompt and kept_prompt.endswith("<start_of_turn>model\n")
    assert kept_prompt.count("资料") < 400
    # Answer longer than half of max_length: cut at the end; nothing of the answer left: dropped.
    assert encode_messages(tokenizer, messages, n_prompt + 2)["labels"][-2:] == ids[n_prompt : n_prompt + 2]
    assert encode_messages(tokenizer, messages, n_prompt) is None


def test_dynamic_padding_varies_batch_lengths(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    model = tiny_model("gemma3", len(tokenizer))

    def batches(prof) -> tuple[list[int], int]:
        ds = ChatDataset(make_rows(96), tokenizer, prof.max_length)
        trainer = SlmTrainer(
            model=model,
            args=training_arguments(prof, tmp_path, has_eval=False),
            data_collator=PadCollator(tokenizer.pad_token_id),
            train_dataset=ds,
        )
        widths, waste = [], 0
        for batch in trainer.get_train_dataloader():
            widths.append(batch["input_ids"].shape[1])
            assert widths[-1] == int(batch["attention_mask"].sum(1).max())  # padded to its own longest row
            waste += int((batch["attention_mask"] == 0).sum())
        return widths, waste

    prof = get_profile("cpu-small", {"batch_size": 2})
    widths, grouped_waste = batches(prof)
    assert len(set(widths)) > 3 and max(widths) < prof.max_length
    # Grouping by length: far less padding than random batches of the same rows.
    _, random_waste = batches(get_profile("cpu-small", {"batch_size": 2, "group_by_length": False}))
    assert grouped_waste < 0.5 * random_waste


# ------------------------------------------------------------------------------------------------ loss


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_answer_only_loss_equals_full_loss_and_gradients(kind: str) -> None:
    tokenizer = make_tokenizer()
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    batch = batch_of(tokenizer, make_rows(5))
    model = tiny_model(kind, len(tokenizer))
    if kind == "gemma3":
        assert model.config.final_logit_softcapping == 30.0

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return out

    full = model(**batch).loss
    full.backward()
    full_grads = grads()
    selective = answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    selective.backward()
    sel_grads = grads()
    assert abs(full.item() - selective.item()) < 1e-5
    assert full_grads.keys() == sel_grads.keys() and len(full_grads) > 10
    for name, g in full_grads.items():
        assert torch.allclose(g, sel_grads[name], atol=1e-5, rtol=1e-4), name
    # With gradient accumulation the Trainer passes the answer tokens of the whole accumulated batch.
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) * 3
    with torch.no_grad():
        full_n = model(**batch, num_items_in_batch=n).loss
        sel_n = answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], n)
    assert abs(full_n.item() - sel_n.item()) < 1e-5


# ------------------------------------------------------------------------------------------------ train


def test_training_memorises_and_writes_the_adapter(tiny_base: Path, tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "abc123", make_rows(8), make_rows(8))  # valid = train: memorisation
    out = tmp_path / "run"
    result = train(
        ds,
        str(tiny_base),
        out,
        max_steps=20,
        progress=False,
        save_steps=10,
        threads=1,
        overrides=memorise_fast(),
    )
    train_losses = [t for _, t, _ in result.loss_curve if t is not None]
    eval_losses = [e for _, _, e in result.loss_curve if e is not None]
    assert result.optimizer_steps == 20 and len(train_losses) == 20 and len(eval_losses) == 2
    assert train_losses[-1] < 0.25 * train_losses[0]
    assert result.final_eval_loss is not None and result.final_eval_loss < 0.25 * train_losses[0]
    assert result.final_eval_loss == pytest.approx(min(eval_losses), rel=1e-4)  # the best adapter is kept
    assert result.device == "cpu" and result.tokens_per_s > 0 and result.peak_rss_mb > 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "loss.png").stat().st_size
    meta = json.loads((out / "adapter" / "slm_adapter.json").read_text(encoding="utf-8"))
    assert meta["dataset_id"] == "abc123" and meta["base"]["content_hash"] == result.base.content_hash
    assert meta["profile"]["name"] == "cpu-small" and meta["optimizer_steps"] == 20
    assert len(meta["loss_curve"]) == 20 and meta["train_rows"]["kept"] == 8
    assert meta["padded_tokens"] >= meta["train_tokens"] > 0
    assert load_tokenizer(out / "adapter").chat_template == GEMMA_CHAT_TEMPLATE


def test_closed_book_rows_are_trained_as_many_times_as_the_profile_says(
    tiny_base: Path, tmp_path: Path
) -> None:
    rows = make_rows(6)
    for row in rows[4:]:  # two rows with retrieved context, as the dataset's context copies are marked
        row["context"] = CONTEXT_FORMAT
    ds = write_dataset(tmp_path / "passes", rows, [])
    for passes, kept in ((1, 6), (3, 4 * 3 + 2)):
        out = tmp_path / f"run-{passes}"
        train(
            ds,
            str(tiny_base),
            out,
            max_steps=1,
            progress=False,
            threads=1,
            overrides={"closed_book_passes": passes},
        )
        meta = json.loads((out / "adapter" / "slm_adapter.json").read_text(encoding="utf-8"))
        assert meta["train_rows"]["kept"] == kept and meta["profile"]["closed_book_passes"] == passes
    assert get_profile("cpu-small").closed_book_passes == 1  # the demo's budget reads (README "Training")


def test_gradient_checkpointing_changes_memory_not_the_optimisation(tiny_base: Path, tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ckpt", make_rows(8), [])
    curves, checkpointed = {}, {}
    # off; every batch checkpointed; checkpointing on but no batch long enough for it
    for name, on, above in (("off", False, None), ("all", True, None), ("none-long", True, 10**6)):
        result = train(
            ds,
            str(tiny_base),
            tmp_path / f"run-{name}",
            max_steps=4,
            progress=False,
            threads=1,
            overrides={
                "gradient_checkpointing": on,
                "checkpoint_above_tokens": above,
                "learning_rate": 1e-2,  # dropout stays on: checkpointing replays the RNG
            },
        )
        curves[name] = [t for _, t, _ in result.loss_curve if t is not None]
        checkpointed[name] = result.extra["checkpointed_batches"]
    assert len(curves["all"]) == 4
    assert curves["all"] == pytest.approx(curves["off"], rel=1e-4)
    assert curves["none-long"] == pytest.approx(curves["off"], rel=1e-4)
    assert checkpointed == {"off": 0, "all": 8, "none-long": 0}  # 4 steps x 2 accumulated batches
    profile = get_profile("cpu-small")  # the default off-GPU recipe checkpoints long batches only
    assert profile.gradient_checkpointing and profile.checkpoint_above_tokens


def test_qlora_without_cuda_fails_before_loading(tmp_path: Path, dataset: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainError, match=QLORA_NEEDS_CUDA):
        train(dataset, "no/such-base-is-loaded", tmp_path / "out", profile="gpu-qlora", progress=False)


class _Slow(TrainerCallback):
    """Slows each step so that the parent can kill the run between checkpoints."""

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.4)


# 24 training rows in batches of 8 for 4 epochs: 12 optimiser steps, a checkpoint every 3.
RESUME_KW = {"epochs": 4, "save_steps": 3, "progress": False, "early_stopping_patience": 100, "threads": 1}
RESUME_STEPS = 12


def _child(dataset: str, base: str, out: str) -> None:
    train(Path(dataset), base, Path(out), callbacks=[_Slow()], **RESUME_KW)


def test_resume_after_sigkill_finishes_with_the_same_steps(
    tiny_base: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    code = f"from tests.test_train import _child; _child({str(dataset)!r}, {str(tiny_base)!r}, {str(out)!r})"
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        deadline = time.monotonic() + 120
        while last_complete_checkpoint(out / "checkpoints") is None:
            assert child.poll() is None, "the child ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = int(last_complete_checkpoint(out / "checkpoints").name.split("-")[-1])
    assert killed_at < RESUME_STEPS and not (out / "adapter").exists()

    resumed = train(dataset, str(tiny_base), out, resume=True, **RESUME_KW)
    assert (
        resumed.optimizer_steps == RESUME_STEPS
    )  # what the uninterrupted run makes (as the other test shows)
    assert resumed.extra["resumed_from"].endswith(f"checkpoint-{killed_at}")
    # Every step trained exactly once: the log history came back with the checkpoint, no step repeated.
    assert [s for s, t, _ in resumed.loss_curve if t is not None] == list(range(1, RESUME_STEPS + 1))
    assert (out / "adapter" / "slm_adapter.json").is_file()


def test_uninterrupted_run_makes_the_same_steps(tiny_base: Path, dataset: Path, tmp_path: Path) -> None:
    assert train(dataset, str(tiny_base), tmp_path / "ref", **RESUME_KW).optimizer_steps == RESUME_STEPS


def test_length_grouped_batches_come_in_random_order_and_replay_per_epoch() -> None:
    from tasks.train.train import ShuffledLengthGroupedSampler

    lengths = [i % 37 + 1 for i in range(400)]
    sampler = ShuffledLengthGroupedSampler(lengths, batch_size=4, seed=3, megabatch=5)
    first = list(sampler)
    assert sorted(first) == list(range(400))  # every row once
    batches = [first[i : i + 4] for i in range(0, 400, 4)]
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spread) / len(spread) < 6  # grouped: rows of a batch have similar lengths (random: ~25)
    # ... but not longest first within each megabatch: the batch lengths do not run downhill in cycles
    heads = [max(lengths[i] for i in b) for b in batches]
    downhill = sum(a >= b for a, b in itertools.pairwise(heads)) / (len(heads) - 1)
    assert downhill < 0.75
    assert list(sampler) == first  # same epoch, same order (a resumed run replays it)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_a_changed_recipe_trains_in_another_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--resume` continues the checkpoints in a run's folder: a recipe of another adapter shape (an override,
    # or a release that changes a profile) must not find them.
    from runtime.config import load_settings
    from tasks.train import train as training
    from tasks.train.challenger import run_folder

    settings = load_settings(tmp_path / "ws")
    folder = run_folder(settings, "d1", "gemma3-270m", "cpu-small", 30)
    assert folder == run_folder(settings, "d1", "gemma3-270m", "cpu-small", 30)
    assert folder != run_folder(settings, "d1", "gemma3-270m", "cpu-small", 30, {"lora_r": 4})
    changed = dataclasses.replace(training.PROFILES["cpu-small"], lora_r=4)
    monkeypatch.setitem(training.PROFILES, "cpu-small", changed)
    assert folder != run_folder(settings, "d1", "gemma3-270m", "cpu-small", 30)
