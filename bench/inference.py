"""Inference speed: the exported q4_k_m GGUF through llama.cpp against the same model in transformers fp32,
on the same prompts, side by side in one process, with the file sizes. Target: llama.cpp at least 5x.

    .venv/bin/python bench/inference.py [--base gemma3-270m] [--tokens 48] [--prompts 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.answer.generate import TransformersGenerator  # noqa: E402
from tasks.answer.prompts import chat_messages  # noqa: E402
from tasks.answer.serve import LlamaCppGenerator  # noqa: E402
from tasks.export.export import export_model  # noqa: E402

TARGET = 5.0
QUESTIONS = [
    "出差伙食补助费每人每天多少钱？",
    "市内交通费怎么报销？",
    "专家咨询费的标准是多少？",
    "借款多久内要冲账？",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="gemma3-270m")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=4)
    args = parser.parse_args()
    questions = (QUESTIONS * args.prompts)[: args.prompts]
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_model(None, args.base, Path(tmp), "q4_k_m")
        llama = LlamaCppGenerator(exported.path, max_new_tokens=args.tokens)
        transformers = TransformersGenerator(args.base, max_new_tokens=args.tokens)
        runs = {}
        for name, generate in (("llama.cpp q4_k_m", llama.chat), ("transformers fp32", transformers.chat)):
            generate([chat_messages(questions[0])])  # warm-up
            tokens = 0
            start = time.perf_counter()
            for question in questions:  # one at a time, as a person asks
                answer = generate([chat_messages(question)])[0]
                tokens += len(transformers.tokenizer(answer, add_special_tokens=False)["input_ids"])
            runs[name] = (tokens, time.perf_counter() - start)
        size_gguf = exported.size_bytes
    table = Table(
        title=f"inference benchmark: {args.base}, {len(questions)} prompts, up to {args.tokens} tokens"
    )
    for column in ("backend", "tokens", "seconds", "tokens/s", "ratio"):
        table.add_column(column, justify="right")
    base_rate = runs["transformers fp32"][0] / runs["transformers fp32"][1]
    for name, (tokens, seconds) in runs.items():
        rate = tokens / seconds
        table.add_row(name, str(tokens), f"{seconds:.1f}", f"{rate:.1f}", f"{rate / base_rate:.1f}x")
    console.print(table)
    speedup = (runs["llama.cpp q4_k_m"][0] / runs["llama.cpp q4_k_m"][1]) / base_rate
    console.print(
        f"q4_k_m GGUF {size_gguf / 1e6:.0f} MB; speed-up {speedup:.1f}x "
        f"({'meets' if speedup >= TARGET else 'MISSES'} the target of at least {TARGET:.0f}x)"
    )


if __name__ == "__main__":
    main()
