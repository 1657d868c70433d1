"""LoRA training throughput: the prototype's recipe against ours, on the real offline base, in one process.

Same base (``gemma3-270m``), same 200 synthetic finance rows, same seed, same number of optimiser steps:

- ``prototype``: the old recipe on a plain Trainer: batch 1 x accumulation 4, every row padded to 512 tokens,
  full-vocabulary logits at every position, lr 5e-5, r 16;
- ``plain``: our ``cpu-small`` hyper-parameters (lr 2e-4, r 8, batch 8) with the prototype's plain habits
  (random batches padded to max length 256, full-vocabulary logits). Same optimisation as ``ours``, so its
  loss is the comparable one; the prototype's lr and rank differ and make its loss incomparable;
- ``ours``: ``cpu-small``: batches grouped by length, dynamic padding, vocabulary projection at answer
  positions only.

Tokens/s counts real (non-padding) tokens of the training batches per second of training (evaluation and
loading excluded). Peak RSS is sampled during each run; runs go ``ours`` first, and freed memory is handed
back to the OS between runs, so a later run's peak is not inflated by an earlier one. The validation loss of
each final adapter is computed the same way for all runs (16 held-out rows, answer tokens only).
Targets: ours >= 3x the prototype's tokens/s; final loss within 5% of ``plain``.

    .venv/bin/python bench/train_throughput.py [--steps 4] [--runs ours,plain,prototype] [--threads N]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks.models import load_base  # noqa: E402
from tasks.train import ChatDataset, PadCollator, TrainResult, answer_only_loss, read_rows, train  # noqa: E402

TARGET_SPEEDUP = 3.0
TARGET_LOSS_GAP = 0.05
SYSTEM = "你是高校财务制度问答助手。请严格依据学校财务管理制度原文作答，给出具体金额和条款；制度未规定的，明确说明。"
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "济南", "青岛", "拉萨"]
TITLES = ["教授", "副教授", "讲师", "博士后", "研究生", "行政人员", "院士", "外聘专家"]
RUNS = {
    "ours": ("cpu-small", None),
    # Padded to 256, which every bench row fits (cpu-small's 768 is for rows with retrieved context).
    "plain": (
        "cpu-small",
        {"group_by_length": False, "pad_to_max_length": True, "selective_loss": False, "max_length": 256},
    ),
    "prototype": ("prototype", None),
}


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
        rows.append(
            {
                "id": f"bench{seed}-{i}",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "doc": "finance_rules.pdf",
                "kind": kind,
            }
        )
    return rows


def write_dataset(folder: Path, train_rows: list[dict]) -> Path:
    """A snapshot whose validation split is empty: each adapter is evaluated the same way afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows)
    (folder / "train.jsonl").write_text(text, encoding="utf-8")
    (folder / "valid.jsonl").write_text("", encoding="utf-8")
    return folder


def validation_loss(adapter_dir: Path, rows: list[dict], batch_size: int = 8) -> float:
    """Mean answer-token loss of base + adapter on ``rows`` (dynamic padding, answer-only projection)."""
    from peft import PeftModel

    model, tokenizer, _ = load_base("gemma3-270m")
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (default 4)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs", default="ours,plain,prototype", help="comma-separated: ours,plain,prototype"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    console = Console(highlight=False, width=120)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    valid_rows = synthetic_rows(16, args.seed + 1)
    results: dict[str, TrainResult] = {}
    val_loss: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="slm-train-bench-") as tmp:
        dataset = write_dataset(Path(tmp) / "benchdataset", synthetic_rows(args.rows, args.seed))
        console.print(
            f"{len(read_rows(dataset / 'train.jsonl'))} rows, {args.steps} optimiser steps per run, seed "
            f"{args.seed}, threads {args.threads or 'all'}, load average {os.getloadavg()[0]:.1f}"
        )
        for name in runs:
            profile, overrides = RUNS[name]
            release_memory()
            console.print(f"[bold]{name}[/bold] ({profile}{' + ' + str(overrides) if overrides else ''}) ...")
            results[name] = train(
                dataset,
                "gemma3-270m",
                Path(tmp) / name,
                profile=profile,
                max_steps=args.steps,
                seed=args.seed,
                progress=sys.stderr.isatty(),
                overrides=overrides,
                threads=args.threads,
            )
            r = results[name]
            console.print(
                f"  {r.tokens_per_s:.1f} tok/s, {r.train_s:.0f} s training, peak RSS {r.peak_rss_mb:.0f} MiB, "
                f"real/computed tokens {r.extra['train_tokens']}/{r.extra['padded_tokens']}"
            )
            release_memory()
            val_loss[name] = validation_loss(r.adapter_dir, valid_rows)

    table = Table(
        "run", "profile", "tok/s", "train s", "peak RSS MiB", "padding %", "last train loss", "val loss"
    )
    for name, r in results.items():
        pad = 100 * (1 - r.extra["train_tokens"] / r.extra["padded_tokens"])
        table.add_row(
            name,
            r.profile["name"],
            f"{r.tokens_per_s:.1f}",
            f"{r.train_s:.0f}",
            f"{r.peak_rss_mb:.0f}",
            f"{pad:.0f}",
            f"{r.final_train_loss:.4f}",
            f"{val_loss[name]:.4f}",
        )
    console.print(table)
    ok = True
    summary: dict[str, float] = {}
    if "ours" in results and "prototype" in results:
        speedup = results["ours"].tokens_per_s / results["prototype"].tokens_per_s
        summary["speedup_vs_prototype"] = speedup
        summary["rss_ratio_vs_prototype"] = results["ours"].peak_rss_mb / results["prototype"].peak_rss_mb
        ok &= speedup >= TARGET_SPEEDUP
        console.print(f"ours / prototype tokens/s: {speedup:.2f}x (target >= {TARGET_SPEEDUP:.0f}x)")
    if "ours" in results and "plain" in results:
        summary["speedup_vs_plain"] = results["ours"].tokens_per_s / results["plain"].tokens_per_s
        gap = abs(val_loss["ours"] - val_loss["plain"]) / val_loss["plain"]
        summary["val_loss_gap_vs_plain"] = gap
        ok &= gap <= TARGET_LOSS_GAP
        console.print(
            f"ours / plain (equal lr and rank) tokens/s: {summary['speedup_vs_plain']:.2f}x; validation loss "
            f"{val_loss['ours']:.4f} vs {val_loss['plain']:.4f}: {100 * gap:.2f}% apart (target <= 5%)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": {
                        name: {
                            "tokens_per_s": r.tokens_per_s,
                            "train_s": r.train_s,
                            "peak_rss_mb": r.peak_rss_mb,
                            "final_train_loss": r.final_train_loss,
                            "val_loss": val_loss[name],
                            "train_tokens": r.extra["train_tokens"],
                            "padded_tokens": r.extra["padded_tokens"],
                        }
                        for name, r in results.items()
                    },
                    **summary,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
