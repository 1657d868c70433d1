"""Security scenarios (issue #10, part 5): servers stay on loopback, the webhook wants its secret, secrets
reach no log, report, artifact, warehouse or exception, and secret files are 0600.

Planted secrets are distinctive strings; every check looks for the whole value and for fragments (the
first and last 12 characters, and the masked form OpenAI echoes), in files as raw bytes and in the
warehouse through SQL too (DuckDB may compress a string on disk, where a byte search would miss it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from runtime.config import SECRETS_FILE_NAME, ConfigError, load_settings
from tests.reliability.outcome import FaultOutcome

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MD = ROOT / "examples" / "sample_rules.md"
NON_LOOPBACK = ("0.0.0.0", "192.0.2.10", "::", "example.org")  # 192.0.2.0/24: documentation addresses
LOOPBACK = ("127.0.0.1", "127.0.0.53", "::1", "localhost")
REFUSAL = "set allow_remote_bind = true"


def planted(kind: str) -> str:
    """A distinctive secret value: recognisable in a leak, random so no fixture can contain it by chance."""
    return f"planted-{kind}-{secrets.token_hex(12)}"


def fragments(secret: str) -> list[str]:
    """What counts as a leak of ``secret``: itself, its first and last 12 characters, and the masked echo
    (first 3 + stars + last 4) that OpenAI-style servers put into a 401 message."""
    found = [secret, secret[:12], secret[-12:]]
    with contextlib.suppress(ImportError):
        from tests.fakes.openai_server import masked

        found.append(masked(secret))
    return found


def leaks_in_text(text: str, secret_values: Iterable[str]) -> list[str]:
    return [frag for s in secret_values for frag in fragments(s) if frag in text]


def leaks_in_files(folder: Path, secret_values: Iterable[str], skip: Iterable[Path] = ()) -> list[str]:
    """``path: fragment`` for every file under ``folder`` whose bytes (UTF-8 or UTF-16) hold a fragment."""
    skipped = {p.resolve() for p in skip}
    values = list(secret_values)
    needles = [(frag, enc) for s in values for frag in fragments(s) for enc in ("utf-8", "utf-16-le")]
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.resolve() in skipped:
            continue
        data = path.read_bytes()
        found += [f"{path}: {frag}" for frag, enc in needles if frag.encode(enc) in data]
    return found


def leaks_in_warehouse(warehouse: Path, secret_values: Iterable[str]) -> list[str]:
    """``table: fragment`` for every warehouse table with a value holding a fragment (read through SQL)."""
    from warehouse.db import open_warehouse

    found = []
    if not warehouse.exists():
        return found
    with open_warehouse(warehouse, read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        for table in tables:
            text = "\n".join(repr(row) for row in con.execute(f'SELECT * FROM "{table}"').fetchall())
            found += [f"{table}: {frag}" for frag in leaks_in_text(text, secret_values)]
    return found


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record of this process, at DEBUG, formatted with its arguments, into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (Linux ``/proc/net/tcp``, ``tcp6``)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state != "0A" or int(hex_port, 16) != port:
                    continue
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.add(socket.inet_ntop(family, raw))
    return found


def only_loopback(addresses: set[str]) -> bool:
    from runtime.netbind import is_loopback

    return bool(addresses) and all(is_loopback(a.removeprefix("::ffff:")) for a in addresses)


# ---------------------------------------------------------------------------------------------------------
# Servers: loopback only unless asked


def _refused(outcome: FaultOutcome, name: str, start: Callable[[], Any], leftovers: list[Path]) -> None:
    """``start()`` must raise the bind refusal (naming the setting) and leave nothing behind."""
    from runtime.netbind import RemoteBindRefused

    outcome.add_fault("remote_bind")
    try:
        started = start()
    except RemoteBindRefused as exc:
        if REFUSAL in str(exc) and not any(p.exists() for p in leftovers):
            outcome.runs_completed += 1
            return
        outcome.notes += f"{name}: refused unclearly or left {leftovers}: {exc}; "
        return
    with contextlib.suppress(Exception):
        started.stop()  # a receiver that should never have bound
    outcome.notes += f"{name}: started on a non-loopback address; "


def servers_refuse_remote_bind(work: Path) -> FaultOutcome:
    """Label Studio, the webhook receiver, the Prefect server and the model server each refuse a
    non-loopback ``bind_host`` without ``allow_remote_bind``, before anything starts; loopback addresses
    pass, and the opt-in passes. Nothing here starts a real server."""
    from typer.testing import CliRunner

    from deployments import server as prefect_server
    from flows.cli import app
    from review import server as ls_server
    from review.webhook import WebhookReceiver
    from runtime.netbind import bind_host

    outcome = FaultOutcome("security: servers refuse a non-loopback address")
    for host in NON_LOOPBACK:
        settings = load_settings(work / "ws", bind_host=host, labelstudio_venv=work / "no-venv")
        _refused(outcome, f"Label Studio on {host}", lambda s=settings: ls_server.start(s),
                 [work / "no-venv", ls_server.data_dir(settings)])  # fmt: skip
        _refused(outcome, f"webhook receiver on {host}",
                 lambda s=settings: WebhookReceiver(None, s, None, lambda *a: None), [])  # fmt: skip
        _refused(outcome, f"Prefect server on {host}", lambda s=settings: prefect_server.start_server(s),
                 [prefect_server.prefect_home(settings)])  # fmt: skip
    for host in LOOPBACK:
        if bind_host(load_settings(work / "ws", bind_host=host), "a test server") == host:
            outcome.runs_completed += 1
        else:
            outcome.notes += f"loopback {host} refused; "
    allowed = load_settings(work / "ws", bind_host="0.0.0.0", allow_remote_bind=True)
    if bind_host(allowed, "a test server") == "0.0.0.0":
        outcome.runs_completed += 1

    # The command line: each server command refuses with exit status 2 and one line naming the setting.
    runner = CliRunner()
    env = {"SLM_BIND_HOST": "0.0.0.0", "SLM_LABELSTUDIO_VENV": str(work / "no-venv")}
    for args in (["review", "up"], ["server", "up"], ["serve-model"], ["deploy"]):
        outcome.add_fault("remote_bind")
        result = runner.invoke(app, ["-w", str(work / "cli-ws"), *args], env=env)
        text = result.output + (result.stderr if result.stderr_bytes is not None else "")
        if result.exit_code == 2 and "refusing to start" in text and "allow_remote_bind" in text:
            outcome.runs_completed += 1
        else:
            outcome.notes += f"slm {' '.join(args)}: exit {result.exit_code}: {text[-300:]}; "
    # The model server's command line carries the checked address, loopback by default.
    from tasks.answer.serve import server_command

    default = server_command("m.gguf")
    if default[default.index("--host") + 1] == "127.0.0.1" and "::1" in server_command("m.gguf", host="::1"):
        outcome.runs_completed += 1
    # With --allow-remote the model server gets past the address check (and stops at its missing extra).
    result = runner.invoke(app, ["-w", str(work / "cli-ws"), "serve-model", "--allow-remote"], env=env)
    # (exit 2 either way here: the extra is missing, or with it installed, this workspace has no warehouse)
    past = "llama-cpp-python[server]" in result.output or "no warehouse yet" in result.output
    if "refusing to start" not in result.output and past:
        outcome.runs_completed += 1
    else:
        outcome.notes += f"serve-model --allow-remote: {result.output[-300:]}; "
    if (work / "cli-ws" / "prefect").exists() or (work / "no-venv").exists():
        outcome.notes += "a refused command left files behind; "
    return outcome


def webhook_listens_on_loopback_and_wants_its_secret(work: Path) -> FaultOutcome:
    """The receiver listens on 127.0.0.1 only; posts without the secret, with a wrong one (also non-ASCII)
    are refused with 403, the right one is accepted; neither the payload nor the secret is logged."""
    from review.webhook import SECRET_HEADER, WebhookReceiver

    outcome = FaultOutcome("security: webhook receiver")
    settings = load_settings(work / "ws")
    marker = planted("payload")
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"result": marker}}
    with (
        captured_logs() as logs,
        WebhookReceiver(None, settings, None, lambda *a: None, recheck_delays=()) as rx,
    ):
        where = listening_addresses(rx.port)
        if where == {"127.0.0.1"}:
            outcome.runs_completed += 1
        else:
            outcome.notes += f"listening on {where}; "
        attempts = {
            "missing": {},
            "wrong": {SECRET_HEADER: rx.secret[:-1] + ("A" if rx.secret[-1] != "A" else "B")},
            "non-ascii": {SECRET_HEADER: "sécret-ü".encode()},  # type: ignore[dict-item]
            "empty": {SECRET_HEADER: ""},
        }
        for name, headers in attempts.items():
            outcome.add_fault(f"webhook_{name}_secret")
            try:
                code = httpx.post(rx.url, json=event, headers=headers, timeout=10).status_code
            except httpx.HTTPError as exc:
                code = f"no answer ({type(exc).__name__})"  # type: ignore[assignment]
            if code in (401, 403):
                outcome.runs_completed += 1
            else:
                outcome.notes += f"{name} secret: {code}; "
        if rx.events != 0:
            outcome.notes += f"{rx.events} refused events were accepted; "
        accepted = httpx.post(rx.url, json=event, headers={SECRET_HEADER: rx.secret}, timeout=10)
        deadline = time.monotonic() + 10  # the receiver answers first, then takes the event on its thread
        while rx.events < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        if accepted.status_code == 200 and rx.events == 1:
            outcome.runs_completed += 1
        else:
            outcome.notes += f"right secret: {accepted.status_code}, {rx.events} events; "
        secret = rx.secret
    outcome.secrets_found += len(leaks_in_text(logs.getvalue(), [marker, secret]))
    return outcome


# ---------------------------------------------------------------------------------------------------------
# Secret files


def write_secrets(workspace: Path, values: dict[str, str], mode: int = 0o600) -> Path:
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / SECRETS_FILE_NAME
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
    path.chmod(mode)
    return path


def secret_files_are_private(work: Path) -> FaultOutcome:
    """A secrets.toml others can read is refused with a message saying how to fix it (library and CLI);
    a 0600 one is read and its values masked by `slm config show`; the Label Studio credentials file
    the project writes is created 0600 even under a permissive umask."""
    from typer.testing import CliRunner

    from flows.cli import app
    from review import server as ls_server

    outcome = FaultOutcome("security: secret files are 0600")
    token = planted("lstoken")
    ws = work / "ws"
    path = write_secrets(ws, {"labelstudio_token": token})
    runner = CliRunner()
    for mode in (0o644, 0o640, 0o604, 0o660):
        outcome.add_fault("wide_secrets_file")
        path.chmod(mode)
        try:
            load_settings(ws)
            outcome.notes += f"mode {mode:o} accepted; "
        except ConfigError as exc:
            if f"chmod 600 {path}" in str(exc) and token not in str(exc):
                outcome.runs_completed += 1
        result = runner.invoke(app, ["-w", str(ws), "config", "show", "--json"], env={})
        if result.exit_code != 2 or "readable by others" not in result.output:
            outcome.notes += f"config show with mode {mode:o}: exit {result.exit_code}; "
        outcome.secrets_found += len(leaks_in_text(result.output, [token]))
    path.chmod(0o600)
    settings = load_settings(ws)
    if settings.labelstudio_token is not None and settings.labelstudio_token.get_secret_value() == token:
        outcome.runs_completed += 1
    shown = runner.invoke(app, ["-w", str(ws), "config", "show", "--json"], env={})
    if shown.exit_code == 0 and json.loads(shown.output)["labelstudio_token"] == "********":
        outcome.runs_completed += 1
    outcome.secrets_found += len(leaks_in_text(shown.output + repr(settings) + str(settings), [token]))

    old_umask = os.umask(0)  # the strictest test: nothing but the explicit mode keeps others out
    try:
        creds = ls_server.load_credentials(settings, create=True)
    finally:
        os.umask(old_umask)
    creds_path = ls_server.credentials_path(settings)
    if creds is not None and stat.S_IMODE(creds_path.stat().st_mode) == 0o600:
        outcome.runs_completed += 1
    else:
        outcome.notes += f"credentials mode {stat.S_IMODE(creds_path.stat().st_mode):o}; "
    if creds is not None:
        outcome.secrets_found += len(leaks_in_text(repr(creds) + str(creds), [creds.token, creds.password]))
    return outcome


# ---------------------------------------------------------------------------------------------------------
# Teacher errors


def teacher_errors_carry_no_key(work: Path) -> FaultOutcome:
    """Gemini and OpenAI-compatible teachers whose keys are refused (401, 403, invalid key) or rate limited:
    the error each reports, the exception the retry layer raises (str and repr), the logs and the
    warehouse rows a distillation writes hold no fragment of any key."""
    from tasks.distill.distill import distill
    from tasks.distill.teachers.gemini import GeminiTeacher
    from tasks.distill.teachers.openai_compat import OpenAITeacher
    from tasks.distill.teachers.resilience import TeacherCallError
    from tasks.ingest.documents import ingest_file
    from tests.fakes import BAD_KEY, FORBIDDEN, RATE_LIMIT, UNAUTHORIZED
    from tests.fakes.gemini_server import FakeGeminiServer
    from tests.fakes.openai_server import FakeOpenAIServer
    from warehouse.db import open_warehouse

    outcome = FaultOutcome("security: teacher errors carry no key")
    gemini_keys = [planted("gemini"), planted("gemini")]
    openai_key = planted("openai")
    keys = [*gemini_keys, openai_key]
    texts: list[str] = []
    schedule = [RATE_LIMIT, UNAUTHORIZED, FORBIDDEN, BAD_KEY]
    fast = {
        "teacher_timeout_s": 5.0,
        "teacher_max_attempts": 3,
        "teacher_backoff_s": 0.01,
        "key_cooldown_s": 0.05,
    }
    with captured_logs() as logs:
        with FakeGeminiServer(schedule=lambda i, k: schedule[i % len(schedule)]) as fake:
            settings = load_settings(work / "gemini", gemini_base_url=fake.base_url,
                                     gemini_api_keys=",".join(gemini_keys), **fast)  # fmt: skip
            teacher = GeminiTeacher(settings)
            texts.append(repr(teacher))
            for chunk_output in _generate_each(teacher, len(schedule)):
                outcome.add_fault("refused_key")
                texts += [str(chunk_output.error), str(chunk_output.raw_text), repr(chunk_output)]
            texts += _call_error_texts(teacher, TeacherCallError)
            texts += _distilled_texts(
                work / "gemini", settings, teacher, ingest_file, distill, open_warehouse
            )
        with FakeOpenAIServer(schedule=lambda i, k: (UNAUTHORIZED, BAD_KEY, FORBIDDEN)[i % 3]) as fake:
            settings = load_settings(work / "openai", openai_base_url=f"{fake.base_url}/v1",
                                     openai_api_key=openai_key, **fast)  # fmt: skip
            teacher = OpenAITeacher(settings)
            texts.append(repr(teacher))
            for chunk_output in _generate_each(teacher, 3):
                outcome.add_fault("refused_key")
                texts += [str(chunk_output.error), str(chunk_output.raw_text), repr(chunk_output)]
            texts += _call_error_texts(teacher, TeacherCallError)
            texts += _distilled_texts(
                work / "openai", settings, teacher, ingest_file, distill, open_warehouse
            )
    refused = [t for t in texts if "was refused (not shown)" in t]
    if refused:
        outcome.runs_completed += 1
    outcome.secrets_found += len(leaks_in_text("\n".join(texts) + logs.getvalue(), keys))
    outcome.secrets_found += len(leaks_in_files(work, keys))
    return outcome


def _generate_each(teacher: Any, count: int) -> list[Any]:
    from tasks.distill.teachers.base import ChunkContext

    chunk = ChunkContext(chunk_id="c1", doc_id="d1", doc_name="规定", heading_path="第一条",
                         text="出差人员住宿费标准为每人每天不超过300元。", facts=())  # fmt: skip
    return [teacher.generate(chunk) for _ in range(count)]


def _call_error_texts(teacher: Any, error_type: type[BaseException]) -> list[str]:
    """The exception the retry layer raises when a key is refused: its message, repr and arguments."""
    from tasks.distill.teachers.base import Usage

    # Gemini's _call takes the key (one client per key); the OpenAI teacher's client holds its one key.
    call = (
        (lambda key: teacher._call(key, "x"))
        if teacher.name == "gemini"
        else (lambda _key: teacher._call("x"))
    )
    try:
        teacher._resilient.call(call, Usage())
    except error_type as exc:
        return [str(exc), repr(exc), repr(exc.args), str(getattr(exc, "raw_text", "")), str(exc.__cause__),
                str(exc.__context__)]  # fmt: skip
    except Exception as exc:
        return [f"unexpected {type(exc).__name__}: {exc!r}"]
    return []


def _distilled_texts(ws: Path, settings: Any, teacher: Any, ingest_file: Any, distill: Any,
                     open_warehouse: Any) -> list[str]:  # fmt: skip
    """Distil the sample with ``teacher`` (its calls failing) and return what the run reports."""
    with open_warehouse(settings.warehouse_path) as con:
        ingest_file(con, SAMPLE_MD, settings)
        summary = distill(con, settings, teacher, limit=3)
    return [repr(summary), str(summary)]


# ---------------------------------------------------------------------------------------------------------
# The whole pipeline with planted secrets


def _pipeline_fake() -> Any:
    """The fake Gemini server, except that a chunk without ledger facts gets prose instead of the fake's
    evidence-less filler row (which the pre-review gate rightly refuses): a failed call, as a real model's
    nonsense would be, so the run goes on to training and export."""
    from tests.fakes import HOPELESS, OK, Reply, default_rows
    from tests.fakes.gemini_server import FakeGeminiServer, _GeminiHandler, user_prompt

    class Handler(_GeminiHandler):
        def answer(self, reply: Reply, model: str, body: dict[str, Any]) -> None:
            if reply.outcome == OK and not default_rows(user_prompt(body))["rows"][0]["evidence"]:
                reply = Reply(outcome=HOPELESS)
            super().answer(reply, model, body)

    return type("PipelineGeminiServer", (FakeGeminiServer,), {"handler_class": Handler})


def pipeline_leaks_no_secret(work: Path) -> FaultOutcome:
    """`slm run --teacher gemini --review auto` on the sample with a tiny model, the Gemini teacher on a
    fake server that rate-limits, fails and refuses a key now and then; planted Gemini keys and an OpenAI
    key in the environment, a Label Studio token in the 0600 secrets.toml. Every file under the work
    folder (warehouse bytes and rows, reports, datasets, adapters, GGUF, Prefect's database and artifacts,
    logs) and the captured stdout/stderr (Prefect and root logging at INFO/DEBUG) hold no fragment."""
    from tests.fakes import BAD_KEY, OK, RATE_LIMIT, SERVER_ERROR, UNAUTHORIZED
    from tests.tiny import build_tiny_base

    outcome = FaultOutcome("security: no secret in a whole pipeline run")
    gemini_keys = [planted("gemini"), planted("gemini")]
    openai_key, ls_token = planted("openai"), planted("lstoken")
    keys = [*gemini_keys, openai_key, ls_token]
    base = build_tiny_base(work / "tiny-base")
    ws = work / "ws"
    secrets_file = write_secrets(ws, {"labelstudio_token": ls_token})
    faults = {0: RATE_LIMIT, 1: UNAUTHORIZED, 2: SERVER_ERROR, 5: BAD_KEY, 9: RATE_LIMIT}

    def schedule(index: int, key_index: int | None) -> str:
        return faults.get(index, OK)

    with _pipeline_fake()(schedule=schedule, keys=gemini_keys) as fake:
        (ws / "slm.toml").write_text(
            f'base_model = "{base}"\nreview_policy = "auto"\nper_fact = 1\ngolden_size = 12\n'
            'answer_max_tokens = 8\nexport_quant = "f16"\ntrain_epochs = 1\npromotion_margin = 1.0\n'
            f'gemini_base_url = "{fake.base_url}"\nteacher_backoff_s = 0.01\nkey_cooldown_s = 0.2\n'
            "teacher_max_attempts = 4\ndistill_concurrency = 4\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLM_", "PREFECT_"))}
        env.update({
            "PYTHONPATH": str(ROOT), "SLM_GEMINI_API_KEYS": ",".join(gemini_keys), "OPENAI_API_KEY": openai_key,
            "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_LOGGING_ROOT_LEVEL": "INFO",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        })  # fmt: skip
        for kind in faults.values():
            outcome.add_fault(kind)
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "flows.cli", "-w", str(ws), "run", str(SAMPLE_MD), "--teacher", "gemini",
             "--review", "auto", "--max-steps", "2"],
            cwd=work, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        calls = len(fake.calls)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "run.out").write_text(run.stdout, encoding="utf-8")
    (logs / "run.err").write_text(run.stderr, encoding="utf-8")
    outcome.notes = f"exit {run.returncode} in {time.monotonic() - started:.0f} s, {calls} teacher calls; "
    if run.returncode == 0 and "pipeline summary" in run.stdout:
        outcome.runs_completed += 1
    else:
        outcome.notes += run.stderr[-1500:]
    found = leaks_in_text(run.stdout + run.stderr, keys)
    found += leaks_in_files(work, keys, skip=[secrets_file])
    found += leaks_in_warehouse(ws / "warehouse.duckdb", keys)
    outcome.secrets_found += len(found)
    if found:
        outcome.notes += "leaks: " + "; ".join(found[:10])
    return outcome


SCENARIOS: list[Callable[[Path], FaultOutcome]] = [
    servers_refuse_remote_bind,
    webhook_listens_on_loopback_and_wants_its_secret,
    secret_files_are_private,
    teacher_errors_carry_no_key,
    pipeline_leaks_no_secret,
]
