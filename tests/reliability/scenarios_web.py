"""Hostile uploads and requests against the web app (issue #18, "bad input"): a clear message, nothing stored
half-way, the app keeps serving.

* :func:`hostile_uploads` feeds files to ``webapp.ui.ingest_uploads`` (what the Documents tab calls with the
  browser's file names and Gradio's temporary copies; no browser needed): files that are not documents, one
  over ``max_file_mb``, zip bombs named ``.pdf``/``.docx``/``.md``, path-traversal and absolute names, empty
  files. Each is refused (nothing stored) or recorded as failed (one ``failed`` document row, nothing else),
  with one line naming the file and the problem; no file appears anywhere in the work folder but the good
  uploads in ``<workspace>/uploads/``; a bomb is never expanded (peak memory, time); good files uploaded
  around them land whole.
* :func:`hostile_requests` sends bad requests to the guarded endpoint (the real app under uvicorn on a free
  127.0.0.1 port, a planted scripted model): empty and 100 kB questions, malformed JSON, wrong field types,
  bodies over the limit (announced and chunked), clients that leave mid-stream and a burst beyond the queue
  limit. Each gets its documented status (400, 413, 503 with Retry-After) and an OpenAI-shaped error body,
  nothing bad reaches the model, and afterwards normal questions are answered (streamed and not).

How the counters are used: ``faults``: one per hostile file or request, by kind; ``runs_completed``: those
that ended as documented; ``rows_lost``: rows of the good documents gone, plus rows a refused or failed file
left behind; ``duplicates``: rows added by uploading the same good file again; ``problems``: what did not
hold. ``details`` (of :class:`WebOutcome`): one line per file or request saying what it got, which
``bench/faults.py`` prints under the scenario.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import Settings, load_settings
from tests.reliability.hostile import RULE, RULE_2, _bytes, _sparse, pdf_bytes
from tests.reliability.outcome import FaultOutcome
from tests.reliability.scenarios_hostile import run_bounded

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PDF = ROOT / "examples" / "sample_rules.pdf"
UPLOAD_LIMIT_MB = 1.0  # max_file_mb of the upload scenario: small, so "too large" costs no disk
UPLOAD_TIMEOUT_S = 60.0  # one hostile file; the good ones take a second or two
BOMB_EXPANDED = 1 << 30  # a zip bomb's member expands to 1 GiB (its archive is about 1 MB)
BOMB_GROWTH_LIMIT = 256 << 20  # peak memory may grow this much while the bombs are handled, not 1 GiB
QUEUE_LIMIT = 4  # the endpoint's max_waiting in the request scenario (64 by default)
BURST = 12  # concurrent non-streaming requests of the burst (plus BURST_STREAMS streamed ones)
BURST_STREAMS = 4
TABLES = ("documents", "pages", "chunks", "facts")
MORE_RULES = "第三条 会议费每人每天不超过550元，培训费每人每天不超过450元。"


@dataclass
class WebOutcome(FaultOutcome):
    """A :class:`FaultOutcome` with one line per hostile file or request: what it got."""

    details: list[str] = field(default_factory=list)

    def case_checked(self, label: str, failures: list[str]) -> None:
        """One hostile file or request checked: its failures as one problem line, or one run completed."""
        if failures:
            self.problems.append(f"{label}: " + "; ".join(failures))
        else:
            self.runs_completed += 1


# ---------------------------------------------------------------------------------------------------------
# uploads


def zip_bomb(path: Path, member: str = "word/document.xml", expanded: int = BOMB_EXPANDED) -> None:
    """A .docx-like archive at ``path`` whose ``member`` inflates to ``expanded`` bytes of spaces (about a
    thousandth of that on disk), written in pieces (never held in memory)."""
    block = b" " * (1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open(member, "w") as out:
            for _ in range(expanded // len(block)):
                out.write(block)


def lying_sizes(data: bytes, member: str = "word/document.xml", size: int = 1000) -> bytes:
    """``data`` (a zip) with ``member``'s uncompressed size declared as ``size`` in its local and central
    headers: a check of the declared sizes passes; inflating it would still give the whole bomb."""
    raw, name = bytearray(data), member.encode()
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        at = raw.find(signature)
        while at >= 0 and raw[at + name_at : at + name_at + len(name)] != name:
            at = raw.find(signature, at + 1)
        if at < 0:
            raise ValueError(f"{member} not found in the archive")
        raw[at + size_at : at + size_at + 4] = struct.pack("<I", size)
    return bytes(raw)


@dataclass(frozen=True)
class Upload:
    """One hostile upload: the browser's file name, what its temporary copy holds, what must happen."""

    name: str  # as the browser gives it
    kind: str  # the fault kind
    expect: tuple[str, ...]  # refused (nothing stored) | failed (one failed document row, nothing else)
    write: Callable[[Path], None]  # writes the temporary copy
    reason: tuple[str, ...]  # one of these is part of the one-line message


def _noise(size: int, head: bytes = b"") -> Callable[[], bytes]:
    return lambda: head + random.Random(18).randbytes(size)


def uploads(work: Path, bomb: Path) -> list[Upload]:
    """The hostile uploads; ``bomb`` is a zip bomb written once (each upload copies it)."""
    refused, failed, either = ("refused",), ("failed",), ("refused", "failed")
    not_document, traversal = ("not a rule document",), ("path traversal",)
    # A .docx is refused by its name where Word files are not read, else refused unopened by its unpacked size
    # (or, when the archive lies about that size, fails as corrupt without being inflated).
    bomb_docx = ("not a rule document", "zip bomb", "corrupt")
    rule, rule_pdf = _bytes(RULE.encode()), _bytes(lambda: pdf_bytes([RULE]))
    bombed: Callable[[], bytes] = bomb.read_bytes
    too_large = int(UPLOAD_LIMIT_MB * 1024 * 1024) + 1
    return [
        Upload("setup.exe", "not_a_document", refused, _bytes(_noise(4096, b"MZ\x90\x00")), not_document),
        Upload("archive.zip", "not_a_document", refused, _bytes(bombed), not_document),
        Upload("random.pdf", "not_a_document", failed, _bytes(_noise(65536)), ("not a PDF",)),
        Upload("noise.pdf", "not_a_document", failed, _bytes(_noise(65536, b"%PDF-1.7\n")), ("corrupt PDF",)),
        Upload("random.md", "not_a_document", failed, _bytes(_noise(8192)), ("binary file",)),
        Upload("too-large.pdf", "too_large", refused, _sparse(3 * too_large), ("file too large",)),
        Upload("too-large.txt", "too_large", refused, _sparse(too_large), ("file too large",)),
        Upload("bomb.docx", "zip_bomb", either, _bytes(bombed), bomb_docx),
        Upload("bomb-lying.docx", "zip_bomb", either, _bytes(lambda: lying_sizes(bombed())), bomb_docx),
        Upload("bomb.pdf", "zip_bomb", failed, _bytes(bombed), ("not a PDF",)),
        Upload("bomb.md", "zip_bomb", failed, _bytes(bombed), ("binary file",)),
        Upload("../../etc/passwd.md", "path_traversal", refused, rule, traversal),
        Upload("..\\..\\evil.pdf", "path_traversal", refused, rule_pdf, traversal),
        Upload("uploads/../../evil.md", "path_traversal", refused, rule, traversal),
        Upload(str(work / "outside" / "absolute.md"), "path_traversal", refused, rule, traversal),
        Upload("C:\\Windows\\evil.pdf", "path_traversal", refused, rule_pdf, traversal),
        Upload("..", "path_traversal", refused, rule, traversal),
        Upload("evil.md\x00.pdf", "path_traversal", refused, rule, ("control characters",)),
        Upload(".hidden.md", "path_traversal", refused, rule, ("hidden file",)),
        Upload("", "path_traversal", refused, rule, ("no name",)),
        Upload("empty.pdf", "empty", failed, _bytes(b""), ("empty file",)),
        Upload("empty.md", "empty", failed, _bytes(b""), ("empty file",)),
        Upload("blank.txt", "empty", failed, _bytes(b" \n\t\n"), ("empty file",)),
    ]


def _files(folder: Path, skip: tuple[Path, ...]) -> set[str]:
    """Every file under ``folder`` (relative paths), except under ``skip``."""
    found = set()
    for path in folder.rglob("*"):
        if path.is_dir() or any(path == s or s in path.parents for s in skip):
            continue
        found.add(str(path.relative_to(folder)))
    return found


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def hostile_uploads(work: Path) -> WebOutcome:
    from warehouse import ledger
    from warehouse.db import open_warehouse
    from webapp.ui import UPLOADS, documents_table, ingest_uploads

    outcome = WebOutcome(
        "hostile uploads through the Documents tab's ingest_uploads: refused or failed, one line naming the"
        " file, nothing half-stored, no file outside uploads/, bombs not expanded"
    )
    problems, details = outcome.problems, outcome.details
    settings = load_settings(
        work / "ws", max_file_mb=UPLOAD_LIMIT_MB, max_pages=1000, min_text_chars_per_page=20
    )
    incoming = work / "incoming"  # Gradio's temporary copies
    incoming.mkdir(parents=True)

    def counts() -> dict[str, int]:
        with open_warehouse(settings.warehouse_path, read_only=True) as con:
            return ledger.table_counts(con)

    def upload(name: str, write: Callable[[Path], None]) -> tuple[Any, BaseException | None, bool]:
        temp = incoming / f"{len(list(incoming.iterdir()))}.upload"
        write(temp)
        return run_bounded(lambda: ingest_uploads(settings, [(name, temp)]), UPLOAD_TIMEOUT_S)

    def stored() -> set[str]:
        warehouse = settings.warehouse_path
        return _files(work, (incoming, *warehouse.parent.glob(warehouse.name + "*")))

    # A good document first: the hostile files must take nothing of it away.
    good_text = f"# 规定\n{RULE}\n{RULE_2}\n"
    (result,), error, _ = upload("rules.md", _bytes(good_text.encode()))
    if error is not None or result.status != "added" or result.facts < 3:
        problems.append(f"the good document was not added: {error or result}")
        return outcome
    good = counts()
    kept = stored()
    details.append(f"rules.md: added ({result.facts} facts)")

    bomb = incoming / "bomb.zip"
    zip_bomb(bomb)
    rss_before = _peak_rss()
    for case in uploads(work, bomb):
        outcome.add_fault(case.kind)
        before, files_before = counts(), stored()
        value, error, finished = upload(case.name, case.write)
        label = repr(case.name)
        if not finished:
            problems.append(f"{label}: no answer after {UPLOAD_TIMEOUT_S:.0f} s (hang)")
            continue
        if error is not None:
            problems.append(f"{label}: raised {type(error).__name__}: {error}")
            continue
        [result] = value
        after, files_after = counts(), stored()
        message = result.message
        details.append(f"{label}: {result.status}: {message}")
        bad = []
        if result.status not in case.expect:
            bad.append(f"expected {' or '.join(case.expect)}, got {result.status}")
        if "\n" in message or "\r" in message or not message.startswith(f"{result.name}: "):
            bad.append(f"the message is not one line naming the file: {message!r}")
        if not any(reason in message for reason in case.reason):
            bad.append(f"none of {case.reason} in the message {message!r}")
        grown = {t: after[t] - before[t] for t in TABLES if after[t] != before[t]}
        allowed = {"documents": 1} if result.status == "failed" else {}
        if grown != allowed and grown:
            bad.append(f"rows left behind: {grown}")
            outcome.rows_lost += sum(v for t, v in grown.items() if t != "documents" or v > 1)
        if files_after != files_before:
            bad.append(f"files written: {sorted(files_after - files_before)}")
        outcome.case_checked(label, bad)
    growth = _peak_rss() - rss_before
    if growth > BOMB_GROWTH_LIMIT:
        problems.append(
            f"peak memory grew by {growth >> 20} MiB over the hostile uploads: a bomb was expanded"
        )
    details.append(f"peak memory growth over the hostile uploads: {growth >> 20} MiB")
    for path in (
        work / "outside",
        work / "etc",
        work / "evil.md",
        work / "ws" / "etc",
        work.parent / "evil.md",
    ):
        if path.exists():
            problems.append(f"{path} exists: a name was used as a path")

    # The good document is whole, the same file again adds nothing, and a new one still lands.
    now = counts()
    outcome.rows_lost += sum(max(0, good[t] - now[t]) for t in TABLES if t != "documents")
    (again,), error, _ = upload("rules.md", _bytes(good_text.encode()))
    if error is not None or again.status != "unchanged":
        problems.append(f"the good document uploaded again: {error or again}")
    outcome.duplicates += sum(counts()[t] - now[t] for t in TABLES)
    (second,), error, _ = upload("more-rules.pdf", _bytes(pdf_bytes([MORE_RULES])))
    if error is not None or second.status != "added" or second.facts < 1:
        problems.append(f"a good upload after the hostile ones was not added: {error or second}")
    else:
        outcome.runs_completed += 1
        details.append(f"more-rules.pdf (after them): added ({second.facts} facts)")
    uploaded = {p for p in stored() - kept if not p.startswith(f"ws/{UPLOADS}/")}
    if uploaded:
        problems.append(f"files outside the uploads folder: {sorted(uploaded)}")
    kept_uploads = sorted(Path(p).name for p in stored() if p.startswith(f"ws/{UPLOADS}/"))
    if kept_uploads != ["more-rules.pdf", "rules.md"]:
        problems.append(f"the uploads folder holds {kept_uploads}, not just the two good documents")
    names = set(documents_table(settings)["document"])
    if not {"rules.md", "more-rules.pdf"} <= names:
        problems.append(f"the Documents table does not list the good documents: {sorted(names)}")
    outcome.notes = "\n".join(problems)
    return outcome


# ---------------------------------------------------------------------------------------------------------
# requests


def _error_shape(body: Any) -> str:
    """What is wrong with an OpenAI error body ("" when nothing)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"not an OpenAI error body: {str(body)[:120]}"
    if not (isinstance(error.get("message"), str) and error["message"].strip()):
        return "the error has no message"
    if error.get("type") not in ("invalid_request_error", "server_error", "authentication_error"):
        return f"unknown error type {error.get('type')!r}"
    if not isinstance(error.get("code"), str) or "param" not in error:
        return "the error lacks code or param"
    return ""


def _chunked(size: int) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked): a JSON question of ``size`` bytes."""
    yield b'{"messages": [{"role": "user", "content": "'
    piece = b"x" * 65536
    for _ in range(size // len(piece)):
        yield piece
    yield b'"}]}'


def _user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def bad_requests() -> list[tuple[str, str, Any, int, str]]:
    """(label, fault kind, body, status, code): bodies as bytes (sent as is), an iterator (chunked) or JSON."""
    big = "会" * 34_000  # 102 kB of UTF-8
    return [
        ("empty question", "empty_question", _user(""), 400, "empty_question"),
        ("blank question, streamed", "empty_question", _user(" \n\t", stream=True), 400, "empty_question"),
        (
            "empty text parts",
            "empty_question",
            _user([{"type": "text", "text": "  "}]),
            400,
            "empty_question",
        ),
        ("100 kB question", "long_question", _user(big), 400, "question_too_long"),
        (
            "100 kB question, streamed",
            "long_question",
            _user("x" * 100_000, stream=True),
            400,
            "question_too_long",
        ),
        (
            "2 MB body",
            "body_too_large",
            b'{"messages": "' + b"x" * 2_000_000 + b'"}',
            413,
            "request_too_large",
        ),
        ("2 MB body, chunked", "body_too_large", _chunked(2_000_000), 413, "request_too_large"),
        ("malformed JSON", "malformed_json", b"{not json", 400, "invalid_json"),
        (
            "truncated JSON",
            "malformed_json",
            b'{"messages": [{"role": "user", "content": "hi',
            400,
            "invalid_json",
        ),
        ("empty body", "malformed_json", b"", 400, "invalid_request"),
        ("not UTF-8", "malformed_json", b"\xff\xfe\x00{", 400, "invalid_json"),
        ("messages a string", "wrong_types", {"messages": "hello"}, 400, "invalid_request"),
        ("messages null", "wrong_types", {"messages": None}, 400, "invalid_request"),
        ("no messages", "wrong_types", {"model": "x"}, 400, "invalid_request"),
        ("messages of numbers", "wrong_types", {"messages": [1, 2]}, 400, "invalid_request"),
        (
            "role a number",
            "wrong_types",
            {"messages": [{"role": 1, "content": "hi"}]},
            400,
            "invalid_request",
        ),
        ("content a number", "wrong_types", _user(5), 400, "invalid_request"),
        ("stream not a bool", "wrong_types", _user("hi", stream="maybe"), 400, "invalid_request"),
        ("model a list", "wrong_types", _user("hi", model=["x"]), 400, "invalid_request"),
        ("a JSON list", "wrong_types", [_user("hi")], 400, "invalid_request"),
        ("a JSON string", "wrong_types", "hello", 400, "invalid_request"),
        (
            "no user message",
            "wrong_types",
            {"messages": [{"role": "system", "content": "hi"}]},
            400,
            "invalid_request",
        ),
    ]


def _post(http: Any, body: Any) -> Any:
    headers = {"content-type": "application/json"}
    if isinstance(body, bytes):
        return http.post("/v1/chat/completions", content=body, headers=headers)
    if isinstance(body, Iterator):
        return http.post("/v1/chat/completions", content=body, headers=headers)
    return http.post("/v1/chat/completions", content=json.dumps(body).encode(), headers=headers)


def _normal(http: Any, stream: bool) -> str:
    """A normal question, streamed or not: "" when it was answered right, else what went wrong."""
    from tests.web_serving import MEAL, RIGHT

    body = _user(MEAL, stream=stream)
    if not stream:
        response = http.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return f"a normal question got {response.status_code}: {response.text[:200]}"
        reply = response.json()
        text = reply["choices"][0]["message"]["content"]
        sources = reply.get("slm", {}).get("sources") or []
        if text != RIGHT or not sources:
            return f"a normal question was answered {text!r} with {len(sources)} sources"
        return ""
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return f"a normal streamed question got {response.status_code}"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"a normal streamed answer did not end with [DONE]: {events[-2:]}"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    return "" if text == RIGHT else f"a normal streamed question was answered {text!r}"


def _wait_idle(http: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http.get("/health").json()["waiting"] == 0:
            return True
        time.sleep(0.05)
    return False


def hostile_requests(work: Path) -> WebOutcome:
    import httpx

    from tests.web_serving import MEAL, RIGHT, Planted, sample_workspace, served
    from webapp.server import create_app

    outcome = WebOutcome(
        "hostile requests to the guarded endpoint (uvicorn on 127.0.0.1): 400/413/503 with an OpenAI error,"
        " nothing bad reaches the model, clients leaving mid-stream and a burst, then normal answers"
    )
    problems, details = outcome.problems, outcome.details
    settings: Settings = sample_workspace(work, SAMPLE_PDF)
    planted = Planted(RIGHT)
    app = create_app(settings, generator=planted, model_name="planted", with_ui=False)
    app.state.answerer.max_waiting = QUEUE_LIMIT
    with served(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        problem = _normal(http, stream=False)
        if problem:
            problems.append(f"before the hostile requests: {problem}")
            return outcome
        calls = planted.calls

        for label, kind, body, status, code in bad_requests():
            outcome.add_fault(kind)
            try:
                response = _post(http, body)
            except httpx.HTTPError as exc:
                problems.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            try:
                error = response.json()
            except ValueError:
                error = response.text
            got = (error.get("error") or {}).get("code") if isinstance(error, dict) else None
            details.append(f"{label}: {response.status_code} {got}")
            bad = []
            if response.status_code != status:
                bad.append(f"status {response.status_code}, not {status}")
            shape = _error_shape(error)
            if shape:
                bad.append(shape)
            elif got != code:
                bad.append(f"code {got!r}, not {code!r}")
            outcome.case_checked(label, bad)
        if planted.calls != calls:
            problems.append(f"{planted.calls - calls} bad requests reached the model")

        # Clients that leave: one after the first event, three while their questions wait in the queue.
        planted.delay_s = 0.5
        body = _user(MEAL, stream=True)
        outcome.add_fault("client_left")
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            first = next(response.iter_lines())
        left = ["after the first event" if first.startswith("data: ") else f"first line {first!r}"]
        for _ in range(3):
            outcome.add_fault("client_left")
            try:
                with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=0.2) as response:
                    response.read()
                left.append("stayed to the end")
            except httpx.ReadTimeout:
                left.append("left while queued")
        details.append("clients leaving mid-stream: " + ", ".join(left))
        if not _wait_idle(http):
            problems.append("questions of clients that left still wait after 30 s")
        else:
            problem = _normal(http, stream=True)
            if problem:
                problems.append(f"after clients left mid-stream: {problem}")
            else:
                outcome.runs_completed += 4

        # A burst beyond the queue limit: the ones over it get 503 with Retry-After, the rest their answer.
        planted.delay_s = 0.3
        planted.most_at_once = 0
        statuses: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(BURST + BURST_STREAMS)

        def ask(stream: bool) -> None:
            try:
                with httpx.Client(base_url=base, timeout=60) as own:
                    start.wait(timeout=30)
                    if stream:
                        with own.stream("POST", "/v1/chat/completions", json=_user(MEAL, stream=True)) as r:
                            text = "".join(r.iter_lines())
                        busy = '"code": "busy"' in text
                        got = (
                            "stream 503 busy" if busy else ("stream 200" if RIGHT[:6] in text else text[:200])
                        )
                    else:
                        r = own.post("/v1/chat/completions", json=_user(MEAL))
                        if r.status_code == 503:
                            shape = _error_shape(r.json())
                            retry = r.headers.get("retry-after")
                            got = (
                                "503 busy"
                                if not shape and retry and r.json()["error"]["code"] == "busy"
                                else (f"503 {shape or 'without Retry-After'}")
                            )
                        elif r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == RIGHT:
                            got = "200"
                        else:
                            got = f"{r.status_code} {r.text[:200]}"
            except Exception as exc:  # for the report
                got = f"{type(exc).__name__}: {exc}"
            with lock:
                statuses.append(got)

        threads = [threading.Thread(target=ask, args=(i >= BURST,)) for i in range(BURST + BURST_STREAMS)]
        outcome.add_fault("burst", len(threads))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        tally = {s: statuses.count(s) for s in sorted(set(statuses))}
        details.append(f"burst of {len(threads)} with a queue of {QUEUE_LIMIT}: {tally}")
        odd = [s for s in statuses if s not in ("200", "503 busy", "stream 200", "stream 503 busy")]
        if odd or len(statuses) != len(threads):
            problems.append(f"burst: unexpected results {odd} ({len(statuses)} of {len(threads)} came back)")
        elif not any("503" in s for s in statuses):
            problems.append(f"burst: the queue limit of {QUEUE_LIMIT} did not refuse any of {len(threads)}")
        elif not any(s in ("200", "stream 200") for s in statuses):
            problems.append("burst: no request of the burst was answered")
        else:
            outcome.runs_completed += len(threads)
        if planted.most_at_once > 1:
            problems.append(f"the model ran {planted.most_at_once} answers at once")

        # And afterwards: normal questions, streamed and not; the queue is empty again.
        planted.delay_s = 0.0
        if not _wait_idle(http):
            problems.append("the queue did not empty after the burst")
        for stream in (False, True):
            problem = _normal(http, stream)
            if problem:
                problems.append(f"after everything: {problem}")
            else:
                outcome.runs_completed += 1
        health = http.get("/health").json()
        details.append(
            f"afterwards: normal answers ok; health {health['status']}, waiting {health['waiting']}"
        )
    outcome.notes = "\n".join(problems)
    return outcome


def ui_upload_route(work: Path) -> WebOutcome:
    """The browser's way in: the mounted app's Gradio upload route takes a file up to ``max_file_mb`` (the
    API's 1 MB body limit is the API's, not the UI's), refuses a larger one with a message naming the limit,
    and the API beside it still refuses its own oversize bodies."""
    from fastapi.testclient import TestClient

    from tests.web_serving import Planted
    from webapp.api import MAX_BODY_BYTES
    from webapp.server import create_app, ui_available

    outcome = WebOutcome(
        "uploads through the mounted UI's upload route: up to max_file_mb taken, over it refused with a"
        " clear 413; the API's own body limit still holds beside it"
    )
    problems, details = outcome.problems, outcome.details
    if not ui_available():
        problems.append("gradio or webapp/ui.py is missing: no UI to upload through")
        return outcome
    limit_mb = 2.0
    settings = load_settings(work / "ws", max_file_mb=limit_mb)
    app = create_app(settings, generator=Planted("-"), model_name="planted", with_ui=True)
    under = MAX_BODY_BYTES + 500_000  # over the API's body limit, under max_file_mb
    over = int(limit_mb * 1024 * 1024) + 500_000
    with TestClient(app) as http:
        for name, size, status, words in (
            ("under-limit.txt", under, 200, ""),
            ("over-limit.txt", over, 413, "maximum allowed size"),
        ):
            outcome.add_fault("too_large" if status == 413 else "large_upload")
            data = (RULE + "\n").encode() * (size // len(RULE.encode()) + 1)
            response = http.post("/gradio_api/upload", files={"files": (name, data[:size], "text/plain")})
            details.append(
                f"{name} ({size / 1024 / 1024:.1f} MB, max_file_mb {limit_mb:g}): {response.status_code}"
                f" {response.text[:100]}"
            )
            if response.status_code == 200:  # Gradio's cached copy: not ours to keep
                for cached in map(Path, response.json()):
                    cached.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        cached.parent.rmdir()
            if response.status_code != status or words not in response.text:
                problems.append(f"{name}: {response.status_code}, not {status}: {response.text[:200]}")
            else:
                outcome.runs_completed += 1
        outcome.add_fault("body_too_large", 2)
        big = b'{"messages": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'
        for label, body in (("announced", big), ("chunked", iter([big[:65536], big[65536:]]))):
            response = http.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            code = response.json().get("error", {}).get("code") if response.status_code == 413 else None
            details.append(f"/v1 body over the limit, {label}: {response.status_code} {code}")
            if response.status_code != 413 or code != "request_too_large":
                problems.append(
                    f"/v1 body over the limit, {label}: {response.status_code} {response.text[:200]}"
                )
            else:
                outcome.runs_completed += 1
        page, health = http.get("/"), http.get("/health")
        if page.status_code != 200 or health.json().get("status") != "ok":
            problems.append(
                f"afterwards the app serves / with {page.status_code}, /health {health.text[:100]}"
            )
    outcome.notes = "\n".join(problems)
    return outcome


SCENARIOS = [hostile_uploads, hostile_requests, ui_upload_route]
