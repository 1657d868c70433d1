"""Does training teach the model to answer? Model-family scores against optimiser steps and CPU minutes.

The real pipeline on the bundled sample, in a temporary workspace (the demo's settings: golden_size 24,
answer_max_tokens 48): ingest ``examples/sample_rules.pdf``, register ``examples/sample_questions.jsonl``
(``slm golden add``; training never sees its questions); or on other documents and their hand-phrased
questions (``--documents``, ``--questions``, with the default settings, as ``slm run`` in a fresh workspace).
Then extractive distillation, the pre-review gate, the ``auto`` review policy, the release gate and the frozen
dataset (its context rows built as grounded answering retrieves). Then, per training profile (default: the
demo's ``cpu-small`` beside ``prototype``), one LoRA run to the largest step count, its adapter saved at every
requested step; each of those adapters (and the untuned base, step 0) is exported to GGUF and answers through
the path users get (``tasks.answer.serve.answering_generator`` + ``tasks.answer.answer.answer_batch``:
llama.cpp, the guard, the constrained retry):

- closed book on the *recall* golden split (facts training sees, phrasings it never sees) and the hand set;
- grounded on the *reading* golden split (facts held out entirely) and the hand set;

scored by ``tasks.evaluate.evaluate`` in the *model* family (what the model wrote: a quote or abstention by the
guard counts as the model failing). The table shows numeric accuracy and accuracy per set and mode, with
the optimiser steps, the CPU minutes (process CPU time of training up to that step, all threads) and the
wall minutes; a PNG plots the same against steps and against CPU minutes.

    .venv/bin/python bench/learning_curve.py [--base gemma3-270m] [--steps 10,30,60,120]
        [--profiles cpu-small,prototype] [--limit N] [--threads 2] [--quant q8_0] [--out PNG] [--skip-base]
        [--documents FILE ... --questions JSONL]

``--base`` takes what ``slm train --base`` takes (a tiny model folder runs end to end in a couple of minutes,
``tests/test_learning_curve.py``). On Gemma 3 270M on 2 CPU cores the default curve takes hours: a cpu-small
step with context rows costs tens of seconds, and every checkpoint is exported and answers ~100 questions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from expectations.runner import run_gate  # noqa: E402
from review.policy import apply_auto_policy  # noqa: E402
from runtime.config import Settings, load_settings  # noqa: E402
from tasks.answer.answer import answer_batch  # noqa: E402
from tasks.answer.serve import answering_generator  # noqa: E402
from tasks.distill.distill import distill, make_teacher  # noqa: E402
from tasks.evaluate.evaluate import (  # noqa: E402
    EvalItem,
    evaluate,
    file_set,
    fmt,
    judged_items,
    ledger_view,
    question_set,
)
from tasks.evaluate.golden import add_file, golden_items  # noqa: E402
from tasks.export.export import export_model  # noqa: E402
from tasks.ingest.documents import ingest_file  # noqa: E402
from tasks.models.base_models import load_tokenizer, resolve_base  # noqa: E402
from tasks.train.dataset import DatasetInfo, freeze_dataset  # noqa: E402
from tasks.train.launch import parse_overrides  # noqa: E402
from tasks.train.train import train  # noqa: E402
from warehouse.db import open_warehouse  # noqa: E402

SAMPLE_PDF = ROOT / "examples" / "sample_rules.pdf"
HAND_QUESTIONS = ROOT / "examples" / "sample_questions.jsonl"
DEMO_SETTINGS = {"golden_size": 24, "answer_max_tokens": 48}  # what `make demo` writes to its slm.toml
LABELS = {"golden recall": "recall", "golden reading": "reading"}  # and "hand" for the hand-phrased file
MODE_LABEL = {"closed_book": "closed", "grounded": "grounded"}
LOSS_WINDOW = 5  # train loss shown: the mean over the last steps up to the checkpoint


@dataclass
class Point:
    """One evaluated model: a profile's adapter after ``step`` optimiser steps (step 0: the untuned base)."""

    profile: str
    step: int
    cpu_min: float
    wall_min: float
    train_loss: float | None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # "set|mode" -> model-family headline
    guard: dict[str, dict[str, int]] = field(default_factory=dict)  # mode -> guard action counts


class SaveAtSteps(TrainerCallback):
    """Saves the adapter (and the tokenizer it was trained with) after each of ``steps`` optimiser steps, and
    the training CPU and wall time up to there (the time spent saving left out)."""

    def __init__(self, steps: Sequence[int], folder: Path, tokenizer: Any) -> None:
        self.steps = set(steps)
        self.folder = folder
        self.tokenizer = tokenizer
        self.saved: dict[int, tuple[Path, float, float]] = {}  # step -> (adapter, cpu s, wall s)
        self._cpu0 = self._wall0 = 0.0
        self._spent_cpu = self._spent_wall = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step not in self.steps or step in self.saved or model is None:
            return
        cpu, wall = time.process_time(), time.perf_counter()
        adapter = self.folder / f"step-{step}"
        model.save_pretrained(adapter)
        self.tokenizer.save_pretrained(adapter)
        self.saved[step] = (
            adapter,
            cpu - self._cpu0 - self._spent_cpu,
            wall - self._wall0 - self._spent_wall,
        )
        self._spent_cpu += time.process_time() - cpu
        self._spent_wall += time.perf_counter() - wall


def columns(hand: str) -> tuple[tuple[str, str], ...]:
    """(set, mode) columns: closed book is judged on recall, grounded on reading; the hand set in both."""
    return (
        (hand, "closed_book"),
        ("golden recall", "closed_book"),
        (hand, "grounded"),
        ("golden reading", "grounded"),
    )


def set_label(name: str) -> str:
    return LABELS.get(name, "hand")


SAMPLE_HAND = file_set(HAND_QUESTIONS)


def build_dataset(
    con: Any, settings: Settings, documents: Sequence[Path] = (SAMPLE_PDF,), questions: Path = HAND_QUESTIONS
) -> tuple[DatasetInfo, list[str]]:
    """The demo's dataset (or that of ``documents``): ingest, hand questions registered, extractive
    distillation, gates, auto review, freeze. Returns the dataset and lines describing it."""
    for document in documents:
        if ingest_file(con, document, settings).status == "failed":
            raise SystemExit(f"{document}: ingest failed")
    added = add_file(con, questions)
    distill(con, settings, make_teacher(settings, "extractive"))
    run_gate(con, settings, "pre_review")
    apply_auto_policy(con, settings.similarity_threshold)
    report = run_gate(con, settings, "release")
    if not report.success:
        raise SystemExit(f"release gate failed: {report.message}")
    info = freeze_dataset(con, settings, report.gate_run_id)
    records = sum(
        1 for name in ("train.jsonl", "valid.jsonl") for _ in (info.path / name).open(encoding="utf-8")
    )
    return info, [
        f"dataset {info.dataset_id}: {info.row_count} rows ({info.train_count} train, {info.valid_count} valid), "
        f"{records - info.row_count} context copies (context_share {settings.context_share}); "
        f"{added} hand-phrased questions registered"
    ]


def question_sets(items: Sequence[EvalItem], limit: int | None, hand: str) -> dict[str, list[EvalItem]]:
    """Per mode, the items it is judged on, at most ``limit`` per question set, spread evenly over each set
    (the hand file is ordered by topic; the golden sets by their stratified choice)."""
    chosen: list[EvalItem] = []
    for name in (hand, "golden recall", "golden reading"):
        members = [i for i in items if question_set(i) == name]
        if limit is not None and len(members) > limit:
            members = [members[(n * len(members)) // limit] for n in range(limit)]
        chosen += members
    return {mode: judged_items(chosen, mode) for mode in ("closed_book", "grounded")}


def score(
    con: Any, settings: Settings, gguf: Path, sets: dict[str, list[EvalItem]], point: Point, view: Any
) -> None:
    """Answer every set through ``slm ask``'s path with the GGUF and keep the model-family headlines."""
    generator = answering_generator(gguf, settings)
    try:
        for mode, items in sets.items():
            result = evaluate(items, answer_batch(generator, con, mode, settings.answer_max_tokens), view)
            for name, families in result.metrics["per_set"].items():
                point.scores[f"{name}|{mode}"] = families["model"]
            point.guard[mode] = result.metrics["guard_actions"]
    finally:
        generator.close()


def train_profile(
    dataset: DatasetInfo,
    base: str,
    profile: str,
    steps: Sequence[int],
    folder: Path,
    threads: int | None,
    overrides: dict[str, Any] | None = None,
) -> tuple[dict[int, tuple[Path, float, float]], Any]:
    tokenizer = load_tokenizer(resolve_base(base))
    saver = SaveAtSteps(steps, folder / "adapters", tokenizer)
    result = train(
        dataset.path,
        base,
        folder / "run",
        profile,
        max_steps=max(steps),
        progress=False,
        save_steps=max(steps) + 1,  # no Trainer checkpoint, evaluation or early stop before the last step
        callbacks=[saver],
        threads=threads,
        overrides=overrides,
    )
    return saver.saved, result


def mean_loss(curve: Sequence[tuple[int, float | None, float | None]], step: int) -> float | None:
    losses = [t for s, t, _ in curve if t is not None and step - LOSS_WINDOW < s <= step]
    return sum(losses) / len(losses) if losses else None


def set_sizes(sets: dict[str, list[EvalItem]], hand: str) -> dict[str, int]:
    """Items per "set|mode" column."""
    return {
        f"{name}|{mode}": sum(question_set(i) == name for i in sets.get(mode, []))
        for name, mode in columns(hand)
    }


def table(points: Sequence[Point], sizes: dict[str, int], hand: str) -> list[str]:
    head = f"{'profile':10} {'step':>5} {'cpu_min':>8} {'wall_min':>8} {'loss':>6}"
    sub = " " * len(head)
    for name, mode in columns(hand):
        title = f"{set_label(name)}·{MODE_LABEL[mode]} (n={sizes.get(f'{name}|{mode}', 0)})"
        head += f"  {title:>24}"
        sub += f"  {'numeric':>11} {'accuracy':>12}"
    lines = [head, sub]
    for p in points:
        line = f"{p.profile:10} {p.step:>5} {p.cpu_min:>8.2f} {p.wall_min:>8.2f} "
        line += f"{p.train_loss:>6.3f}" if p.train_loss is not None else f"{'-':>6}"
        for name, mode in columns(hand):
            m = p.scores.get(f"{name}|{mode}", {})
            numeric = f"{fmt(m.get('numeric_accuracy'))} /{m.get('n_numeric', 0)}"
            line += f"  {numeric:>11} {fmt(m.get('accuracy')):>12}"
        lines.append(line)
    return lines


def plot(points: Sequence[Point], path: Path, title: str, hand: str = SAMPLE_HAND) -> None:
    """Numeric accuracy (solid) and accuracy (dashed), model family, per set and mode: against optimiser steps
    (top row) and CPU minutes (bottom row), one colour per profile; the base is step 0 of every profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(hand)
    fig, axes = plt.subplots(2, len(cols), figsize=(4 * len(cols), 7), dpi=100, squeeze=False)
    base = [p for p in points if p.step == 0]
    profiles = list(dict.fromkeys(p.profile for p in points if p.step > 0))
    for row, x_of in enumerate((lambda p: p.step, lambda p: p.cpu_min)):
        for col, (name, mode) in enumerate(cols):
            ax = axes[row][col]
            for n, profile in enumerate(profiles):
                curve = base + [p for p in points if p.profile == profile and p.step > 0]
                colour = f"C{n}"
                for metric, style in (("numeric_accuracy", "o-"), ("accuracy", "s--")):
                    pts = [
                        (x_of(p), p.scores.get(f"{name}|{mode}", {}).get(metric))
                        for p in curve
                        if p.scores.get(f"{name}|{mode}", {}).get(metric) is not None
                    ]
                    if pts:
                        label = f"{profile} {'numeric' if metric == 'numeric_accuracy' else 'accuracy'}"
                        ax.plot(*zip(*pts, strict=True), style, color=colour, label=label, linewidth=1.3)
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.set_xlabel("optimiser steps" if row == 0 else "CPU minutes (training)")
            if row == 0:
                ax.set_title(f"{set_label(name)} · {MODE_LABEL[mode]}", fontsize=10)
            if col == 0:
                ax.set_ylabel("model-family score")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace, workspace: Path) -> tuple[list[Point], dict[str, int], str]:
    """The points, the question sets' sizes and the dataset's recipe: its context share and phrasings per fact
    (the plot's title says them)."""
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip() and int(s) > 0})
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if not steps or not profiles:
        raise SystemExit("--steps and --profiles need at least one value each")
    documents = args.documents or [SAMPLE_PDF]
    # The sample answers with the demo's settings; other documents with the defaults, as `slm run` does.
    settings = load_settings(workspace, **(DEMO_SETTINGS if documents == [SAMPLE_PDF] else {}))
    hand = file_set(args.questions)
    quant = args.quant or settings.export_quant
    started = time.perf_counter()
    points: list[Point] = []
    with open_warehouse(settings.warehouse_path) as con:
        dataset, about = build_dataset(con, settings, documents, args.questions)
        sets = question_sets(golden_items(con), args.limit, hand)
        sizes = set_sizes(sets, hand)
        view = ledger_view(con)
        for line in about:
            print(line, flush=True)
        print(
            f"base {args.base}; steps {','.join(map(str, steps))}; profiles {', '.join(profiles)}; "
            f"answers through llama.cpp ({quant} GGUF), at most {settings.answer_max_tokens} tokens",
            flush=True,
        )

        def evaluated(point: Point, adapter: Path | None) -> Point:
            gguf = export_model(
                adapter,
                args.base,
                workspace / "gguf",
                quant,
                name=f"{point.profile}-{point.step}",
                n_threads=args.threads,
            ).path
            score(con, settings, gguf, sets, point, view)
            gguf.unlink()  # one checkpoint's export at a time on disk (Gemma's is ~300 MB in q8_0)
            print(table([point], sizes, hand)[-1], f"  [{time.perf_counter() - started:.0f} s]", flush=True)
            return point

        print("\n".join(table([], sizes, hand)), flush=True)
        if not args.skip_base:
            points.append(evaluated(Point("base", 0, 0.0, 0.0, None), None))
        overrides = parse_overrides(args.overrides)
        if overrides:
            print(f"profile fields set for every run: {overrides}", flush=True)
        for name in profiles:
            saved, result = train_profile(
                dataset, args.base, name, steps, workspace / name, args.threads, overrides
            )
            profile = f"{name}*" if overrides else name
            kept = result.extra.get("train_rows") or {}
            print(
                f"{profile}: {result.optimizer_steps} steps, train rows kept {kept.get('kept')} of "
                f"{kept.get('rows')} ({kept.get('truncated')} truncated, {kept.get('dropped')} dropped: no "
                f"answer token within max_length {result.profile['max_length']})",
                flush=True,
            )
            for step in steps:
                if step not in saved:
                    print(
                        f"{profile}: no adapter at step {step} (training ended at {result.optimizer_steps})"
                    )
                    continue
                adapter, cpu_s, wall_s = saved[step]
                point = Point(profile, step, cpu_s / 60, wall_s / 60, mean_loss(result.loss_curve, step))
                points.append(evaluated(point, adapter))
    return points, sizes, f"context share {settings.context_share:g} · {settings.per_fact} phrasings per fact"


def main(argv: Sequence[str] | None = None) -> list[Point]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="gemma3-270m", help="base model (as `slm train --base`)")
    parser.add_argument("--steps", default="10,30,60,120", help="optimiser steps to evaluate at")
    parser.add_argument("--profiles", default="cpu-small,prototype", help="training profiles side by side")
    parser.add_argument("--limit", type=int, default=None, help="questions per set (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="CPU cores to use (default: all)")
    parser.add_argument("--quant", default=None, help="GGUF quantisation (default: the settings', q8_0)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "learning_curve.png")
    parser.add_argument(
        "--skip-base", action="store_true", help="no step-0 point (the untuned base; ~13 min on Gemma)"
    )
    parser.add_argument(
        "--workspace", type=Path, default=None, help="keep the workspace here (default: temp)"
    )
    parser.add_argument(
        "--documents", type=Path, nargs="+", default=None, help="rule documents (default: the sample PDF)"
    )
    parser.add_argument(
        "--questions", type=Path, default=HAND_QUESTIONS, help="hand-phrased questions (JSONL) on them"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="profile field for every profile run (repeatable), e.g. lora_r=32 or "
        'target_modules=["q_proj","v_proj"]; the table labels such a run profile*',
    )
    args = parser.parse_args(argv)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # weight loading and saving bars, nine times over
    if args.threads and affinity is not None:
        # llama.cpp and torch both size their thread pools from the cores this process may use.
        os.sched_setaffinity(0, sorted(affinity)[: args.threads])
    try:
        if args.workspace is not None:
            points, sizes, recipe = run(args, args.workspace)
        else:
            with tempfile.TemporaryDirectory(prefix="learning-curve-") as tmp:
                points, sizes, recipe = run(args, Path(tmp) / "ws")
    finally:
        if args.threads and affinity is not None:
            os.sched_setaffinity(0, affinity)
        if bars:
            hf_logging.enable_progress_bar()
    print()
    hand = file_set(args.questions)
    print("\n".join(table(points, sizes, hand)))
    title = f"learning curve · base {Path(args.base).name} · {recipe} · model-family scores"
    plot(points, args.out, title, hand)
    args.out.with_suffix(".json").write_text(
        json.dumps([asdict(p) for p in points], ensure_ascii=False, indent=1), encoding="utf-8"
    )
    print(f"\nplot: {args.out}\npoints: {args.out.with_suffix('.json')}")
    return points


if __name__ == "__main__":
    main()
