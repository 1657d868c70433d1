"""Render the review interface, with a real task, to a PNG (``docs/review_interface.png``).

    python docs/screenshot.py --workspace /tmp/shot [--out docs/review_interface.png]
    python docs/screenshot.py --workspace /tmp/shot-facts --fact --keys c1 --out docs/review_fact_task.png

Docs tooling, not part of the installed packages: run it from a checkout whose venv has the project
installed (``make venv``).

Uses (starting it if needed) the Label Studio server of the workspace; when the workspace has no review
batch yet, ingests ``examples/sample_rules.pdf``, distils it with the extractive teacher and pushes three
rows (``--fact``: pushes a fact-first batch and shows a fact task: one source sentence, each of its ledger
numbers with its own verdict).
It logs in as the generated admin over HTTP (Django session), hands the session cookie to headless
Chromium from Debian's packages and drives it over the DevTools protocol on a pipe (``--remote-debugging-
pipe``: no port, no extra library), opening the labelling page of the batch's first task.
Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``, installed here when running as root) and a CJK
font (``fonts-wqy-zenhei``) for the Chinese text.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from review import push, server
from runtime.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Headless Chromium on a machine with a closed network: without the background-networking switches it keeps
# reaching for Google's hosts. The web app's browser test (tests/test_web_ui.py) starts it with these too.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
FLAGS = [*HEADLESS_FLAGS, "--hide-scrollbars", "--remote-debugging-pipe"]


def ensure_chromium() -> Path:
    """Debian's Chromium (and a CJK font), installed with apt-get when missing and we are root."""
    missing = [
        pkg
        for pkg, path in (
            ("chromium", CHROMIUM),
            ("fonts-wqy-zenhei", Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")),
        )
        if not path.exists()
    ]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(
                f"missing {' '.join(missing)}: run `sudo apt-get install -y {' '.join(missing)}`"
            )
        subprocess.run(
            ["apt-get", "install", "-y", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
        )
    return CHROMIUM


class DevTools:
    """The Chrome DevTools protocol over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated)."""

    def __init__(self, chromium: Path, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # in the child: its fd 3 reads our commands, its fd 4 carries the answers
            # Out of the way first, so that placing one end on 3 or 4 never overwrites the other.
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [str(chromium), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,  # the pipe mode needs exactly fds 3 and 4 (kept open by pass_fds)
            pass_fds=(3, 4),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self._buffer = b""
        self.session: str | None = None

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result") or {})
        raise TimeoutError(method)

    def open_tab(self) -> None:
        """A blank tab, with the commands that follow sent to it (its session)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone; the process is ended below either way
            self.call("Browser.close", timeout_s=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def login_cookies(settings: Settings) -> dict[str, str]:
    """A Django session for the generated admin (Label Studio's UI has no token-authenticated URLs)."""
    creds = server.load_credentials(settings)
    if creds is None:
        raise SystemExit("no generated Label Studio credentials in this workspace")
    with httpx.Client(base_url=server.base_url(settings), follow_redirects=False, timeout=30) as http:
        form = http.get("/user/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        if token is None:
            raise SystemExit("the Label Studio login page has no CSRF token")
        answer = http.post(
            "/user/login/",
            data={"csrfmiddlewaretoken": token.group(1), "email": creds.username, "password": creds.password},
            headers={"Referer": f"{server.base_url(settings)}/user/login/"},
        )
        if answer.status_code != 302 or "sessionid" not in http.cookies:
            raise SystemExit(f"Label Studio login failed (HTTP {answer.status_code})")
        return {name: http.cookies[name] for name in ("sessionid", "csrftoken") if name in http.cookies}


def demo_batch(settings: Settings) -> tuple[int, int]:
    """(project id, task id) of the newest batch's first task, making a batch from the sample when none."""
    from tasks.distill.distill import distill, make_teacher
    from tasks.ingest.documents import ingest_file
    from warehouse import review as queries
    from warehouse.db import connect

    client = server.client_for(settings)
    con = connect(settings.warehouse_path)
    try:
        batches = queries.list_batches(con)
        if not batches:
            ingest_file(con, ROOT / "examples" / "sample_rules.pdf", settings)
            distill(con, settings, make_teacher(settings))
            # Rows about money show the point best: an amount in the answer, lit up in the source.
            rows = [
                r["row_id"] for r in queries.review_candidates(con) if r["numbers"] and "元" in r["answer"]
            ]
            push.push_batch(con, settings, client, None, row_ids=rows[:3])
            batches = queries.list_batches(con)
        batch = batches[-1]
        tasks = [t for t in queries.batch_tasks(con, batch["batch_id"]) if t["ls_task_id"] is not None]
        return int(batch["ls_project_id"]), int(min(t["ls_task_id"] for t in tasks))
    finally:
        con.close()


def fact_batch(settings: Settings) -> tuple[int, int]:
    """(project id, task id) of a fact task (a sentence of 2-3 numbers, one about money) with the most questions
    waiting on it, pushing a fact-first
    batch of the sample when the workspace has none."""
    from review.facts import questions_waiting_on
    from tasks.distill.distill import distill, make_teacher
    from tasks.ingest.documents import ingest_file
    from warehouse import review as queries
    from warehouse.db import connect

    client = server.client_for(settings)
    con = connect(settings.warehouse_path)
    try:
        tasks = [t for b in queries.list_batches(con) for t in queries.batch_fact_tasks(con, b["batch_id"])]
        if not tasks:
            ingest_file(con, ROOT / "examples" / "sample_rules.pdf", settings)
            distill(con, settings, make_teacher(settings))
            push.push_batch(con, settings, client, None)
            tasks = [
                t for b in queries.list_batches(con) for t in queries.batch_fact_tasks(con, b["batch_id"])
            ]
        citing = questions_waiting_on(con, [t["fact_id"] for t in tasks])
        # One task per sentence: show one of a few numbers, about money, with the most questions waiting.
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for t in tasks:
            if t["ls_task_id"] is not None:
                groups.setdefault((t["batch_id"], t["task_group"] or t["fact_id"]), []).append(t)
        shown = [
            g for g in groups.values() if 2 <= len(g) <= 3 and any(t["unit"].startswith("元") for t in g)
        ]
        best_group = max(
            shown or list(groups.values()),
            key=lambda g: (sum(len(citing[t["fact_id"]]) for t in g), -int(g[0]["ls_task_id"])),
        )
        best = best_group[0]
        batch = queries.get_batch(con, best["batch_id"])
        assert batch is not None
        return int(batch["ls_project_id"]), int(best["ls_task_id"])
    finally:
        con.close()


def screenshot(
    settings: Settings,
    out: Path,
    width: int = 1280,
    height: int = 1500,
    fact: bool = False,
    keys: str = "",
) -> Path:
    chromium = ensure_chromium()
    server.start(settings, on_progress=lambda m: print(m, file=sys.stderr))
    project_id, task_id = fact_batch(settings) if fact else demo_batch(settings)
    cookies = login_cookies(settings)
    url = f"{server.base_url(settings)}/projects/{project_id}/data?task={task_id}"
    profile = Path(tempfile.mkdtemp(prefix="slm-chromium-"))
    browser = DevTools(chromium, profile)
    try:
        browser.open_tab()
        browser.call("Network.enable")
        for name, value in cookies.items():
            browser.call(
                "Network.setCookie", {"name": name, "value": value, "url": server.base_url(settings)}
            )
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.call("Page.enable")
        browser.call("Page.navigate", {"url": url})
        # The labelling UI is a single-page app: wait until the task's highlighted numbers are on screen.
        probe = "document.querySelectorAll('.lsf-main-view mark, .lsf-main-content mark, mark').length"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = browser.call("Runtime.evaluate", {"expression": probe, "returnByValue": True})
            if (found.get("result") or {}).get("value"):
                break
            time.sleep(0.5)
        else:
            print("warning: no <mark> appeared within 60 s; capturing what is shown", file=sys.stderr)
        time.sleep(2.0)  # fonts and layout settle
        for key in keys:  # a person's keys (e.g. "c", "1": some numbers wrong, number 1 among them)
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            event = {"key": key, "code": code, "windowsVirtualKeyCode": ord(key.upper()), "text": key}
            browser.call("Input.dispatchKeyEvent", {"type": "keyDown", **event})
            browser.call("Input.dispatchKeyEvent", {"type": "keyUp", **event})
            time.sleep(0.5)
        shot = browser.call("Page.captureScreenshot", {"format": "png"})
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=os.environ.get("SLM_WORKSPACE", "workspace"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "review_interface.png")
    parser.add_argument("--port", type=int, default=None, help="Label Studio port (default: the setting)")
    parser.add_argument("--stop", action="store_true", help="stop the server afterwards")
    parser.add_argument("--fact", action="store_true", help="a fact task of a fact-first batch")
    parser.add_argument("--keys", default="", help="keys to press before the shot, e.g. c1 (fact task)")
    args = parser.parse_args(argv)
    settings = load_settings(args.workspace)
    if args.port:
        settings = settings.model_copy(update={"labelstudio_port": args.port})
    try:
        path = screenshot(settings, args.out, height=1500, fact=args.fact, keys=args.keys)
    finally:
        if args.stop:
            server.stop(settings)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
