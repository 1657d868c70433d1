"""Asking the exported model: one question (`slm ask`) or a conversation (`slm chat`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from flows.cli.options import (
    Mode,
    Model,
    answer_mode,
    clip,
    console,
    runnable_gguf,
    settings,
    warehouse,
)


def ask(
    question: Annotated[str, typer.Argument(help="A question about the rules.")],
    mode: Mode = "grounded",
    model: Model = None,
    k: Annotated[int, typer.Option("--k", help="Chunks retrieved.")] = 3,
) -> None:
    """Answer with an exported model through llama.cpp: the answer, the article and document its numbers
    come from, and the guard's verdict. Grounded mode shows no number the ledger lacks."""
    from tasks.answer.answer import answer
    from tasks.answer.serve import answering_generator

    cfg = settings()
    with warehouse(cfg, read_only=True) as con:
        path = runnable_gguf(con, cfg, model)
        result = answer(
            question,
            answering_generator(path, cfg),
            None,
            con,
            mode=answer_mode(mode),
            k=k,
            max_tokens=cfg.answer_max_tokens,
        )
    console.print(result.text, markup=False, highlight=False)
    print_verdict(result)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/dim]")


def print_verdict(result: Any) -> None:
    """Where the numbers come from (article, document) and what the guard did."""
    for hit in result.cited:
        console.print(f"[dim]source: {escape(hit.doc)} › {escape(hit.heading_path or '(no heading)')}[/dim]")
    details = f"mode {result.mode}; numbers {', '.join(result.numbers) or '-'}; "
    details += f"verified {result.verified}; guard {result.guard_action}"
    console.print(f"[dim]{escape(details)}[/dim]")
    if result.draft and result.draft != result.text:  # what the model wrote, when the guard did not show it
        console.print(f"[dim]model's draft: {escape(clip(result.draft, 120))}[/dim]")


def chat(mode: Mode = "grounded", model: Model = None) -> None:
    """Ask question after question (empty line or Ctrl-D ends); the model is loaded once. Answers stream as
    they are generated, up to their first number: numbers appear once the guard has checked them."""
    from tasks.answer.answer import GuardStats, HeldNumbersStream, answer
    from tasks.answer.retrieve import ChunkIndex
    from tasks.answer.serve import answering_generator

    cfg = settings()
    mode = answer_mode(mode)
    with warehouse(cfg, read_only=True) as con:
        generator = answering_generator(runnable_gguf(con, cfg, model), cfg)
        index = ChunkIndex.build(con)
        stats = GuardStats()
        while True:
            try:
                question = input("问> ").strip()
            except EOFError:
                break
            if not question:
                break
            stream = HeldNumbersStream(
                lambda text: console.print(text, end="", markup=False, highlight=False)
            )
            generator.stream_to = stream.feed
            result = answer(
                question, generator, index, con, mode=mode, stats=stats, max_tokens=cfg.answer_max_tokens
            )
            stream.finish(result)
            print_verdict(result)
        console.print(f"[dim]{escape(stats.report())}[/dim]")
