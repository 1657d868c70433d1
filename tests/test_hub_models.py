"""Hugging Face hub ids as bases: downloaded when a hub answers (a fake hub on 127.0.0.1 speaking the hub's API
to the real ``huggingface_hub`` client, tests/fakes/hub_server.py), taken from the local cache when
``HF_HUB_OFFLINE=1`` or when the hub cannot be reached, and a one-line message naming the model and the
reason when neither works. No real network: every endpoint is a loopback address. Each resolution runs in a
fresh process, because huggingface_hub reads ``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is
imported."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.hub_server import FakeHubServer
from tests.test_cli import slm

ROOT = Path(__file__).resolve().parents[1]
RESOLVE = (
    "import sys\n"
    "from tasks.models.base_models import BaseModelError, resolve_base\n"
    "try:\n"
    "    print(resolve_base(sys.argv[1]))\n"
    "except BaseModelError as exc:\n"
    "    print(exc, file=sys.stderr)\n"
    "    sys.exit(3)\n"
)


def hub_env(hf_home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("TRANSFORMERS_OFFLINE", "SLM_BASE_MODEL")
    }
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT), **extra}


def resolve(spec: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RESOLVE, spec], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_base

    folder = build_tiny_base(tmp_path_factory.mktemp("repo") / "tiny")
    (folder / "tiny-q8_0.gguf").write_bytes(b"GGUF" + bytes(64))  # another runtime's copy: not downloaded
    return folder


def test_hub_id_downloads_from_a_reachable_hub_then_loads_from_the_cache(
    tiny_repo: Path, tmp_path: Path
) -> None:
    hf_home = tmp_path / "hf"
    with FakeHubServer({"slm-test/tiny": tiny_repo}) as hub:
        fetched = resolve("slm-test/tiny", hub_env(hf_home, HF_ENDPOINT=hub.base_url))
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        asked = list(hub.paths)
    folder = Path(fetched.stdout.strip().splitlines()[-1])
    assert folder.is_relative_to(hf_home) and (folder / "config.json").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).read_bytes() == (tiny_repo / name).read_bytes(), name
    assert not (folder / "tiny-q8_0.gguf").exists()
    assert not any("tiny-q8_0.gguf" in path for path in asked)
    assert any(path.startswith("GET /slm-test/tiny/resolve/") for path in asked)
    # The hub gone: offline mode reads the cache, and so does an online run whose hub refuses connections.
    for extra in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}):
        again = resolve("slm-test/tiny", hub_env(hf_home, **extra))
        assert again.returncode == 0, (extra, again.stderr[-2000:])
        assert Path(again.stdout.strip().splitlines()[-1]) == folder
    # ... and the cached base loads as a model.
    load = "import sys\nfrom tasks.models.base_models import load_base\nprint(load_base(sys.argv[1])[2].path)"
    loads = subprocess.run(
        [sys.executable, "-c", load, "slm-test/tiny"],
        env=hub_env(hf_home, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert loads.returncode == 0 and loads.stdout.strip().endswith(str(folder)), loads.stderr[-2000:]


def test_model_in_neither_cache_nor_hub_is_one_clear_line(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    offline = resolve("slm-test/not-cached", hub_env(hf_home, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 3
    assert offline.stderr.strip() == (
        "model slm-test/not-cached is not in the local cache and the hub cannot be reached: HF_HUB_OFFLINE=1 is"
        " set (unset it where a hub is reachable to download the model); download it where a hub is"
        " reachable, or pass a local folder"
    )
    endpoint = f"http://127.0.0.1:{closed_port()}"
    unreachable = resolve("slm-test/not-cached", hub_env(hf_home, HF_ENDPOINT=endpoint))
    assert unreachable.returncode == 3
    assert unreachable.stderr.strip().startswith(
        f"model slm-test/not-cached is not in the local cache and the hub cannot be reached: {endpoint}: ConnectError:"
    )
    assert len(unreachable.stderr.strip().splitlines()) == 1
    # The command line says the same in one line (exit status 2), not a traceback.
    env = hub_env(hf_home, HF_HUB_OFFLINE="1", SLM_BASE_MODEL="slm-test/not-cached", COLUMNS="400")
    exported = slm("-w", "ws", "export", "--model", "base", cwd=tmp_path, env=env)
    assert exported.returncode == 2, exported.stderr[-2000:]
    assert exported.stderr.strip().startswith("model slm-test/not-cached is not in the local cache")
    assert "Traceback" not in exported.stderr and len(exported.stderr.strip().splitlines()) == 1


def test_model_the_hub_does_not_have(tiny_repo: Path, tmp_path: Path) -> None:
    with FakeHubServer({"slm-test/tiny": tiny_repo}) as hub:
        endpoint = hub.base_url
        missing = resolve("slm-test/other", hub_env(tmp_path / "hf", HF_ENDPOINT=endpoint))
    assert missing.returncode == 3
    assert missing.stderr.strip().startswith(f"model slm-test/other is not on the hub at {endpoint}")
