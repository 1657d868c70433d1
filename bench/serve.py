"""The guarded endpoint (`slm serve`) against the raw model server (`slm serve-model`) under concurrent load.

Both serve the same GGUF on 127.0.0.1, one after the other (never both at once: they would share the CPU):
N concurrent non-streaming chat requests (N = 1, 4, 16 by default), each a question of the bundled sample's
question set (examples/sample_questions.jsonl, in turn), over a temporary workspace with the sample PDF
ingested. Prints requests/s and p50/p95 latency side by side; any failed request fails the bench.

The guarded endpoint does what `slm ask` does for each request (retrieval, the model's draft over three rule
excerpts, the numeric guard, a constrained retry when the draft fails): a longer prompt and sometimes two
generations, where the raw server answers the bare question once. Both decode at most ``--max-tokens``
tokens greedily, and both serve one request at a time (one llama.cpp context each).

The model: ``--model`` (a .gguf), else the demo workspace's newest export (workspace/demo/artifacts/gguf),
else (or with ``--tiny``) a tiny 2-layer Llama built and exported on the spot (tests/tiny.py): then what is
measured is the serving path itself (queue, retrieval, guard, HTTP), not a model's speed.

    .venv/bin/python bench/serve.py [--model X.gguf | --tiny] [--n 1 4 16] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_PDF = ROOT / "examples" / "sample_rules.pdf"
QUESTIONS = ROOT / "examples" / "sample_questions.jsonl"
DEMO_GGUF = ROOT / "workspace" / "demo" / "artifacts" / "gguf"
CLIENT_TIMEOUT_S = 3600  # requests queue for the one model: the 16th waits for the 15 before it


def default_model(tmp: Path, tiny: bool = False) -> tuple[Path, str]:
    exports = [] if tiny else sorted(DEMO_GGUF.glob("*.gguf"), key=lambda p: p.stat().st_mtime, reverse=True)
    lora = [p for p in exports if p.name.startswith("lora-")]
    if lora or exports:
        path = (lora or exports)[0]
        return path, f"the demo's export {path.name}"
    from tasks.export.export import export_model
    from tests.tiny import build_tiny_base

    base = build_tiny_base(tmp / "tiny-base")
    path = export_model(None, str(base), tmp / "gguf", quant="f16").path
    return path, "a tiny 2-layer Llama (tests/tiny.py), f16"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`slm <command>` in its own process group, waited for until /v1/models answers, stopped as a group."""

    def __init__(self, workspace: Path, command: str, model: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "flows.cli", "-w", str(workspace), command]
        argv += ["--model", str(model), "--port", str(self.port)]
        if command == "serve":
            argv.append("--no-ui")
        self.log = open(workspace / f"{command}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait(self, timeout_s: float = 300) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the server exited: {Path(self.log.name).read_text(errors='replace')[-2000:]}"
                )
            try:
                response = httpx.get(f"{self.base}/v1/models", timeout=5)
                if response.status_code == 200:
                    return str(response.json()["data"][0]["id"])
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("the server did not start in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def fire(base: str, model: str, questions: list[str], n: int, max_tokens: int) -> dict[str, Any]:
    """``n`` requests at once (thread per request); latencies, wall time, failures, guard actions."""
    latencies: list[float] = []
    failures: list[str] = []
    actions: dict[str, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": questions[i % len(questions)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        barrier.wait()
        started = time.perf_counter()
        try:
            response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT_S)
            elapsed = time.perf_counter() - started
            payload = response.json()
            if response.status_code != 200 or not payload.get("choices"):
                raise RuntimeError(f"{response.status_code}: {json.dumps(payload, ensure_ascii=False)[:200]}")
        except Exception as exc:
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            latencies.append(elapsed)
            action = (payload.get("slm") or {}).get("guard_action")
            if action:
                actions[action] = actions.get(action, 0) + 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))] if ordered else 0.0

    return {
        "n": n,
        "ok": len(latencies),
        "failed": failures,
        "rps": len(latencies) / wall if wall else 0.0,
        "p50": statistics.median(ordered) if ordered else 0.0,
        "p95": pct(0.95),
        "actions": actions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .gguf (default: the demo's export, else a tiny model)")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 16], help="concurrent requests")
    parser.add_argument("--tiny", action="store_true", help="the tiny model even where the demo's export is")
    parser.add_argument("--max-tokens", type=int, default=48, help="longest answer (answer_max_tokens)")
    args = parser.parse_args()

    from runtime.config import load_settings
    from tasks.ingest.documents import ingest_file
    from warehouse.db import open_warehouse

    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        model, which = (args.model, str(args.model)) if args.model else default_model(Path(tmp), args.tiny)
        settings = load_settings(workspace)
        with open_warehouse(settings.warehouse_path) as con:
            if ingest_file(con, SAMPLE_PDF, settings).status == "failed":
                raise SystemExit(f"{SAMPLE_PDF}: ingest failed")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
        env["SLM_ANSWER_MAX_TOKENS"] = str(args.max_tokens)
        results: dict[str, list[dict[str, Any]]] = {}
        for command in ("serve", "serve-model"):
            server = Server(workspace, command, model, env)
            try:
                name = server.wait()
                fire(server.base, name, questions, 1, args.max_tokens)  # warm-up, not counted
                results[command] = [fire(server.base, name, questions, n, args.max_tokens) for n in args.n]
            finally:
                server.stop()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"model: {which}; {cores} CPU cores; max_tokens {args.max_tokens}; non-streaming requests")
    print(f"{'N':>3}  {'guarded (slm serve)':^30}  {'raw (slm serve-model)':^30}")
    print(f"{'':>3}  {'req/s':>8} {'p50 s':>10} {'p95 s':>10}  {'req/s':>8} {'p50 s':>10} {'p95 s':>10}")
    failed = 0
    for guarded, raw in zip(results["serve"], results["serve-model"], strict=True):
        print(
            f"{guarded['n']:>3}  {guarded['rps']:>8.2f} {guarded['p50']:>10.2f} {guarded['p95']:>10.2f}"
            f"  {raw['rps']:>8.2f} {raw['p50']:>10.2f} {raw['p95']:>10.2f}"
        )
        failed += len(guarded["failed"]) + len(raw["failed"])
        for failure in guarded["failed"] + raw["failed"]:
            print(f"     failed: {failure}")
    actions: dict[str, int] = {}
    for r in results["serve"]:
        for k, v in r["actions"].items():
            actions[k] = actions.get(k, 0) + v
    print("guard actions: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
    print(f"requests failed: {failed}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
