"""Render the Prefect UI of a real `slm run`: the train-and-evaluate flow run's artifacts (the training and
evaluation progress artifacts) and the evaluation report artifact with its charts, to two PNGs.

    python docs/prefect_screenshot.py --workspace /tmp/prefect-shot

Docs tooling, like ``docs/screenshot.py`` (whose headless Debian Chromium driver it uses). Starts the
workspace's Prefect server (`slm server up`, on ``--port``), runs `slm run examples/sample_rules.md` against
it with the auto review policy and the tiny test model (``tests/tiny.py``: a few CPU steps, so the whole run
takes minutes), prints what `slm run` printed, then captures the pages and stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from screenshot import DevTools, ensure_chromium

from deployments import server as prefect_server
from runtime.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def prepare(workspace: Path, port: int) -> Settings:
    """A workspace whose base is the tiny test model (built once), reviewed by the auto policy."""
    from tests.tiny import build_tiny_base

    workspace.mkdir(parents=True, exist_ok=True)
    base = workspace / "tiny-base"
    if not (base / "config.json").exists():
        build_tiny_base(base)
    (workspace / "slm.toml").write_text(
        f'base_model = "{base}"\nreview_policy = "auto"\nper_fact = 1\ngolden_size = 12\n'
        'answer_max_tokens = 16\nexport_quant = "f16"\ntrain_epochs = 1\ntrain_save_steps = 4\n'
        f"prefect_port = {port}\n",
        encoding="utf-8",
    )
    return load_settings(workspace)


def run_pipeline(settings: Settings, max_steps: int) -> str:
    env = {**os.environ, **prefect_server.prefect_env(settings)}
    command = [
        *(str(ROOT / ".venv" / "bin" / "slm"), "-w", str(settings.workspace), "run"),
        *(str(ROOT / "examples" / "sample_rules.md"), "--max-steps", str(max_steps)),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"slm run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stderr + done.stdout


def newest_run_and_report(settings: Settings) -> tuple[str, str]:
    """(the newest train-and-evaluate flow run id, its evaluation-report artifact id)."""
    os.environ["PREFECT_API_URL"] = prefect_server.api_url(settings)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> tuple[str, str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["train-and-evaluate"])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            artifacts = await client.read_artifacts()
        run_id = str(runs[0].id)
        report = [a for a in artifacts if a.key == "evaluation-report" and str(a.flow_run_id) == run_id]
        return run_id, str(report[0].id)

    return asyncio.run(read())


def capture(
    browser: DevTools, url: str, probe: str, out: Path, width: int, height: int, settle_s: float = 2.0
) -> Any:
    """Open ``url``, wait until the JavaScript ``probe`` is truthy (60 s at most), save a PNG; the probe's
    last value is returned."""
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.call("Page.navigate", {"url": url})
    value = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = browser.call("Runtime.evaluate", {"expression": probe, "returnByValue": True})
        value = (found.get("result") or {}).get("value")
        if value:
            break
        time.sleep(0.5)
    else:
        print(
            f"warning: {url}: the page did not show what was waited for; capturing it anyway", file=sys.stderr
        )
    time.sleep(settle_s)
    shot = browser.call("Page.captureScreenshot", {"format": "png"})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return value


# How many of the page's images are data URIs that the browser decoded (the UI did not strip them).
DATA_IMAGES = (
    "Array.from(document.images).filter(i => i.src.startsWith('data:image/png') && i.complete"
    " && i.naturalWidth > 0).length"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--port", type=int, default=4291)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--progress-out", type=Path, default=ROOT / "docs" / "prefect_progress.png")
    parser.add_argument("--charts-out", type=Path, default=ROOT / "docs" / "prefect_eval_charts.png")
    parser.add_argument("--keep-server", action="store_true", help="leave the Prefect server running")
    parser.add_argument(
        "--no-run", action="store_true", help="capture the workspace's newest run again, run nothing"
    )
    args = parser.parse_args(argv)

    chromium = ensure_chromium()
    settings = load_settings(args.workspace) if args.no_run else prepare(args.workspace, args.port)
    info = prefect_server.start_server(settings)
    profile = Path(tempfile.mkdtemp(prefix="slm-chromium-"))
    try:
        if not args.no_run:
            print(run_pipeline(settings, args.max_steps))
        run_id, report_id = newest_run_and_report(settings)
        ui = info.url.rstrip("/")
        browser = DevTools(chromium, profile)
        try:
            browser.open_tab()
            browser.call("Page.enable")
            capture(
                browser,
                f"{ui}/runs/flow-run/{run_id}",
                # The run page opens on its logs: open the Artifacts tab, then wait for the progress cards.
                "(Array.from(document.querySelectorAll('main *, .p-tabs *'))"
                ".find(e => e.childElementCount === 0 && e.textContent.trim() === 'Artifacts')"
                " || {click() {}}).click()"
                " || document.body.innerText.includes('evaluate-challenger-progress')",
                args.progress_out,
                1400,
                1300,
            )
            shown = capture(
                browser, f"{ui}/artifacts/artifact/{report_id}", DATA_IMAGES, args.charts_out, 1400, 3000
            )
            print(
                f"evaluation report artifact: {shown or 0} data-URI PNG image(s) rendered by the Prefect UI"
            )
        finally:
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        if not args.keep_server:
            prefect_server.stop(settings, "server")
    print(f"wrote {args.progress_out} and {args.charts_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
