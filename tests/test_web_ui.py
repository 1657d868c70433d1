"""The web app's pages in a real headless browser: Debian's Chromium and chromedriver driven by Selenium,
nothing downloaded at run time (the driver's path is given, so selenium-manager never runs).

The app is served on 127.0.0.1 by uvicorn in a thread (stopped by a finaliser); the Ask tab answers with a
planted scripted model (the sample questions' reference answers, as ``bench/guard.py``'s ``reference``).
The test uploads ``examples/sample_rules.pdf``, sees its facts, opens the highlighted sentence of one fact,
asks a question and reads the answer and its source on the page. With ``SLM_SCREENSHOTS=1`` it also saves
a screenshot of every tab as ``docs/web_<tab>.png``.

Also, without a browser: hostile uploads (path traversal, not a document, too large, a fake PDF) are
refused or recorded as failed with nothing stored half-way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runtime.config import Settings, load_settings
from tasks.answer.answer import ABSTAIN_TEXT
from tests.conftest import EXAMPLES, ROOT, SAMPLE_PDF, require_or_skip

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUESTION = "我是讲师，下周去武汉出差三天，住酒店一晚最多能报多少钱？"
INVENTING = "校级领导出差住宿费每人每天最多多少钱？"  # the planted model answers it with a number of its own
INVENTED = "987"
SCREENSHOTS = os.environ.get("SLM_SCREENSHOTS", "").strip() not in ("", "0")
TABS = ("Documents", "Ledger", "Pipeline", "Rows and datasets", "Models", "Ask", "Settings")


def scripted_generator() -> Callable[..., str]:
    """Writes the sample questions' reference answers (bench/guard.py's ``reference`` model)."""
    reference = {}
    for line in (EXAMPLES / "sample_questions.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            reference[item["question"]] = item["answer"]

    def generate(messages: list[dict[str, str]], max_tokens: int, grammar: Any = None) -> str:
        asked = messages[-1]["content"].rsplit("问题：", 1)[-1].strip()
        if asked == INVENTING:
            return f"校级领导住宿费每人每天不超过{INVENTED}元。"
        return reference.get(asked, ABSTAIN_TEXT)

    return generate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web_app(settings: Settings, generator: Callable[..., str]) -> Any:
    """The app as `slm web` serves it (webapp.server.create_app) with this test's UI mounted at /; or, without
    the server module, the UI alone on a FastAPI app."""
    import gradio
    from fastapi import FastAPI

    from webapp.ui import build_ui

    try:
        from webapp.server import create_app
    except ImportError:
        return gradio.mount_gradio_app(FastAPI(), build_ui(settings, generator=generator), path="/")
    app = create_app(settings, generator=generator)  # the Ask tab answers with the app's one (planted) model
    assert app.state.ui, "create_app did not mount the web UI"
    return app


@pytest.fixture
def served(settings: Settings, stop_later: Callable[[Callable[[], Any]], None]) -> str:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            web_app(settings, scripted_generator()), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="web-ui", daemon=True)

    def stop_web_app() -> None:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 15 s")

    stop_later(stop_web_app)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web app did not start")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}/"


def _docs_screenshot() -> ModuleType:
    """docs/screenshot.py (docs tooling, not a package): the one list of Chromium's headless switches."""
    spec = importlib.util.spec_from_file_location("docs_screenshot", ROOT / "docs" / "screenshot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def browser(stop_later: Callable[[Callable[[], Any]], None]) -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        require_or_skip(
            f"Chromium or chromedriver missing ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium "
            "chromium-driver"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require_or_skip("selenium is not installed (pip install selenium)")
    profile = Path(tempfile.mkdtemp(prefix="slm-chromium-"))
    stop_later(lambda: shutil.rmtree(profile, ignore_errors=True))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        *_docs_screenshot().HEADLESS_FLAGS,
        "--disable-dev-shm-usage",
        "--window-size=1400,1600" if SCREENSHOTS else "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as exc:
        require_or_skip(f"Chromium did not start: {type(exc).__name__}: {str(exc)[:200]}")
    stop_later(driver.quit)
    driver.set_page_load_timeout(60)
    return driver


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 60.0) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        shot = Path(tempfile.gettempdir()) / "slm_web_ui_failure.png"
        driver.save_screenshot(str(shot))
        body = driver.find_element("tag name", "body").text[-1500:]
        pytest.fail(f"timed out waiting for {what}; page ends with:\n{body}\n(screenshot {shot})")


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return " ".join(e.text for e in found)


def open_tab(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    def tab_button(d: Any) -> Any:
        for button in d.find_elements(By.CSS_SELECTOR, "button[role=tab]"):
            if button.text.strip() == name and button.is_displayed():
                return button
        return None

    wait_for(driver, tab_button, f"the {name} tab").click()


def screenshot(driver: Any, name: str) -> None:
    if SCREENSHOTS:
        time.sleep(0.8)  # let the tab's refresh land
        driver.save_screenshot(str(ROOT / "docs" / f"web_{name}.png"))


def test_upload_facts_sentence_and_answer_in_browser(
    settings: Settings, served: str, browser: Any, stop_later: Callable[[Callable[[], Any]], None]
) -> None:
    from selenium.webdriver.common.by import By

    from webapp.ui import stop_run

    driver = browser
    driver.get(served)
    upload = wait_for(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), "the upload field"
    )[0]
    upload.send_keys(str(SAMPLE_PDF))
    # The field may show the name's stem and extension in separate elements ("sample_rules" / ".pdf").
    wait_for(
        driver,
        lambda d: "sample_rules.pdf" in "".join(text_of(d, "#upload").split()),
        "the uploaded file in the field",
    )
    driver.find_element(By.CSS_SELECTOR, "#ingest-btn").click()
    results = wait_for(
        driver,
        lambda d: "added" in text_of(d, "#upload-results") and text_of(d, "#upload-results"),
        "the ingest result",
    )
    assert "sample_rules.pdf" in results and "facts" in results
    wait_for(driver, lambda d: "sample_rules.pdf" in text_of(d, "#documents"), "the document in the table")
    screenshot(driver, "documents")

    open_tab(driver, "Ledger")
    wait_for(driver, lambda d: "元" in text_of(d, "#facts-table"), "the document's facts")
    cells = wait_for(
        driver,
        lambda d: [
            c
            for c in d.find_elements(By.CSS_SELECTOR, "#facts-table [role=gridcell][data-row='0']")
            if c.is_displayed() and c.text.strip()
        ],
        "a visible cell of the facts table",
    )
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cells[0])
    cells[0].click()  # the first fact's value
    mark = wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#fact-html mark.fact-number"),
        "the highlighted number",
    )[0]
    detail = text_of(driver, "#fact-html")
    assert mark.text and mark.text in detail
    assert "sample_rules.pdf ›" in detail and "page " in detail
    screenshot(driver, "ledger")

    # Pipeline: the build-dataset flow (auto review, extractive teacher) in a child process, watched live.
    stop_later(lambda: stop_run(settings))
    open_tab(driver, "Pipeline")
    auto = wait_for(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#review-policy input[value='auto']"), "the policy"
    )[0]
    driver.execute_script("arguments[0].click();", auto)
    driver.find_element(By.CSS_SELECTOR, "#start-run").click()
    seen: set[str] = set()
    running_lines: set[str] = set()

    def finished(d: Any) -> bool:
        state = text_of(d, "#run-state")
        seen.update(w for w in ("running", "finished", "failed") if w in state)
        if "running for" in state:
            running_lines.add(state)
        return "finished" in state or "failed" in state

    wait_for(driver, finished, "the build-dataset run to end", timeout=400)
    assert "running" in seen, "no live progress was shown before the run ended"
    # The view ticks while the run runs: its elapsed time advanced at least once on the page.
    assert len(running_lines) >= 2, running_lines
    assert "finished" in text_of(driver, "#run-state"), text_of(driver, "#run-log")
    stages = text_of(driver, "#stages")
    assert "gate release" in stages and "failed" not in stages
    screenshot(driver, "pipeline")

    open_tab(driver, "Rows and datasets")
    wait_for(driver, lambda d: "numeric share" in text_of(d, "#rows-summary"), "the rows summary")
    wait_for(
        driver, lambda d: "ds-" in text_of(d, "#datasets") or "%" in text_of(d, "#datasets"), "a dataset"
    )
    dataset = text_of(driver, "#datasets [data-testid='cell-0-0']").strip()
    assert dataset
    driver.find_element(By.CSS_SELECTOR, "#dataset-id textarea, #dataset-id input").send_keys(dataset)
    driver.find_element(By.CSS_SELECTOR, "#dataset-download").click()
    links = wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#dataset-files a[data-testid=download-link]"),
        "the dataset's JSONL files",
    )
    names = [
        e.get_attribute("aria-label")
        for e in driver.find_elements(By.CSS_SELECTOR, "#dataset-files td.filename")
    ]
    assert f"{dataset}-train.jsonl" in names and len(links) == len(names) == 2
    screenshot(driver, "rows")
    if SCREENSHOTS:
        open_tab(driver, "Models")
        screenshot(driver, "models")

    open_tab(driver, "Ask")
    box = wait_for(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#question textarea"), "the question box"
    )[0]
    box.send_keys(QUESTION)
    driver.find_element(By.CSS_SELECTOR, "#ask-btn").click()
    verdict = wait_for(
        driver,
        lambda d: "source:" in text_of(d, "#verdict") and text_of(d, "#verdict"),
        "the guard's verdict",
    )
    assert "sample_rules.pdf" in verdict
    assert "guard: passed" in verdict or "guard: retried_ok" in verdict or "guard: quoted_evidence" in verdict
    answer = text_of(driver, "#chat")
    assert "400" in answer, answer

    # A number the model invents never reaches the page: the guard quotes the rule or abstains.
    box.send_keys(INVENTING)
    driver.find_element(By.CSS_SELECTOR, "#ask-btn").click()
    verdict = wait_for(
        driver,
        lambda d: (
            INVENTING in text_of(d, "#chat")
            and "guard:" in text_of(d, "#verdict")
            and "answering" not in text_of(d, "#verdict")
            and text_of(d, "#verdict")
        ),
        "the second verdict",
    )
    assert "guard: passed" not in verdict, verdict
    assert INVENTED not in text_of(driver, "body")
    screenshot(driver, "ask")

    if SCREENSHOTS:
        open_tab(driver, "Settings")
        wait_for(driver, lambda d: "gemini" in d.find_element(By.TAG_NAME, "body").text, "the keys table")
        screenshot(driver, "settings")


# ---------------------------------------------------------------------------------------------------------
# Hostile uploads, without a browser


def test_hostile_uploads_are_refused_or_failed_with_nothing_half_stored(
    settings: Settings, tmp_path: Path
) -> None:
    from warehouse import ledger
    from warehouse.db import open_warehouse
    from webapp.ui import ingest_uploads

    small = load_settings(settings.workspace, max_file_mb=0.5)
    fake_pdf = tmp_path / "fake.pdf"
    fake_pdf.write_bytes(b"\x7fELF not a pdf at all" * 10)
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (600 * 1024))
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ")
    results = ingest_uploads(
        small,
        [
            ("../../etc/passwd.md", str(SAMPLE_PDF)),
            ("..\\evil.pdf", str(SAMPLE_PDF)),
            ("tool.exe", str(exe)),
            ("big.txt", str(big)),
            ("fake.pdf", str(fake_pdf)),
            ("sample_rules.pdf", str(SAMPLE_PDF)),
        ],
    )
    by_name = {r.name: r for r in results}
    assert by_name["../../etc/passwd.md"].status == "refused"
    assert "path traversal" in by_name["../../etc/passwd.md"].message
    assert by_name["..\\evil.pdf"].status == "refused"
    assert by_name["tool.exe"].status == "refused" and "not a rule document" in by_name["tool.exe"].message
    assert by_name["big.txt"].status == "refused" and "file too large" in by_name["big.txt"].message
    assert by_name["fake.pdf"].status == "failed"
    assert by_name["sample_rules.pdf"].status == "added" and by_name["sample_rules.pdf"].facts > 0
    uploads = sorted(p.name for p in (small.workspace / "uploads").rglob("*") if p.is_file())
    assert uploads == ["sample_rules.pdf"]  # nothing but the good file is kept
    assert not (small.workspace.parent / "etc").exists()
    with open_warehouse(small.warehouse_path, read_only=True) as con:
        docs = {d["name"]: d for d in ledger.list_documents(con)}
    assert set(docs) == {"fake.pdf", "sample_rules.pdf"}
    assert (
        docs["fake.pdf"]["status"] == "failed"
        and docs["fake.pdf"]["chunks"] == 0
        and docs["fake.pdf"]["facts"] == 0
    )
    again = ingest_uploads(small, [("sample_rules.pdf", str(SAMPLE_PDF))])
    assert again[0].status == "unchanged" and "already ingested" in again[0].message


def test_stages_follow_the_flow_log() -> None:
    from webapp.ui import stages

    log = (
        "12:00:00.000 | INFO | Task run 'ingest-a1b' - Finished in state Completed()\n"
        "12:00:01.000 | INFO | Task run 'distill-c2d' - Finished in state Completed()\n"
    )
    shown = dict(stages(log, "build-dataset", running=True, exit_code=None))
    assert shown["ingest"] == "done" and shown["distil"] == "done"
    assert shown["gate pre_review"] == "running" and shown["gate release"] == "waiting"
    paused = log + (
        "12:00:02.000 | INFO | Task run 'quality-gate-e3f' - Finished in state Completed()\n"
        "12:00:03.000 | INFO | Task run 'push-review-batch-a0a' - Finished in state Completed()\n"
        "12:00:03.100 | INFO | Flow run 'x' - Pausing flow, execution will continue when this flow run is resumed.\n"
    )
    shown = dict(stages(paused, "pipeline", running=True, exit_code=None))
    assert shown["review"] == "done" and shown["sync review"] == "paused for review"
    assert shown["train"] == "waiting"
    log += "12:00:02.000 | INFO | Task run 'quality-gate-e3f' - Finished in state Failed('boom')\n"
    shown = dict(stages(log, "build-dataset", running=False, exit_code=1))
    assert shown["gate pre_review"] == "failed" and shown["review"] == "waiting"


def test_models_show_both_score_families_and_forced_promotion(settings: Settings) -> None:
    from warehouse.db import open_warehouse
    from warehouse.evaluation import save_eval_run
    from warehouse.models import register_model
    from webapp.ui import force_promote_model, models_view

    families = {
        "model": {"accuracy": 0.25, "numeric_accuracy": 0.2, "invented_number_rate": 0.1},
        "shown": {"accuracy": 0.75, "numeric_accuracy": 0.7, "invented_number_rate": 0.0},
    }
    with open_warehouse(settings.warehouse_path) as con:
        register_model(con, "m-challenger-1", "challenger", "gemma3-270m", note="refused: numeric worse")
        for mode in ("grounded", "closed_book"):
            save_eval_run(
                con,
                {
                    "eval_run_id": f"run-{mode}",
                    "model_label": "challenger",
                    "model_id": "m-challenger-1",
                    "mode": mode,
                    "source": "golden",
                    "n": 40,
                    "metrics": families,
                },
                [],
            )
    frame, head = models_view(settings)
    assert "No champion yet" in head
    assert set(frame["family"]) == {"model", "shown"} and set(frame["mode"]) == {"grounded", "closed_book"}
    shown = frame[(frame["mode"] == "grounded") & (frame["family"] == "shown")].iloc[0]
    assert shown["accuracy"] == "0.75" and shown["note"] == "refused: numeric worse"
    assert force_promote_model(settings, "m-chall", "", True).startswith("Refused")
    assert force_promote_model(settings, "m-chall", "board decision", False).startswith("Refused")
    assert "is champion" in force_promote_model(settings, "m-chall", "board decision", True)
    frame, head = models_view(settings)
    assert "Champion: `m-challenger-1`" in head and "board decision" in head


class StreamingModel:
    """A planted model that streams its answer in pieces through ``stream_to``, as llama.cpp's does."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.stream_to: Callable[[str], None] | None = None

    def __call__(self, messages: list[dict[str, str]], max_tokens: int, grammar: Any = None) -> str:
        sink, self.stream_to = self.stream_to, None
        for piece in self.pieces:
            if sink:
                sink(piece)
        return "".join(self.pieces)


@pytest.mark.parametrize(
    ("pieces", "number_shown"),
    [
        (["讲师属于其他人员，", "住宿费每人每天不超过", "400", "元。"], "400"),
        (["讲师住宿费", "每人每天", "987", "元。"], None),  # invented: never streamed, never shown
    ],
)
def test_ask_streams_only_up_to_the_first_number(
    settings: Settings, pieces: list[str], number_shown: str | None
) -> None:
    from webapp.ui import Answering, ingest_uploads, question_problem, verdict_markdown

    assert ingest_uploads(settings, [("sample_rules.pdf", str(SAMPLE_PDF))])[0].status == "added"
    streamed: list[str] = []
    result, _ = Answering(settings, StreamingModel(pieces)).ask(QUESTION, "champion", False, streamed.append)
    assert streamed and not any(ch.isdigit() for ch in "".join(streamed))  # nothing unchecked on screen
    verdict = verdict_markdown(result)
    assert "rules.pdf" in verdict and "guard:" in verdict
    if number_shown:
        assert result.guard_action == "passed" and number_shown in result.text
    else:
        assert "987" not in result.text and result.guard_action != "passed"
    assert question_problem("  ") and question_problem("问" * 5000) and not question_problem(QUESTION)


def test_settings_say_set_or_missing_never_the_key(settings: Settings) -> None:
    from webapp.ui import keys_view, servers_view, settings_json

    secret = "AIzaSy-do-not-show-me"
    cfg = load_settings(settings.workspace, gemini_api_keys=f"{secret},second-{secret}")
    keys = keys_view(cfg)
    states = dict(zip(keys["teacher"], keys["state"], strict=True))
    assert states["gemini"] == "set (2 keys)" and states["openai"] == "missing"
    shown = keys.to_string() + servers_view(cfg).to_string() + json.dumps(settings_json(cfg), default=str)
    assert secret not in shown
    assert set(servers_view(cfg)["state"]) <= {"running", "stopped", "none"}


def test_a_selected_fact_is_found_by_its_row_even_when_sorted(settings: Settings) -> None:
    from webapp.ui import document_facts, facts_frame, highlighted, ingest_uploads, selected_fact

    ingest_uploads(settings, [("sample_rules.pdf", str(SAMPLE_PDF))])
    facts = document_facts(settings, "sample_rules.pdf")
    frame = facts_frame(facts)
    last = len(facts) - 1
    assert selected_fact(facts, [0, 2], list(frame.iloc[last])) is facts[last]  # sorted in the browser
    assert selected_fact(facts, [1, 0], None) is facts[1]
    assert selected_fact(facts, [len(facts) + 5, 0], None) is None
    page = highlighted({**facts[0], "context": "<script>alert(1)</script> 3个月", "raw": "3个月"})
    assert "<script>" not in page and "&lt;script&gt;" in page and ">3个月</mark>" in page
    assert all(f["page"] != "-" for f in facts)
