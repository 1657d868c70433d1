"""LoRA training throughput: ours against a plain Hugging Face Trainer and the prototype, in one process.

Same base (``gemma3-270m``, the real offline base), same synthetic finance rows, same seed:

- ``ours``: ``tasks/train/train.py`` with profile ``cpu-small``: batches grouped by length, dynamic padding, the
  vocabulary projection at answer positions only, gradient checkpointing of batches above 512 tokens;
- ``ours-random`` (a control): ours with plain's random batch order instead of length grouping. Its loss
  against plain's tests the answer-only loss computation alone; ours against plain includes the row order;
- ``plain`` (the baseline of the headline ratio): a stock ``transformers.Trainer`` as a tutorial writes it,
  at equal LoRA settings (``cpu-small``'s rank, alpha, dropout, target modules, learning rate, batch size
  and accumulation, linear schedule): random batches, dynamic padding to the longest row of each batch
  (``DataCollatorForSeq2Seq``, right padding, labels padded with -100), and the model's own causal-LM loss
  over full-vocabulary logits at every position. It trains on the same encoded rows as ours (prompt tokens
  labelled -100), so both optimise the same objective and their losses are comparable;
- ``prototype``: the old recipe (``prototype`` profile) on a plain Trainer: batch 1 x accumulation 4, every
  row padded to 512 tokens, full-vocabulary logits, lr 5e-5, r 16. Its lr and rank differ, so its loss is
  not comparable; only its throughput is reported, over fewer steps (``--prototype-steps``) because it is
  slow.

Tokens/s counts real (non-padding) tokens of the training batches per second of training (model loading
and evaluation excluded). Peak RSS is sampled during each run (loading included); runs go ``ours`` first,
and freed memory is handed back to the OS between runs. Loss parity: after ``--steps`` optimiser steps
(default 50), the validation loss of the ``ours``, ``ours-random`` and ``plain`` adapters on 16 held-out
rows (answer tokens only, computed the same way for every adapter) and the relative differences to plain;
the base's loss is printed too, to show how far training moved it. Targets (the exit status): ours >= 3x
the prototype's tokens/s; validation loss of ours and of the control within 5% of ``plain``.

On 1 thread (``make bench``), 50 steps of cpu-small's own batch, 4 x 2 rows, would take the plain run alone
about a quarter of an hour, and all four runs over half an hour; so the default batch is 2 x 1 for ours,
the control and plain alike (the smallest batch in which there is still padding to save and rows to group),
and the output says so. ``--batch-size 4 --grad-accum 2`` measures cpu-small's own batch.

    .venv/bin/python bench/train_throughput.py [--steps 50] [--batch-size 2] [--grad-accum 1]
        [--prototype-steps 3] [--runs ours,ours-random,plain,prototype] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks.models.base_models import load_base  # noqa: E402
from tasks.train.train import (  # noqa: E402
    ChatDataset,
    PadCollator,
    _PeakRss,
    answer_only_loss,
    get_profile,
    lora_config,
    read_rows,
    train,
)
from tests.tiny import training_record  # noqa: E402

TARGET_SPEEDUP_VS_PROTOTYPE = 3.0
TARGET_LOSS_GAP = 0.05
MIN_PARITY_STEPS = 50
BASE = "gemma3-270m"
SYSTEM = "你是高校财务制度问答助手。请严格依据学校财务管理制度原文作答，给出具体金额和条款；制度未规定的，明确说明。"
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "济南", "青岛", "拉萨"]
TITLES = ["教授", "副教授", "讲师", "博士后", "研究生", "行政人员", "院士", "外聘专家"]
DESCRIPTIONS = {
    "ours": "tasks/train/train.py cpu-small: length grouping, dynamic padding, logits at answer positions only",
    "ours-random": "control: ours, but in plain's random batch order (no length grouping)",
    "plain": "stock HF Trainer: random batches, DataCollatorForSeq2Seq dynamic padding, full-vocabulary logits",
    "prototype": "prototype profile: batch 1 x 4, padded to 512, full-vocabulary logits, lr 5e-5, r 16",
}


@dataclass
class RunResult:
    name: str
    steps: int
    batch: str
    tokens_per_s: float
    train_s: float
    peak_rss_mb: float
    train_tokens: int
    padded_tokens: int
    last_train_loss: float | None
    adapter_dir: Path
    val_loss: float | None = None


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Question/answer rows shaped like the distilled dataset: numeric, text and unanswerable, varied length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        city, title = rng.choice(CITIES), rng.choice(TITLES)
        amount = rng.choice([80, 100, 120, 150, 300, 350, 450, 500, 550, 600, 800, 1000, 1500, 2400])
        kind = rng.choices(["numeric", "text", "unanswerable"], weights=[6, 3, 1])[0]
        if kind == "numeric":
            question = rng.choice(
                [
                    f"{title}到{city}出差，住宿费每天最多能报销多少？",
                    f"{city}召开的二类会议，综合定额标准是多少？",
                    f"请问{title}在{city}参加学术会议期间的伙食补助标准是什么？如果会议主办方统一安排了用餐，"
                    "还能否另外领取伙食补助？",
                    f"邀请{title}来校讲座，劳务费上限是多少？",
                ]
            )
            answer = f"根据《差旅费管理办法》第十二条，{title}在{city}的标准为每人每天{amount}元。"
            answer += rng.choice(
                [
                    "",
                    "超出标准的部分由个人自理。",
                    f"会议主办方统一安排用餐的，不再发放伙食补助；未统一安排的，按每人每天{amount // 5}元包干使用，"
                    "凭会议通知报销。",
                    f"单次超过{amount * 2}元的，须经分管校领导审批，并附情况说明、会议通知和支付凭证。",
                ]
            )
        elif kind == "text":
            question = rng.choice(
                [
                    "报销时需要提供哪些原始凭证？",
                    f"{title}使用公务卡在{city}消费后，多久内需要办理报销？",
                    "科研经费购买的设备如何办理入库和固定资产登记？",
                ]
            )
            answer = rng.choice(
                [
                    "应提供合法有效的发票、支付凭证和经办人签字的报销单。",
                    "应在消费后30日内持发票和公务卡消费凭条办理报销手续，逾期由持卡人自行承担利息。",
                    "单价1000元以上的设备应先办理验收入库，再凭资产登记单、发票和合同到财务处报销；"
                    "未办理资产登记的，财务处不予受理。",
                ]
            )
        else:
            question = rng.choice([f"在{city}打高尔夫球的费用能报销吗？", f"{title}的健身卡费用如何报销？"])
            answer = "学校财务制度未对此作出规定，请咨询财务处。"
        rows.append(training_record(f"bench{seed}-{i}", SYSTEM, question, answer, "finance_rules.pdf", kind))
    return rows


def write_dataset(folder: Path, train_rows: list[dict]) -> Path:
    """A snapshot whose validation split is empty: each adapter is evaluated the same way afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows)
    (folder / "train.jsonl").write_text(text, encoding="utf-8")
    (folder / "valid.jsonl").write_text("", encoding="utf-8")
    return folder


def validation_loss(adapter_dir: Path | None, rows: list[dict], batch_size: int = 8) -> float:
    """Mean answer-token loss of base (+ adapter) on ``rows``; the same computation for every run."""
    model, tokenizer, _ = load_base(BASE)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    ds = ChatDataset(rows, tokenizer, 512)
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            total += float(loss) * n
            count += n
    del model
    return total / count


def release_memory() -> None:
    """Hand freed heap back to the OS, so that the next run's RSS peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def counting_trainer(trainer_cls):
    """``trainer_cls`` counting the real and the computed (padded) tokens of the batches it trains on.

    Counted where the loss is computed, as ours counts them: the dataloader fetches one batch ahead, so a
    count in the collator would include a batch that is never trained on. The loss is the stock one."""

    class CountingTrainer(trainer_cls):
        train_tokens = 0
        padded_tokens = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                self.train_tokens += int(inputs["attention_mask"].sum())
                self.padded_tokens += inputs["attention_mask"].numel()
            return super().compute_loss(model, inputs, *args, **kwargs)

    return CountingTrainer


def run_plain(
    dataset: Path, out_dir: Path, steps: int, seed: int, threads: int | None, batch_size: int, grad_accum: int
) -> RunResult:
    """A stock Trainer at cpu-small's LoRA settings: dynamic padding, the model's own full-vocabulary loss."""
    from peft import get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    prof = get_profile("cpu-small")
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    with _PeakRss() as memory:
        model, tokenizer, _ = load_base(BASE)
        tokenizer.padding_side = "right"
        train_ds = ChatDataset(read_rows(dataset / "train.jsonl"), tokenizer, prof.max_length)
        set_seed(seed)  # the LoRA initialisation draws random numbers: the same draw as ours
        model = get_peft_model(model, lora_config(prof))
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        args = TrainingArguments(
            output_dir=str(out_dir / "checkpoints"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            learning_rate=prof.learning_rate,
            max_steps=steps,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            logging_steps=1,
            save_strategy="no",
            seed=seed,
            data_seed=seed,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        trainer = counting_trainer(Trainer)(
            model=model, args=args, data_collator=collator, train_dataset=train_ds
        )
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
        adapter_dir = out_dir / "adapter"
        trainer.model.save_pretrained(adapter_dir)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        result = RunResult(
            name="plain",
            steps=trainer.state.global_step,
            batch=f"{batch_size} x {grad_accum}",
            tokens_per_s=trainer.train_tokens / train_s,
            train_s=train_s,
            peak_rss_mb=memory.peak_mb(),
            train_tokens=trainer.train_tokens,
            padded_tokens=trainer.padded_tokens,
            last_train_loss=float(losses[-1]) if losses else None,
            adapter_dir=adapter_dir,
        )
    del trainer, model
    return result


def run_ours_or_prototype(
    name: str,
    dataset: Path,
    out_dir: Path,
    steps: int,
    seed: int,
    threads: int | None,
    overrides: dict | None,
) -> RunResult:
    profile = "prototype" if name == "prototype" else "cpu-small"
    r = train(
        dataset,
        BASE,
        out_dir,
        profile=profile,
        max_steps=steps,
        seed=seed,
        progress=sys.stderr.isatty(),
        overrides=overrides,
        threads=threads,
    )
    return RunResult(
        name=name,
        steps=r.optimizer_steps,
        batch=f"{r.profile['batch_size']} x {r.profile['grad_accum']}",
        tokens_per_s=r.tokens_per_s,
        train_s=r.train_s,
        peak_rss_mb=r.peak_rss_mb,
        train_tokens=r.extra["train_tokens"],
        padded_tokens=r.extra["padded_tokens"],
        last_train_loss=r.final_train_loss,
        adapter_dir=r.adapter_dir,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=MIN_PARITY_STEPS, help="optimiser steps of ours and plain (default 50)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2, help="rows per batch, ours and plain (default 2)"
    )
    parser.add_argument("--grad-accum", type=int, default=1, help="batches per optimiser step (default 1)")
    parser.add_argument(
        "--prototype-steps", type=int, default=3, help="optimiser steps of the prototype (default 3)"
    )
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs", default=",".join(DESCRIPTIONS), help=f"comma-separated: {','.join(DESCRIPTIONS)}"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    console = Console(highlight=False, width=120)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = set(runs) - set(DESCRIPTIONS)
    if unknown:
        parser.error(f"unknown runs: {', '.join(sorted(unknown))}")
    small = get_profile("cpu-small")
    batch_overrides = {"batch_size": args.batch_size, "grad_accum": args.grad_accum}
    valid_rows = synthetic_rows(16, args.seed + 1)
    results: dict[str, RunResult] = {}
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="slm-train-bench-") as tmp:
        dataset = write_dataset(Path(tmp) / "benchdataset", synthetic_rows(args.rows, args.seed))
        console.print(
            f"{BASE}, {len(read_rows(dataset / 'train.jsonl'))} training rows, seed {args.seed}, threads "
            f"{args.threads or 'all'}, load average {load_start:.1f}"
        )
        console.print(
            f"ours, ours-random and plain: {args.steps} optimiser steps of batch {args.batch_size} x {args.grad_accum} "
            f"(cpu-small's own batch is {small.batch_size} x {small.grad_accum}"
            + (
                "; a smaller one here so that 50 steps of all four runs fit in about 15 minutes on 1 thread)"
                if (args.batch_size, args.grad_accum) != (small.batch_size, small.grad_accum)
                else ")"
            )
            + f"; prototype: {args.prototype_steps} steps of its own batch 1 x 4, throughput only"
        )
        if args.steps < MIN_PARITY_STEPS:
            console.print(
                f"[yellow]loss parity after only {args.steps} steps (< {MIN_PARITY_STEPS})[/yellow]"
            )
        for name in runs:
            release_memory()
            console.print(f"[bold]{name}[/bold]: {DESCRIPTIONS[name]} ...")
            out = Path(tmp) / name
            if name == "plain":
                r = run_plain(
                    dataset, out, args.steps, args.seed, args.threads, args.batch_size, args.grad_accum
                )
            elif name in ("ours", "ours-random"):
                overrides = {
                    **batch_overrides,
                    **({"group_by_length": False} if name == "ours-random" else {}),
                }
                r = run_ours_or_prototype(name, dataset, out, args.steps, args.seed, args.threads, overrides)
            else:
                r = run_ours_or_prototype(
                    name, dataset, out, args.prototype_steps, args.seed, args.threads, None
                )
            results[name] = r
            console.print(
                f"  {r.steps} steps of {r.batch}: {r.tokens_per_s:.1f} tok/s, {r.train_s:.0f} s training, peak RSS "
                f"{r.peak_rss_mb:.0f} MiB, real/computed tokens {r.train_tokens}/{r.padded_tokens}"
            )
            release_memory()
            if name != "prototype":
                r.val_loss = validation_loss(r.adapter_dir, valid_rows)
        base_loss = validation_loss(None, valid_rows) if set(results) - {"prototype"} else None

    table = Table(
        "run",
        "steps",
        "batch",
        "tok/s",
        "train s",
        "peak RSS MiB",
        "padding %",
        "last train loss",
        "val loss",
    )
    for name, r in results.items():
        pad = 100 * (1 - r.train_tokens / r.padded_tokens)
        table.add_row(
            name,
            str(r.steps),
            r.batch,
            f"{r.tokens_per_s:.1f}",
            f"{r.train_s:.0f}",
            f"{r.peak_rss_mb:.0f}",
            f"{pad:.0f}",
            f"{r.last_train_loss:.4f}" if r.last_train_loss is not None else "-",
            f"{r.val_loss:.4f}" if r.val_loss is not None else "-",
        )
    console.print(table)
    if base_loss is not None:
        console.print(f"validation loss of the base without adapter: {base_loss:.4f}")

    ok = True
    summary: dict[str, float] = {}
    parts = []
    ours, control = results.get("ours"), results.get("ours-random")
    plain, proto = results.get("plain"), results.get("prototype")
    if ours and plain:
        summary["speedup_vs_plain"] = ours.tokens_per_s / plain.tokens_per_s
        summary["rss_ratio_vs_plain"] = ours.peak_rss_mb / plain.peak_rss_mb
        console.print(
            f"ours / plain HF Trainer (dynamic padding, full-vocabulary logits) tokens/s: "
            f"{summary['speedup_vs_plain']:.2f}x; peak RSS {summary['rss_ratio_vs_plain']:.2f}x"
        )
        part = (
            f"ours {ours.tokens_per_s:.1f} vs plain HF Trainer (dynamic padding, full-vocabulary logits) "
            f"{plain.tokens_per_s:.1f} tokens/s = {summary['speedup_vs_plain']:.2f}x"
        )
        if control:
            summary["control_speedup_vs_plain"] = control.tokens_per_s / plain.tokens_per_s
            ratio = summary["control_speedup_vs_plain"]
            part += f" (ours in plain's batch order {control.tokens_per_s:.1f} = {ratio:.2f}x)"
        parts.append(part)
    if ours and proto:
        summary["speedup_vs_prototype"] = ours.tokens_per_s / proto.tokens_per_s
        summary["rss_ratio_vs_prototype"] = ours.peak_rss_mb / proto.peak_rss_mb
        ok &= summary["speedup_vs_prototype"] >= TARGET_SPEEDUP_VS_PROTOTYPE
        console.print(
            f"ours / prototype tokens/s: {summary['speedup_vs_prototype']:.2f}x (target >= "
            f"{TARGET_SPEEDUP_VS_PROTOTYPE:.0f}x); peak RSS {summary['rss_ratio_vs_prototype']:.2f}x"
        )
        parts.append(
            f"vs prototype {proto.tokens_per_s:.1f} tokens/s = {summary['speedup_vs_prototype']:.2f}x"
        )
    if plain:
        losses = []
        for key, run in (("", ours), ("control_", control)):
            if run is None:
                continue
            gap = abs(run.val_loss - plain.val_loss) / plain.val_loss
            summary[f"{key}val_loss_gap_vs_plain"] = gap
            ok &= gap <= TARGET_LOSS_GAP
            verdict = "met" if gap <= TARGET_LOSS_GAP else "NOT met"
            label = "ours" if run is ours else "ours in plain's batch order"
            console.print(
                f"loss parity after {run.steps} steps: validation loss {label} {run.val_loss:.4f} vs plain "
                f"{plain.val_loss:.4f} (base {base_loss:.4f}): {100 * gap:.2f}% apart (target <= "
                f"{100 * TARGET_LOSS_GAP:.0f}%: {verdict})"
            )
            losses.append(f"{label} {run.val_loss:.3f} = {100 * gap:.1f}% apart ({verdict})")
        if losses:
            parts.append(
                f"validation loss after {args.steps} steps vs plain {plain.val_loss:.3f} (base {base_loss:.3f}): "
                + ", ".join(losses)
            )
        gaps = summary.get("val_loss_gap_vs_plain"), summary.get("control_val_loss_gap_vs_plain")
        rows_per_step = args.batch_size * args.grad_accum
        # transformers' get_length_grouped_indices: megabatches of min(rows // (4 x batch), 50) batches
        megabatch = max(1, min(args.rows // (args.batch_size * 4), 50)) * args.batch_size
        if None not in gaps and gaps[0] > TARGET_LOSS_GAP and gaps[1] < 0.005:
            console.print(
                "the gap comes from the order of the rows, not from the loss computation: in plain's order ours "
                "ends where plain does. Length grouping (HF LengthGroupedSampler) sorts each megabatch of "
                f"{megabatch} rows by length, longest first, so every {megabatch // rows_per_step} steps the "
                "rows run from the longest to the shortest instead of in random order."
            )
    if results:
        parts.append(
            "peak RSS " + ", ".join(f"{n} {r.peak_rss_mb / 1024:.2f} GiB" for n, r in results.items())
        )
    if parts:
        console.print(
            "summary: "
            + "; ".join(parts)
            + f" ({args.threads or 'all'} thread(s), batch {args.batch_size} x {args.grad_accum}, "
            f"{time.perf_counter() - started:.0f} s in all, load average {load_start:.1f} at the start and "
            f"{os.getloadavg()[0]:.1f} at the end)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": {
                        name: {
                            "steps": r.steps,
                            "batch": r.batch,
                            "tokens_per_s": r.tokens_per_s,
                            "train_s": r.train_s,
                            "peak_rss_mb": r.peak_rss_mb,
                            "last_train_loss": r.last_train_loss,
                            "val_loss": r.val_loss,
                            "train_tokens": r.train_tokens,
                            "padded_tokens": r.padded_tokens,
                        }
                        for name, r in results.items()
                    },
                    "base_val_loss": base_loss,
                    **summary,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
