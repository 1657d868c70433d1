"""Progress you can see: training reports every step to a rich bar without changing the training; on a real
Prefect run the stages announce their start and end, distillation and evaluation fill progress artifacts to
100%, and the evaluation report's charts reach the UI inline as PNG data URIs."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness
from rich.console import Console

from flows.prefect_tasks import distill_task, ingest_task
from flows.progress import RichStages, StageProgress, listening, reported_stage
from runtime.config import Settings, load_settings
from tasks.evaluate.report import embedded_markdown
from tasks.train.train import RichTrainBar, TrainSnapshot, train
from tests.conftest import SAMPLE_PDF
from tests.test_promote import answerer, register_and_challenge
from tests.test_train import make_rows, make_tokenizer, tiny_model, write_dataset
from warehouse.db import settings_warehouse

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plain(terminal: str) -> str:
    """What a terminal showed, without its colour and cursor codes."""
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", terminal)


def test_training_progress_reaches_the_rich_bar_and_changes_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base"
    tokenizer = make_tokenizer()
    tiny_model("gemma3", len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    dataset = write_dataset(tmp_path / "d0", make_rows(8), make_rows(4, 100))
    recipe = {"lora_dropout": 0.0, "learning_rate": 1e-2}
    kw = {"max_steps": 3, "save_steps": 2, "threads": 1, "overrides": recipe}

    out = io.StringIO()
    bar = RichTrainBar(Console(file=out, force_terminal=True, width=140))
    seen: list[TrainSnapshot] = []

    def on_progress(snapshot: TrainSnapshot) -> None:
        seen.append(snapshot)
        bar(snapshot)

    with_bar = train(dataset, str(base), tmp_path / "bar", progress=False, on_progress=on_progress, **kw)
    silent = train(dataset, str(base), tmp_path / "silent", progress=False, **kw)

    assert next(s.step for s in seen if not s.done) == 0 and seen[-1].done and seen[-1].step == 3
    assert {s.total for s in seen} == {3}
    assert seen[-1].loss is not None and seen[-1].eval_loss is not None and seen[-1].tokens_per_s > 0
    assert any(s.eta_s is not None and 0 < s.step < 3 for s in seen)
    assert "ETA" in seen[1].describe() and "tok/s" in seen[1].describe()
    text = plain(out.getvalue())
    assert "train" in text and "3/3" in text and "tok/s" in text
    assert f"loss {seen[-1].loss:.3f}" in text and f"val {seen[-1].eval_loss:.3f}" in text
    # Progress reads counters only: the same losses, step for step.
    assert with_bar.loss_curve == silent.loss_curve


# ------------------------------------------------------------------------------------------- on Prefect


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage_started(self, stage: str) -> None:
        self.events.append(("start", stage))

    def stage_progress(self, stage: str, done: int, total: int, detail: str) -> None:
        self.events.append(("progress", stage, done, total))

    def stage_ended(self, stage: str, state: str, seconds: float) -> None:
        self.events.append(("end", stage, state))


@task(name="evaluate-challenger", cache_policy=NO_CACHE)
@reported_stage
def _evaluate(settings: Settings) -> str:
    """``challenge`` with scripted answerers (the real one answers through llama.cpp), reporting as the flow's
    evaluate task does; the report published as the flow publishes it."""
    with settings_warehouse(settings) as con:
        outcome = register_and_challenge(
            con,
            settings,
            "m-progress",
            {"base": answerer(5), "challenger": answerer(24)},
            base_spec="tiny",
            on_progress=StageProgress("evaluate-challenger", "answers"),
        )
    markdown = embedded_markdown(outcome.report_md)
    create_markdown_artifact(key="evaluation-report", markdown=markdown, description="test")
    return markdown


@flow(name="progress-check")
def _progress_flow(workspace: str) -> str:
    settings = load_settings(workspace)
    ingest_task(settings, [str(SAMPLE_PDF)])
    distill_task(settings)
    return _evaluate(settings)


def _artifacts() -> dict[str, object]:
    async def read():
        async with get_client() as client:
            return await client.read_artifacts()

    return {a.key: a for a in asyncio.run(read()) if a.key}


def test_stages_and_progress_artifacts_on_a_real_prefect_run(prefect_server, settings: Settings) -> None:
    recorder = Recorder()
    shown = io.StringIO()
    with listening(recorder), listening(RichStages(Console(file=shown, force_terminal=True, width=140))):
        markdown = _progress_flow(str(settings.workspace))

    starts = [e[1] for e in recorder.events if e[0] == "start"]
    ends = [(e[1], e[2]) for e in recorder.events if e[0] == "end"]
    assert starts == ["ingest", "distill", "evaluate-challenger"]
    assert ends == [(s, "Completed") for s in starts]
    for stage in ("distill", "evaluate-challenger"):
        progress = [e for e in recorder.events if e[0] == "progress" and e[1] == stage]
        assert progress and progress[-1][2] == progress[-1][3] > 0, stage  # done == total at the end
    text = plain(shown.getvalue())
    assert "ingest started" in text and "evaluate-challenger" in text and text.count(" done in ") == 3

    found = _artifacts()
    for key in ("distill-progress", "evaluate-challenger-progress"):
        assert key in found, sorted(found)
        assert found[key].type == "progress" and float(found[key].data) == 100.0
    assert "/80 answers" in found["evaluate-challenger-progress"].description  # 40 items x 2 models

    # The charts: inline PNGs the UI can show, no relative links left.
    published = found["evaluation-report"].data
    assert published == markdown
    images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", published)
    assert len(images) >= 2  # the model scores and the guard actions
    for data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert not re.search(r"!\[[^\]]*\]\((?!data:)[^)]*\.png\)", published)
