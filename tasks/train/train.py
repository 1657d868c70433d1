"""LoRA fine-tuning of a small base model on a dataset snapshot, with peft on the Hugging Face Trainer.

The Trainer brings checkpointing, resume, gradient accumulation, evaluation and early stopping; this module
adds what makes CPU training affordable and correct for chat rows:

- labels are -100 on every prompt token: the loss covers only the assistant answer (and its end-of-turn);
- batches are grouped by length and padded only to their own longest row, never to ``max_length``;
- the vocabulary projection runs only at answer positions (:func:`answer_only_loss`). Gemma's vocabulary has
  262k entries, so full logits for every position dominate a CPU step; projecting the few answer positions
  gives the same loss and gradients.

A dataset snapshot is a folder (named by its id, a hash) with ``train.jsonl`` and ``valid.jsonl``; each line
holds ``{"id", "messages": [system, user, assistant], "doc", "kind"}``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_layers import GradientCheckpointingLayer

from runtime.jsonl import json_lines
from tasks.models.base_models import BaseIdentity, load_base

IGNORE_INDEX = -100  # the label value that torch's cross-entropy (and HF) skip
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
METADATA_FILE = "slm_adapter.json"
LOSS_PLOT = "loss.png"
QLORA_NEEDS_CUDA = "QLoRA needs a CUDA GPU; use profile cpu-small"

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = (*ATTENTION, "gate_proj", "up_proj", "down_proj")


class TrainError(RuntimeError):
    """A training run cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class Profile:
    """Hyper-parameters and speed switches of one training recipe."""

    name: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]
    learning_rate: float
    batch_size: int
    grad_accum: int
    max_length: int
    epochs: float | None = None  # None: the run's ``epochs`` argument (settings) decides
    quantize_4bit: bool = False
    group_by_length: bool = True  # LengthGroupedSampler: batches of similar length
    pad_to_max_length: bool = False  # the prototype's habit; dynamic padding otherwise
    selective_loss: bool = True  # project to the vocabulary only at answer positions
    # Recompute each layer's activations in the backward pass: ~1/3 more compute, a fraction of the memory.
    gradient_checkpointing: bool = False
    # With checkpointing on, only batches of more than this many (padded) tokens are checkpointed: short
    # closed-book batches fit in memory as they are and run at full speed. None: checkpoint every batch.
    checkpoint_above_tokens: int | None = None
    # Each closed-book row this many times per epoch (context copies once): facts are memorised in short rows
    # at ~1/9 the CPU time of a row with context (README "Training": closed book on the recall split reached 50%
    # after ~6 passes over the closed-book rows).
    closed_book_passes: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


PROFILES: dict[str, Profile] = {
    # Default off-GPU: every speed switch on. Rows with retrieved context run to ~650 tokens; batches of 4 (x2
    # accumulation) with gradient checkpointing on the long ones (measured: batches of 8 without it peaked at
    # 5.2 GB on closed-book rows alone). Adapters on every linear layer at rank 32 and a rate of 5e-4 cost about
    # the CPU time of rank 8 on attention alone at 2e-4, and learn more per step (bench/learning_curve.py,
    # README "Training": at 30 steps train loss 0.60 against 1.16, the hand-phrased questions answered from
    # context 50% against 30%), at more memory: the demo's run peaked at 7.6 GB RSS (4.7 GB before).
    "cpu-small": Profile(
        name="cpu-small",
        lora_r=32,
        lora_alpha=64,
        lora_dropout=0.05,
        target_modules=ALL_LINEAR,
        learning_rate=5e-4,
        batch_size=4,
        grad_accum=2,
        max_length=768,
        gradient_checkpointing=True,
        checkpoint_above_tokens=512,  # measured: ~3.4 MB of activations per token without checkpointing
    ),
    # QLoRA: the base in 4-bit NF4 on a CUDA GPU, adapters on every linear projection (as in the QLoRA paper).
    "gpu-qlora": Profile(
        name="gpu-qlora",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=ALL_LINEAR,
        learning_rate=2e-4,
        batch_size=16,
        grad_accum=1,
        max_length=512,
        quantize_4bit=True,
    ),
    # The earlier prototype's recipe, kept for comparison (bench/train_throughput.py): plain Trainer habits,
    # padding to max length and full-vocabulary logits.
    "prototype": Profile(
        name="prototype",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=ATTENTION,
        learning_rate=5e-5,
        batch_size=1,
        grad_accum=4,
        max_length=512,
        epochs=3,
        group_by_length=False,
        pad_to_max_length=True,
        selective_loss=False,
    ),
}


@dataclass
class TrainResult:
    """What a run produced and measured; the same facts are in ``adapter/slm_adapter.json``."""

    adapter_dir: Path
    base: BaseIdentity
    profile: dict[str, Any]
    device: str
    wall_s: float
    train_s: float
    tokens_per_s: float
    peak_rss_mb: float
    loss_curve: list[tuple[int, float | None, float | None]]
    optimizer_steps: int
    final_train_loss: float | None
    final_eval_loss: float | None
    best_step: int | None = None
    dataset_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class EncodeStats:
    rows: int
    kept: int
    truncated: int  # longer than max_length: cut at the end, still with some answer tokens
    dropped: int  # nothing of the answer left within max_length


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one ``.jsonl`` split; an absent file is an empty split."""
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, row in json_lines(fh, path, TrainError):
            messages = row.get("messages") if isinstance(row, dict) else None
            if not messages or messages[-1].get("role") != "assistant":
                raise TrainError(f"{path}:{lineno}: a row needs messages ending with the assistant answer")
            rows.append(row)
    return rows


def with_closed_book_passes(rows: Sequence[dict[str, Any]], passes: int) -> list[dict[str, Any]]:
    """``rows`` with every closed-book row (one without retrieved ``context``) ``passes`` times, the copies
    beside their row; context copies once."""
    return [copy for row in rows for copy in [row] * (1 if "context" in row else max(1, passes))]


def encode_messages(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> dict | None:
    """Token ids and labels of one chat row: labels are -100 on the prompt, the ids on the answer.

    The prompt (everything up to and including the assistant header) and the answer are tokenised apart
    and joined, exactly the split the model sees when it generates from the same prompt. A row longer than
    ``max_length`` whose answer fits in half of it loses the middle of its prompt (the far end of a long
    retrieved context), so the instructions, the question and the whole answer stay; otherwise it is cut at
    the end. ``None`` when no answer token would be left.
    """
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):
        raise TrainError("the chat template renders the prompt differently with and without the answer")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    too_long = len(prompt_ids) + len(answer_ids) > max_length
    budget = max_length - len(answer_ids)
    if too_long and budget >= max_length // 2:
        head = budget // 2
        prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - (budget - head) :]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {
        "input_ids": input_ids,
        "labels": labels,
        "truncated": too_long,
    }


class ChatDataset(torch.utils.data.Dataset):
    """Encoded rows; items are dicts with ``input_ids`` and ``labels`` (what LengthGroupedSampler reads)."""

    def __init__(self, rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int):
        self.items: list[dict[str, list[int]]] = []
        truncated = dropped = 0
        for row in rows:
            encoded = encode_messages(tokenizer, row["messages"], max_length)
            if encoded is None:
                dropped += 1
                continue
            truncated += encoded.pop("truncated")
            self.items.append(encoded)
        self.stats = EncodeStats(rows=len(rows), kept=len(self.items), truncated=truncated, dropped=dropped)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


@dataclass
class PadCollator:
    """Pads a batch to its longest row (dynamic padding) or, for the prototype comparison, to ``max_length``."""

    pad_token_id: int
    max_length: int | None = None  # set: always pad to this length

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = self.max_length or max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            input_ids[i, :length] = torch.tensor(f["input_ids"])
            labels[i, :length] = torch.tensor(f["labels"])
            attention_mask[i, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ---------------------------------------------------------------------------------------------------- loss


def causal_lm(model: torch.nn.Module) -> Any:
    """The ``*ForCausalLM`` module inside a peft wrapper (its LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_only_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Causal-LM cross-entropy computed from the answer positions only; equal to the model's own loss.

    The decoder runs to hidden states; only the positions whose *next* token is a label get the vocabulary
    projection (and Gemma's final logit soft-capping, applied as the model applies it). Divided by
    ``num_items_in_batch`` (the answer tokens of the whole accumulated batch) when given, as HF does, else by
    this batch's answer tokens.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (answer tokens, vocab)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = keep.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Batches of rows of similar length (little padding), in random order.

    Hugging Face's ``LengthGroupedSampler`` sorts each megabatch of 50 batches longest first and keeps that
    order, so training saw rows from the longest to the shortest in cycles, and a validation after the
    shortest rows came out 20% worse than a plain Trainer's after 50 steps (``bench/train_throughput.py``).
    Here each megabatch is sorted and cut into batches as there, then all batches are shuffled: the same
    padding, in the order a random sampler would give. Seeded by ``seed`` and the epoch (``set_epoch``, which
    the Trainer calls), so a resumed run replays the same order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, megabatch: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.megabatch = megabatch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.megabatch * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[b]


class SlmTrainer(Trainer):
    """Trainer with answer-only projection and a count of real (non-padding) training tokens."""

    # Our loss is summed and divided by the answer tokens of the whole accumulated batch (as HF's own is).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        selective_loss: bool = True,
        checkpoint_above_tokens: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.selective_loss = selective_loss
        self.checkpoint_above_tokens = checkpoint_above_tokens
        self.checkpointed_batches = 0
        # Make the Trainer count answer tokens across gradient accumulation and pass them in.
        self.model_accepts_loss_kwargs = True
        self.train_tokens = 0  # real tokens in training batches
        self.padded_tokens = 0  # tokens computed, padding included
        self.eval_s = 0.0

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        # Grouped by the global batch: under N processes each one takes its share of every global batch
        # (accelerate's batch sharding), so N processes see the rows one process with N times the batch sees.
        return ShuffledLengthGroupedSampler(
            [len(dataset[i]["input_ids"]) for i in range(len(dataset))],
            self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
            self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.train_tokens += int(inputs["attention_mask"].sum())
            self.padded_tokens += inputs["attention_mask"].numel()
            self._choose_checkpointing(model, inputs["attention_mask"].numel())
        if not self.selective_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = _as_ddp_forward(
            model,
            answer_only_loss,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["labels"],
            num_items_in_batch,
        )
        if (
            self.args.world_size > 1
            and self.args.average_tokens_across_devices
            and num_items_in_batch is not None
        ):
            # num_items_in_batch counts every process's answer tokens and DDP averages the gradients over the
            # processes: scaled back as the Trainer's own compute_loss does, so N processes step as one.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def _choose_checkpointing(self, model: torch.nn.Module, tokens: int) -> None:
        """Checkpoint this batch only if it is long. The Trainer set every layer up for checkpointing; a
        layer checkpoints while its ``gradient_checkpointing`` flag is on, so the flag is set per batch."""
        if not self.args.activation_checkpointing:
            return
        on = self.checkpoint_above_tokens is None or tokens > self.checkpoint_above_tokens
        self.checkpointed_batches += on
        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = on

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        started = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.eval_s += time.perf_counter() - started


def _as_ddp_forward(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``loss_fn(model, *args)``; under DistributedDataParallel (torchrun, accelerate launch) run as the
    wrapper's forward, because DDP prepares its gradient all-reduce only inside its own forward: the wrapped
    module's ``forward`` is shadowed by the loss for this one call."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return loss_fn(model, *args)
    inner = model.module
    inner.forward = functools.partial(loss_fn, inner)
    try:
        return model(*args)
    finally:
        del inner.forward


# ---------------------------------------------------------------------------------------------------- run


def pick_device(requested: str = "auto") -> str:
    """``cuda`` > ``mps`` > ``cpu`` for ``auto``; an explicit choice is checked, not overridden."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainError("device cuda requested but no CUDA GPU is visible")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise TrainError("device mps requested but MPS is not available")
    if requested not in ("cuda", "mps", "cpu"):
        raise TrainError(f"unknown device {requested!r}: auto | cuda | mps | cpu")
    return requested


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """The named profile, with fields replaced by ``overrides`` (for experiments and the bench)."""
    if name not in PROFILES:
        raise TrainError(f"unknown training profile {name!r}: {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
        if unknown:
            raise TrainError(f"unknown profile fields: {', '.join(sorted(unknown))}")
        profile = dataclasses.replace(profile, **overrides)
    return profile


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was written completely (trainer_state.json is written last)."""
    if not folder.is_dir():
        return None
    done = [
        p
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit()
        and (p / "trainer_state.json").is_file()
        and (p / "optimizer.pt").is_file()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def train(
    dataset_dir: Path,
    base_spec: str,
    out_dir: Path,
    profile: str = "cpu-small",
    max_steps: int | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    cache_dir: Path | None = None,
    *,
    epochs: float = 3.0,
    save_steps: int = 50,
    early_stopping_patience: int = 3,
    device: str = "auto",
    logging_steps: int = 1,
    overrides: dict[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    threads: int | None = None,
    on_progress: Callable[[TrainSnapshot], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``dataset_dir`` and keep the best one (by validation loss).

    ``out_dir`` receives ``checkpoints/`` (every ``save_steps`` steps; evaluation runs at the same steps),
    ``adapter/`` (the best adapter, its tokenizer and ``slm_adapter.json``) and ``loss.png``. With
    ``resume`` the run continues from the last complete checkpoint and ends with the same number of
    optimiser steps as an uninterrupted run; without it, old checkpoints in ``out_dir`` are removed.
    ``overrides`` replaces profile fields; ``callbacks`` are extra TrainerCallbacks; ``threads`` sets torch's
    CPU threads (default: every core this process may use, shared among the processes of a multi-process
    run). ``on_progress`` receives a :class:`TrainSnapshot` after every step (``progress`` adds a rich bar
    on a terminal); neither changes the training.
    """
    started = time.perf_counter()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    prof = get_profile(profile, overrides)
    dev = pick_device(device)
    if prof.quantize_4bit and dev != "cuda":
        raise TrainError(QLORA_NEEDS_CUDA)  # before loading anything: fail in a second, not in minutes
    if prof.quantize_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise TrainError("QLoRA needs bitsandbytes: pip install '.[gpu]'") from exc
    train_rows = with_closed_book_passes(read_rows(dataset_dir / "train.jsonl"), prof.closed_book_passes)
    valid_rows = read_rows(dataset_dir / "valid.jsonl")
    if not train_rows:
        raise TrainError(f"{dataset_dir}: no training rows in train.jsonl")

    if dev == "cpu":
        # All cores by default. On a machine shared with other busy processes, fewer threads can be much
        # faster: OpenMP workers then wait on each other at every small elementwise op.
        # Under N processes on one machine (torchrun, accelerate launch) each takes its share of the cores.
        torch.set_num_threads(threads or max(1, _cpu_count() // local_world_size()))

    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import EarlyStoppingCallback, set_seed

    with _PeakRss() as memory:
        model, tokenizer, identity = load_base(
            base_spec, cache_dir, device=dev, quantize_4bit=prof.quantize_4bit
        )
        train_ds = ChatDataset(train_rows, tokenizer, prof.max_length)
        valid_ds = ChatDataset(valid_rows, tokenizer, prof.max_length) if valid_rows else None
        if len(train_ds) == 0:
            raise TrainError(f"no training row has an answer token within max_length {prof.max_length}")

        set_seed(seed)  # the LoRA initialisation draws random numbers before the Trainer seeds anything
        if prof.quantize_4bit:
            model = prepare_model_for_kbit_training(model)
        model = get_peft_model(model, lora_config(prof))

        ckpt_dir = out_dir / CHECKPOINTS_DIR
        checkpoint = last_complete_checkpoint(ckpt_dir) if resume else None
        has_eval = valid_ds is not None and len(valid_ds) > 0
        args = training_arguments(
            prof,
            ckpt_dir,
            epochs=epochs,
            max_steps=max_steps,
            save_steps=save_steps,
            logging_steps=logging_steps,
            has_eval=has_eval,
            seed=seed,
            device=dev,
            bf16=dev == "cuda" and model.dtype == torch.bfloat16,
        )
        # The first process writes (checkpoints, adapter, metadata, plot); the others wait for it here.
        with args.main_process_first(desc="fresh run folder"):
            # A fresh run must not resume, rotate or pick a "best" from an older run.
            if not resume and args.should_save and ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)
        show_bar = progress and sys.stderr.isatty()
        callbacks = list(callbacks or [])
        if has_eval:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
        listeners = [on_progress] if on_progress else []
        if show_bar:
            listeners.append(RichTrainBar())
        if listeners:
            callbacks.append(TrainProgress(listeners, lambda: trainer.train_tokens, lambda: trainer.eval_s))
        trainer = SlmTrainer(
            model=model,
            args=args,
            data_collator=PadCollator(
                tokenizer.pad_token_id, prof.max_length if prof.pad_to_max_length else None
            ),
            train_dataset=train_ds,
            eval_dataset=valid_ds if has_eval else None,
            callbacks=callbacks,
            selective_loss=prof.selective_loss,
            checkpoint_above_tokens=prof.checkpoint_above_tokens,
        )
        trainer.remove_callback(PrinterCallback)  # with tqdm off the Trainer would print every log dict
        fit_started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        fit_s = time.perf_counter() - fit_started
        train_s = max(fit_s - trainer.eval_s, 1e-9)
        final_eval = None
        if has_eval:
            # The best checkpoint's validation loss: the adapter kept is the one loaded at the end.
            final_eval = trainer.state.best_metric
            if final_eval is None:
                final_eval = trainer.evaluate()["eval_loss"]

        adapter_dir = out_dir / ADAPTER_DIR
        curve = loss_curve(trainer.state.log_history)
        train_losses = [t for _, t, _ in curve if t is not None]
        best_step = _step_of(trainer.state.best_model_checkpoint)
        result = TrainResult(
            adapter_dir=adapter_dir,
            base=identity,
            profile=prof.to_dict(),
            device=dev,
            wall_s=round(time.perf_counter() - started, 2),
            train_s=round(train_s, 2),
            tokens_per_s=round(trainer.train_tokens / train_s, 2),
            peak_rss_mb=round(memory.peak_mb(), 1),
            loss_curve=curve,
            optimizer_steps=trainer.state.global_step,
            final_train_loss=train_losses[-1] if train_losses else None,
            final_eval_loss=final_eval,
            best_step=best_step,
            dataset_id=dataset_dir.resolve().name,
            extra={
                "train_rows": dataclasses.asdict(train_ds.stats),
                "valid_rows": dataclasses.asdict(valid_ds.stats) if valid_ds else None,
                "resumed_from": str(checkpoint) if checkpoint else None,
                "train_tokens": trainer.train_tokens,
                "padded_tokens": trainer.padded_tokens,
                "checkpointed_batches": trainer.checkpointed_batches,
                "mean_train_loss": output.training_loss,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "seed": seed,
                "max_steps": max_steps,
                "epochs": args.num_train_epochs,
                "save_steps": save_steps,
                "early_stopping_patience": early_stopping_patience,
                "torch_threads": torch.get_num_threads(),
                **({"world_size": args.world_size} if args.world_size > 1 else {}),
            },
        )
        if trainer.is_world_process_zero():  # one writer: every process holds the same adapter
            save_adapter(trainer.model, tokenizer, result, out_dir)
        return result


def save_adapter(model: Any, tokenizer: Any, result: TrainResult, out_dir: Path) -> None:
    """``adapter/`` (weights, tokenizer, ``slm_adapter.json``) and ``loss.png`` of a finished run."""
    adapter_dir = out_dir / ADAPTER_DIR
    # Saved (with its metadata) into a staging folder renamed into place at the end: a crash while saving
    # leaves the staging folder, which the next run replaces, never weights without their metadata.
    staging = out_dir / f".{ADAPTER_DIR}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)  # carries the chat template the adapter was trained with
    write_metadata(result, staging / METADATA_FILE)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(staging, adapter_dir)
    plot_loss(
        result.loss_curve,
        out_dir / LOSS_PLOT,
        title=f"{result.base.spec} · {result.profile['name']} · {result.dataset_id[:12]}",
    )


def process_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when run alone): rank 0 is the one writer."""
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """How many training processes share this machine (1 when run alone)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def lora_config(prof: Profile) -> Any:
    """The LoRA adapter a run with profile ``prof`` trains (also the benchmark's baseline runs)."""
    from peft import LoraConfig

    return LoraConfig(
        r=prof.lora_r,
        lora_alpha=prof.lora_alpha,
        lora_dropout=prof.lora_dropout,
        target_modules=list(prof.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def training_arguments(
    prof: Profile,
    output_dir: Path,
    *,
    epochs: float = 3.0,
    max_steps: int | None = None,
    save_steps: int = 50,
    logging_steps: int = 1,
    has_eval: bool = True,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
) -> TrainingArguments:
    """The Trainer configuration of a run with profile ``prof`` (also used by the tests)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=prof.batch_size,
        per_device_eval_batch_size=prof.batch_size,
        gradient_accumulation_steps=prof.grad_accum,
        learning_rate=prof.learning_rate,
        num_train_epochs=prof.epochs if prof.epochs is not None else epochs,
        max_steps=max_steps if max_steps else -1,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_strategy="steps",
        logging_steps=logging_steps,
        # Evaluation and checkpoints at the same steps: load_best_model_at_end needs every evaluated step saved.
        eval_strategy="steps" if has_eval else "no",
        eval_steps=save_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,  # plus the best one, which the Trainer never rotates away
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        prediction_loss_only=True,
        train_sampling_strategy="group_by_length" if prof.group_by_length else "random",
        remove_unused_columns=False,  # the collator already yields exactly the model's inputs
        seed=seed,
        data_seed=seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        report_to="none",
        disable_tqdm=True,  # our rich progress bar, or silence
        dataloader_pin_memory=device == "cuda",
        # (transformers 5 calls gradient checkpointing "activation checkpointing"; the old names are deprecated.)
        activation_checkpointing=prof.gradient_checkpointing,
        # Non-reentrant checkpointing works with frozen embeddings (LoRA) without enable_input_require_grads.
        activation_checkpointing_kwargs={"use_reentrant": False} if prof.gradient_checkpointing else None,
    )


def loss_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float | None, float | None]]:
    """``(step, train_loss, eval_loss)`` per logged step, from the Trainer's log history (kept across resume)."""
    by_step: dict[int, list[float | None]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        point = by_step.setdefault(step, [None, None])
        if "loss" in entry:
            point[0] = float(entry["loss"])
        if "eval_loss" in entry:
            point[1] = float(entry["eval_loss"])
    return [(step, t, e) for step, (t, e) in sorted(by_step.items()) if t is not None or e is not None]


def write_metadata(result: TrainResult, path: Path) -> None:
    """``slm_adapter.json``: what the adapter was trained on and how, for the registry and the eval stage."""
    import peft
    import transformers

    data = {
        "dataset_id": result.dataset_id,
        "base": result.base.to_dict(),
        "profile": result.profile,
        "device": result.device,
        "wall_s": result.wall_s,
        "train_s": result.train_s,
        "tokens_per_s": result.tokens_per_s,
        "peak_rss_mb": result.peak_rss_mb,
        "optimizer_steps": result.optimizer_steps,
        "best_step": result.best_step,
        "final_train_loss": result.final_train_loss,
        "final_eval_loss": result.final_eval_loss,
        "loss_curve": [list(point) for point in result.loss_curve],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result.extra,
    }
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def plot_loss(curve: list[tuple[int, float | None, float | None]], path: Path, title: str = "") -> None:
    """Train and validation loss against optimiser steps, as a PNG (headless: Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train_pts = [(s, t) for s, t, _ in curve if t is not None]
    eval_pts = [(s, e) for s, _, e in curve if e is not None]
    if train_pts:
        ax.plot(*zip(*train_pts, strict=True), label="train", linewidth=1.2)
    if eval_pts:
        ax.plot(*zip(*eval_pts, strict=True), "o-", label="validation", linewidth=1.5)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    tail = Path(checkpoint).name.split("-")[-1]
    return int(tail) if tail.isdigit() else None


class _PeakRss:
    """Samples this process's resident memory in a thread while the ``with`` block runs."""

    def __init__(self, interval_s: float = 0.1):
        import psutil

        self._proc = psutil.Process()
        self._peak = self._proc.memory_info().rss
        self._done = threading.Event()
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def peak_mb(self) -> float:
        self._peak = max(self._peak, self._proc.memory_info().rss)
        return self._peak / 2**20


@dataclass(frozen=True)
class TrainSnapshot:
    """Where a training run stands: what progress bars and the Prefect progress artifact show."""

    step: int
    total: int
    loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    eta_s: float | None
    done: bool = False

    def describe(self) -> str:
        parts = [f"loss {self.loss:.3f}" if self.loss is not None else "loss -"]
        if self.eval_loss is not None:
            parts.append(f"val {self.eval_loss:.3f}")
        parts.append(f"{self.tokens_per_s:.0f} tok/s")
        if self.eta_s is not None and not self.done:
            parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(self.eta_s))}")
        return ", ".join(parts)


class TrainProgress(TrainerCallback):
    """Reports a :class:`TrainSnapshot` to ``listeners`` after every optimiser step, log and evaluation
    (on the first process only). Reads the counters, never touches the model, the data or the RNG, so a run
    with progress trains exactly as one without."""

    def __init__(
        self,
        listeners: Sequence[Callable[[TrainSnapshot], None]],
        tokens: Callable[[], int],
        eval_s: Callable[[], float],
    ):
        self._listeners = list(listeners)
        self._tokens, self._eval_s = tokens, eval_s
        self._loss: float | None = None
        self._eval_loss: float | None = None
        self._t0 = 0.0
        self._tokens0 = 0
        self._step0 = 0

    def _emit(self, state: Any, done: bool = False) -> None:
        if not state.is_world_process_zero:
            return
        elapsed = max(time.perf_counter() - self._t0 - self._eval_s(), 1e-9)
        steps = state.global_step - self._step0
        left = state.max_steps - state.global_step
        snapshot = TrainSnapshot(
            step=state.global_step,
            total=state.max_steps,
            loss=self._loss,
            eval_loss=self._eval_loss,
            tokens_per_s=(self._tokens() - self._tokens0) / elapsed,
            eta_s=elapsed / steps * left if steps else None,
            done=done,
        )
        for listener in self._listeners:
            listener(snapshot)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._tokens0, self._step0 = time.perf_counter(), self._tokens(), state.global_step
        self._emit(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._emit(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self._loss = float(logs["loss"]) if "loss" in logs else self._loss
        self._eval_loss = float(logs["eval_loss"]) if "eval_loss" in logs else self._eval_loss
        if "loss" in logs or "eval_loss" in logs:
            self._emit(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._emit(state, done=True)


class RichTrainBar:
    """A rich progress bar (steps, loss, validation loss, tokens/s, ETA) fed with :class:`TrainSnapshot`s;
    on stderr unless given a ``console``."""

    def __init__(self, console: Any = None) -> None:
        self._console = console
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, snapshot: TrainSnapshot) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        fields = {
            "loss": "-" if snapshot.loss is None else f"{snapshot.loss:.3f}",
            "val": "-" if snapshot.eval_loss is None else f"{snapshot.eval_loss:.3f}",
            "tps": f"{snapshot.tokens_per_s:.0f}",
        }
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=snapshot.total, **fields)
        self._progress.update(self._task, completed=snapshot.step, total=snapshot.total, **fields)
        if snapshot.done:
            self._progress.stop()
            self._progress = None
