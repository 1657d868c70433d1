"""The guarded OpenAI-compatible endpoint (webapp): the real app under uvicorn on 127.0.0.1, a workspace with
the bundled sample PDF ingested, and planted models; clients are the ``openai`` package and raw httpx.

A planted model that invents a number never gets it to the client, streamed or not (not in the text, not
in the extra field, not anywhere in the bytes sent); a right answer passes with its sources; bad requests get
clear 400s; a client that goes away mid-stream leaves the server serving; off loopback a token is required.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.config import Settings
from runtime.netbind import RemoteBindRefused
from tests.conftest import SAMPLE_PDF, require_or_skip
from tests.web_serving import INVENTED, MEAL, RIGHT, Planted, sample_workspace, served

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


def leaks(text: str) -> bool:
    """Whether ``text`` (a body, a stream) carries the invented number (as written, or as a value): not just
    the digits, which a timestamp or an id may contain by chance."""
    return any(s in text for s in ("999元", '"999"', "999 元", "每天999"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return sample_workspace(tmp_path_factory.mktemp("guarded"), SAMPLE_PDF)


Start = Callable[..., tuple[str, Planted]]


@pytest.fixture
def start(workspace: Settings, stop_later: Callable[[Callable[[], Any]], None]) -> Start:
    """``start(reply, delay_s=0) -> (base_url, planted)``: the app with a planted model under uvicorn on a free
    loopback port, in a thread, stopped when the test ends."""

    def run(reply: str, delay_s: float = 0.0) -> tuple[str, Planted]:
        from webapp.server import create_app

        planted = Planted(reply, delay_s)
        app = create_app(workspace, generator=planted, model_name="planted", with_ui=False)
        serving = served(app)
        base = serving.__enter__()  # a start that fails stops what it started itself
        stop_later(lambda: serving.__exit__(None, None, None))
        return base, planted

    return run


def client(base: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def raw_stream(base: str, question: str) -> str:
    """Every byte the server sends for a streamed question, as text."""
    body = {"model": "planted", "stream": True, "messages": [{"role": "user", "content": question}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return "".join(response.iter_text())


def test_an_invented_number_never_reaches_the_client(start: Start) -> None:
    base, planted = start(INVENTED)
    openai_client = client(base)
    reply = openai_client.chat.completions.create(
        model="planted", messages=[{"role": "user", "content": MEAL}]
    )
    text = reply.choices[0].message.content
    assert "999" not in text and "100元" in text
    extra = reply.model_extra["slm"]
    assert extra["guard_action"] == "quoted_evidence" and extra["verified"] and extra["draft_replaced"]
    assert extra["numbers"] == ["100"] and "999" not in json.dumps(extra, ensure_ascii=False)
    assert extra["sources"][0]["document"] == "sample_rules.pdf"
    assert extra["sources"][0]["article"] == "第十八条" and isinstance(extra["sources"][0]["page"], int)
    assert planted.calls == 2  # the draft and the guard's retry, both with 999: neither is shown

    raw = httpx.post(
        f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": MEAL}]}, timeout=60
    )
    assert raw.status_code == 200 and not leaks(raw.text)

    streamed = openai_client.chat.completions.create(
        model="planted", messages=[{"role": "user", "content": MEAL}], stream=True
    )
    chunks = list(streamed)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["slm"]["guard_action"] == "quoted_evidence"
    everything = raw_stream(base, MEAL)
    assert not leaks(everything) and everything.rstrip().endswith("data: [DONE]")


def test_a_right_answer_passes_with_its_sources(start: Start) -> None:
    base, _ = start(RIGHT)
    reply = client(base).chat.completions.create(
        model="anything",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "会议费怎么报？"},
            {"role": "assistant", "content": "…"},
            {"role": "user", "content": [{"type": "text", "text": MEAL}]},  # content parts work too
        ],
    )
    assert reply.choices[0].message.content == RIGHT and reply.model == "planted"
    extra = reply.model_extra["slm"]
    assert extra["guard_action"] == "passed" and not extra["draft_replaced"] and extra["numbers"] == ["100"]
    source = extra["sources"][0]
    assert source["document"] == "sample_rules.pdf" and source["article"] == "第十八条"
    assert "100" in source["sentence"] and source["page"] >= 1 and "第十八条" in source["article_path"]

    stream = client(base).chat.completions.create(
        model="planted", messages=[{"role": "user", "content": MEAL}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == RIGHT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].model_extra["slm"]["sources"] == extra["sources"]


def test_models_lists_the_model_and_health_reports(start: Start) -> None:
    base, _ = start(RIGHT)
    models = client(base).models.list()
    assert [m.id for m in models.data] == ["planted"]
    health = httpx.get(f"{base}/health", timeout=10).json()
    assert health["status"] == "ok" and health["loaded"] and health["model"] == "planted"


def test_bad_requests_get_clear_400s_and_the_server_keeps_serving(start: Start) -> None:
    base, planted = start(RIGHT)
    openai_client = client(base)
    for question, words in (("", "empty"), ("   ", "empty"), ("会" * 100_000, "at most")):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                openai_client.chat.completions.create(
                    model="planted", messages=[{"role": "user", "content": question}], stream=stream
                )
            assert caught.value.status_code == 400 and words in str(caught.value)
    url = f"{base}/v1/chat/completions"
    cases = {
        b"{not json": "not valid JSON",
        b'{"messages": "hello"}': "messages",
        b'{"model": "x"}': "messages",
        b'{"messages": [{"role": "system", "content": "hi"}]}': "no user message",
    }
    for body, words in cases.items():
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert words in error["message"] and error["type"] == "invalid_request_error"
    huge = httpx.post(url, content=b"x" * 2_000_000, headers={"content-type": "application/json"}, timeout=30)
    assert huge.status_code == 413
    assert planted.calls == 0  # nothing bad reached the model
    reply = openai_client.chat.completions.create(
        model="planted", messages=[{"role": "user", "content": MEAL}]
    )
    assert reply.choices[0].message.content == RIGHT


def test_a_client_leaving_mid_stream_leaves_the_server_serving(start: Start) -> None:
    base, _ = start(RIGHT, delay_s=0.5)
    body = {"stream": True, "messages": [{"role": "user", "content": MEAL}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ") and '"role": "assistant"' in first
    # Gone before the answer came; then three that give up while their questions still wait in the queue.
    for _ in range(3):
        with (
            pytest.raises(httpx.ReadTimeout),
            httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=0.2) as response,
        ):
            response.read()
    reply = client(base).chat.completions.create(
        model="planted", messages=[{"role": "user", "content": MEAL}]
    )
    assert reply.choices[0].message.content == RIGHT
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/health", timeout=10).json()["waiting"]:
        assert time.monotonic() < deadline, "questions of clients that left are still waiting"
        time.sleep(0.1)


def test_concurrent_requests_are_answered_one_at_a_time(start: Start) -> None:
    base, planted = start(RIGHT, delay_s=0.05)
    results: list[str] = []

    def ask(stream: bool) -> None:
        openai_client = client(base)
        if stream:
            chunks = openai_client.chat.completions.create(
                model="planted", messages=[{"role": "user", "content": MEAL}], stream=True
            )
            results.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        else:
            reply = openai_client.chat.completions.create(
                model="planted", messages=[{"role": "user", "content": MEAL}]
            )
            results.append(reply.choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [RIGHT] * 8
    assert planted.calls == 8 and planted.most_at_once == 1


def test_off_loopback_a_token_is_required(workspace: Settings, tmp_path: Path) -> None:
    """create_app with a non-loopback bind_host: refused unless allowed; allowed, /v1 wants the workspace's
    token (0600 file), never shown. No public address is bound: the app is driven in-process."""
    from fastapi.testclient import TestClient

    from webapp.auth import token_path
    from webapp.server import create_app

    remote = workspace.model_copy(update={"workspace": tmp_path / "ws", "bind_host": "0.0.0.0"})
    with pytest.raises(RemoteBindRefused):
        create_app(remote, generator=Planted(RIGHT), with_ui=False)
    allowed = workspace.model_copy(update={"bind_host": "0.0.0.0", "allow_remote_bind": True})
    app = create_app(allowed, generator=Planted(RIGHT), model_name="planted", with_ui=False)
    assert app.state.token_required
    path = token_path(allowed)
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text(encoding="utf-8").strip()
    assert len(token) >= 32
    body = {"messages": [{"role": "user", "content": MEAL}]}
    with TestClient(app) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            for response in (
                http.get("/v1/models", headers=headers),
                http.post("/v1/chat/completions", json=body, headers=headers),
            ):
                assert response.status_code == 401
                assert response.headers["www-authenticate"] == "Bearer"
                assert token not in response.text
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get("/v1/models", headers=auth).json()["data"][0]["id"] == "planted"
        reply = http.post("/v1/chat/completions", json=body, headers=auth)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == RIGHT
    # The same token next time; on loopback none is asked for.
    assert create_app(allowed, generator=Planted(RIGHT), with_ui=False) is not None
    assert path.read_text(encoding="utf-8").strip() == token
    local = create_app(workspace, generator=Planted(RIGHT), with_ui=False)
    with TestClient(local) as http:
        assert http.get("/v1/models").status_code == 200
    path.chmod(0o644)
    from webapp.auth import TokenError

    with pytest.raises(TokenError, match="chmod 600"):
        create_app(allowed, generator=Planted(RIGHT), with_ui=False)


def test_no_model_is_a_clear_503(workspace: Settings) -> None:
    from fastapi.testclient import TestClient

    from webapp.server import create_app

    empty = workspace.model_copy(update={"workspace": workspace.workspace.parent / "empty"})
    with TestClient(create_app(empty, with_ui=False)) as http:
        response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": MEAL}]})
    assert response.status_code == 503 and "slm ingest" in response.json()["error"]["message"]


def test_the_ui_mounts_beside_the_api_with_the_one_model(workspace: Settings) -> None:
    """With gradio and webapp/ui.py, the UI is at / and /v1 still answers; its chat gets this app's model."""
    from fastapi.testclient import TestClient

    from webapp.api import SharedModel
    from webapp.server import create_app, ui_available

    if not ui_available():
        require_or_skip("gradio or webapp/ui.py is missing: the app serves the API alone")
    planted = Planted(RIGHT)
    app = create_app(workspace, generator=planted, model_name="planted", with_ui=True)
    assert app.state.ui
    with TestClient(app) as http:
        assert http.get("/v1/models").json()["data"][0]["id"] == "planted"
        page = http.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
    shared = app.state.answerer.shared_model()
    assert isinstance(shared, SharedModel)
    pieces: list[str] = []
    shared.stream_to = pieces.append
    assert shared([{"role": "user", "content": MEAL}], 16) == RIGHT and planted.calls == 1
    assert shared.stream_to is None  # the hook is for one call


def test_slm_serve_answers_through_the_guard_with_a_real_gguf(
    workspace: Settings, tmp_path: Path, stop_later: Callable[[Callable[[], Any]], None]
) -> None:
    """`slm serve` as a user starts it: a tiny exported GGUF in llama.cpp, the openai client, both ways."""
    pytest.importorskip("llama_cpp")
    import os
    import signal
    import subprocess

    from runtime.supervisor import free_port
    from tests.test_cli import slm, slm_command
    from tests.test_export import tiny_llama_gguf

    ws = str(workspace.workspace)
    refused = slm("-w", ws, "serve", "--host", "0.0.0.0", cwd=tmp_path)
    assert refused.returncode == 2 and "refusing to start the web app on 0.0.0.0" in refused.stderr
    no_model = slm("-w", ws, "serve", cwd=tmp_path)
    assert no_model.returncode == 2 and "run `slm export --model base` first" in no_model.stderr

    gguf = tiny_llama_gguf(tmp_path)
    port = free_port()
    command, env = slm_command(
        "-w",
        ws,
        "serve",
        "--model",
        str(gguf),
        "--port",
        str(port),
        "--no-ui",
        env={"SLM_ANSWER_MAX_TOKENS": "8"},
    )
    procs: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    stop_later(stop)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        procs.append(
            subprocess.Popen(
                command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    openai_client = client(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        try:
            models = openai_client.models.list()
            break
        except openai.APIConnectionError:
            assert procs[0].poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "slm serve did not start"
            time.sleep(0.5)
    assert [m.id for m in models.data] == [gguf.stem]
    assert "guarded endpoint: http://127.0.0.1" in log.read_text()
    messages = [{"role": "user", "content": MEAL}]
    reply = openai_client.chat.completions.create(model=gguf.stem, messages=messages)
    extra = reply.model_extra["slm"]
    assert extra["guard_action"] in ("passed", "retried_ok", "quoted_evidence", "abstained")
    assert all(s["document"] == "sample_rules.pdf" for s in extra["sources"])
    chunks = list(openai_client.chat.completions.create(model=gguf.stem, messages=messages, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same guarded answer both ways
    assert chunks[-1].model_extra["slm"]["guard_action"] == extra["guard_action"]


def test_a_full_queue_is_a_clear_503_and_a_dropped_question_is_never_answered(workspace: Settings) -> None:
    from webapp.api import ApiError, GuardedAnswerer

    planted = Planted(RIGHT, delay_s=0.5)
    answerer = GuardedAnswerer(workspace, generator=planted, max_waiting=2)
    try:
        first, second = answerer.submit(MEAL), answerer.submit(MEAL)
        with pytest.raises(ApiError) as caught:
            answerer.submit(MEAL)
        assert caught.value.status == 503 and caught.value.headers["Retry-After"]
        assert "busy" in caught.value.message
        assert second.cancel()  # its client left while it waited: dropped
        assert first.result(timeout=30).text == RIGHT
        deadline = time.monotonic() + 10  # the count drops in the future's done callback, just after
        while answerer.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert planted.calls == 1 and answerer.waiting == 0
        assert answerer.answer(MEAL).guard_action == "passed"  # room again
    finally:
        answerer.close()
