"""Champion/challenger on the golden set: a worse challenger is refused and named in the report, a better
one is promoted; the registry keeps one champion; people can force a promotion, and it is recorded."""

from __future__ import annotations

from pathlib import Path

from runtime.config import Settings
from tasks.evaluate.evaluate import EvalItem, evaluate, ledger_view
from tasks.evaluate.promote import challenge, force_promote
from tasks.ingest.documents import ingest_file
from tests.conftest import SAMPLE_PDF
from warehouse import models as registry

ITEMS = [
    EvalItem(f"q{i}", f"第{i}类伙食补助费每人每天多少？", numbers=("100",), type="numeric") for i in range(30)
] + [EvalItem(f"u{i}", f"宠物托运费{i}可以报销吗？", type="unanswerable") for i in range(10)]


def answerer(right: int, invent: bool = False):
    """Answers the first ``right`` numeric items correctly; the rest wrong (or with an invented number)."""

    def answer_batch(questions: list[str]) -> list[str]:
        out = []
        for q in questions:
            if "宠物" in q:
                out.append("文件中没有相关规定。")
                continue
            index = int(q[1 : q.index("类")])
            out.append(
                "每人每天100元。" if index < right else ("每人每天150元。" if invent else "每人每天80元。")
            )
        return out

    return answer_batch


def register_and_challenge(
    con,
    settings: Settings,
    model_id: str,
    answerers: dict,
    *,
    base_spec: str = "gemma3-270m",
    adapter_path: str = "/a",
    dataset_id: str = "d1",
    **challenge_options,
):
    """One champion/challenger step: register ``model_id`` as a challenger, then ``challenge`` it on ITEMS."""
    registry.register_model(
        con, model_id, "challenger", base_spec, adapter_path=adapter_path, dataset_id=dataset_id
    )
    return challenge(con, settings, model_id, ITEMS, answerers, **challenge_options)


def test_worse_challenger_is_refused_better_one_promoted(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)  # the ledger the invented-number check uses
    first = register_and_challenge(
        con, settings, "m-first", {"base": answerer(5), "challenger": answerer(24)}
    )
    assert first.promoted and registry.get_champion(con)["model_id"] == "m-first"

    worse = register_and_challenge(
        con,
        settings,
        "m-worse",
        {"base": answerer(5), "champion": answerer(24), "challenger": answerer(12, invent=True)},
    )
    assert not worse.promoted
    assert registry.get_champion(con)["model_id"] == "m-first"
    assert registry.get_model(con, "m-worse")["kind"] == "rejected"
    report = worse.report_md.read_text(encoding="utf-8")
    assert (
        "REFUSED" in report and "Regressed items, closed book (12)" in report and "第12类伙食补助费" in report
    )
    assert (worse.report_md.parent / f"{worse.report_md.stem}-metrics.png").exists()
    assert worse.report_html.read_text(encoding="utf-8").count("<table>") >= 2

    better = register_and_challenge(
        con, settings, "m-better", {"base": answerer(5), "champion": answerer(24), "challenger": answerer(30)}
    )
    assert better.promoted and registry.get_champion(con)["model_id"] == "m-better"
    assert registry.get_model(con, "m-first")["kind"] == "retired"
    runs = con.execute("SELECT count(*) FROM eval_runs").fetchone()[0]
    assert runs == 2 + 3 + 3


def test_a_challenger_must_be_not_worse_grounded_too(con, settings: Settings) -> None:
    ingest_file(con, SAMPLE_PDF, settings)
    worse_grounded = register_and_challenge(
        con,
        settings,
        "m-g",
        {"base": answerer(5), "challenger": answerer(24)},  # better closed book ...
        grounded={"base": answerer(30), "challenger": answerer(5)},  # ... but reads its context worse
    )
    assert not worse_grounded.promoted and registry.get_model(con, "m-g")["kind"] == "rejected"
    assert {mode: set(by_label) for mode, by_label in worse_grounded.scores.items()} == {
        "closed_book": {"base", "challenger"},
        "grounded": {"base", "challenger"},
    }
    assert any(r.startswith("grounded: accuracy may be worse") for r in worse_grounded.decision.reasons)
    assert "grounded accuracy" in worse_grounded.decision.checks
    modes = con.execute("SELECT mode, count(*) FROM eval_runs GROUP BY mode ORDER BY mode").fetchall()
    assert modes == [("closed_book", 2), ("grounded", 2)]
    assert "challenger grounded" in worse_grounded.report_md.read_text(encoding="utf-8")

    better = register_and_challenge(
        con,
        settings,
        "m-h",
        {"base": answerer(5), "challenger": answerer(24)},
        grounded={"base": answerer(20), "challenger": answerer(30)},
    )
    assert better.promoted and better.decision.reasons == [
        "closed book: not worse on any metric",
        "grounded: not worse on any metric",
    ]


def test_people_can_force_and_it_is_recorded(con, settings: Settings, tmp_path: Path) -> None:
    registry.register_model(con, "m-x", "challenger", "gemma3-270m", adapter_path="/x")
    force_promote(con, "m-x", "urgent rule change", "finance-office")
    model = registry.get_model(con, "m-x")
    assert model["kind"] == "champion" and "finance-office with --force: urgent rule change" in model["note"]


def _echo_generator(messages, max_tokens=None, grammar=None) -> str:
    """A model that parrots its system prompt, whatever it is asked (as the untuned base did)."""
    return messages[0]["content"]


def test_an_echoing_model_and_a_tier_lister_score_zero_and_are_refused(con, settings: Settings) -> None:
    from tasks.answer.answer import answer_batch

    ingest_file(con, SAMPLE_PDF, settings)
    echo = {mode: answer_batch(_echo_generator, con, mode, 32) for mode in ("closed_book", "grounded")}
    for mode, batch in echo.items():
        result = evaluate(ITEMS, batch, ledger_view(con))
        # What the model did is worth nothing, on numeric and unanswerable items alike (the prompt's
        # 文件中没有相关规定 is no abstention)...
        assert result.metrics["model"]["numeric_accuracy"] == 0.0, mode
        assert result.metrics["model"]["abstention_accuracy"] == 0.0, mode
        written = [m for m, reply in zip(result.model, result.replies, strict=True) if reply.model]
        assert written and all(m.echoed for m in written), mode
        # ... and the guard never lets the echo through as an answer.
        assert "passed" not in result.metrics["guard_actions"], mode
        if mode == "closed_book":  # closed book flags but shows what the model wrote: the user saw nothing
            assert result.metrics["shown"]["numeric_accuracy"] == 0.0
            assert result.metrics["shown"]["abstention_accuracy"] == 0.0

    def tier_lister(questions: list[str]) -> list[str]:
        return ["一类人员100元，二类人员80元。"] * len(questions)

    listed = evaluate(ITEMS, tier_lister, ledger_view(con))
    assert listed.metrics["model"]["numeric_accuracy"] == 0.0

    refused = register_and_challenge(
        con,
        settings,
        "m-echo",
        {"base": answerer(30), "challenger": echo["closed_book"]},
        grounded={"base": answerer(30), "challenger": echo["grounded"]},
    )
    assert not refused.promoted and registry.get_model(con, "m-echo")["kind"] == "rejected"
    refused = register_and_challenge(
        con, settings, "m-tiers", {"base": answerer(30), "challenger": tier_lister}
    )
    assert not refused.promoted and any(
        "numeric_accuracy may be worse" in r for r in refused.decision.reasons
    )


def test_a_refused_challenger_s_newer_export_never_answers_by_default(con, settings: Settings) -> None:
    """`slm ask`, `chat`, `eval`, `serve` and the web app name no model by default: the champion answers,
    the untuned base until one is promoted, even when a refused challenger was exported after the base
    (evaluation exports every challenger to answer it in llama.cpp)."""
    from tasks.export.resolve import resolve_model

    def exported(model_id: str, path: str, sha256: str, source: str = "merged") -> None:
        registry.record_export(
            con, model_id=model_id, path=path, quant="q8_0", size_bytes=1, sha256=sha256, source=source
        )

    registry.register_model(con, "lora-refused", "challenger", "tiny", adapter_path="/adapters/refused")
    registry.set_status(con, "lora-refused", "rejected", status="refused")
    exported("base-x", "/gguf/base-x.gguf", "base-x", source="base")
    exported("lora-refused", "/gguf/lora-refused.gguf", "lora-refused")  # the challenger's is newer
    served = resolve_model(con, settings, None)
    assert served.fell_back and served.model_id is None
    assert served.gguf == Path("/gguf/base-x.gguf") and served.what == "untuned base (no champion yet)"

    registry.register_model(con, "lora-good", "champion", "tiny", adapter_path="/adapters/good")
    exported("lora-good", "/gguf/good.gguf", "g")
    exported("lora-refused", "/gguf/again.gguf", "r2")  # exported again after the promotion: not the default
    served = resolve_model(con, settings, None)
    assert served.model_id == "lora-good" and served.gguf == Path("/gguf/good.gguf")
