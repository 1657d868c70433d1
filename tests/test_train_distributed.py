"""Training on two processes (torchrun, gloo on CPU) steps as one process with the same global batch.

Two processes with 2 rows each per micro-batch against one process with 4: the same rows per optimiser step
(the length-grouped sampler groups by the global batch and accelerate shards each global batch), the loss
summed over the answer tokens of all processes, DDP averaging the gradients. The loss curves agree within
a relative 1e-4 (float sums in another order; measured: about 1e-7). Rank 0 alone saves the adapter and
records the challenger and its training run in the warehouse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import Settings
from tasks.train.train import train
from tests.test_train import make_rows, make_tokenizer, tiny_model, write_dataset
from warehouse.db import connect
from warehouse.gates import register_dataset
from warehouse.models import list_models
from warehouse.training import list_train_runs

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
# Dropout off: each process would draw its own masks, so the comparison would measure dropout noise.
RECIPE = {"grad_accum": 2, "lora_dropout": 0.0, "learning_rate": 1e-2, "gradient_checkpointing": False}
GLOBAL_BATCH = 4


def _register(settings: Settings, dataset: Path) -> None:
    con = connect(settings.warehouse_path)
    try:
        register_dataset(
            con,
            {
                "dataset_id": dataset.name,
                "prompt_format": "chat",
                "row_count": 36,
                "train_count": 32,
                "valid_count": 4,
                "numeric_share": 1.0,
                "counts": {},
                "gate_run_id": "test",
                "path": str(dataset),
            },
            [],
        )
    finally:
        con.close()


def test_two_processes_train_like_one_with_the_same_global_batch(settings: Settings, tmp_path: Path) -> None:
    base = tmp_path / "base"
    tokenizer = make_tokenizer()
    tiny_model("gemma3", len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    dataset = write_dataset(tmp_path / "d15t41b8ed", make_rows(32), make_rows(4, 100))
    _register(settings, dataset)

    one = train(
        dataset,
        str(base),
        tmp_path / "one",
        max_steps=STEPS,
        progress=False,
        threads=1,
        overrides={**RECIPE, "batch_size": GLOBAL_BATCH},
    )

    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**RECIPE, "batch_size": GLOBAL_BATCH // 2}.items()]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "tasks.train.launch", "-w", str(settings.workspace), "--base", str(base)),
        *("--max-steps", str(STEPS), "--threads", "1", *sets),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)  # torchrun and both workers
            launcher.wait()
    text = output.decode(errors="replace")
    assert launcher.returncode == 0, text[-3000:]
    assert text.count("challenger ") == 1, "only rank 0 reports the challenger"

    con = connect(settings.warehouse_path)
    try:
        runs, models = list_train_runs(con), list_models(con)
    finally:
        con.close()
    assert len(runs) == 1 and len(models) == 1  # one writer: rank 0 recorded the run and the model once
    run = runs[0]
    adapter = Path(run["adapter_path"])
    meta = json.loads((adapter / "slm_adapter.json").read_text(encoding="utf-8"))
    assert meta["world_size"] == 2 and meta["profile"]["batch_size"] == GLOBAL_BATCH // 2
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter.parent / "loss.png").is_file()
    assert not (adapter.parent / ".adapter.partial").exists()

    curve_one = [t for _, t, _ in one.loss_curve if t is not None]
    curve_two = [t for _, t, _ in (tuple(p) for p in meta["loss_curve"]) if t is not None]
    assert len(curve_one) == len(curve_two) == STEPS
    assert curve_two == pytest.approx(curve_one, rel=1e-4)
    # It did learn: the comparison means something.
    assert curve_one[-1] != pytest.approx(curve_one[0], rel=1e-3)
    # Validation: the same 4 rows, averaged per batch of 2 instead of one batch of 4 (token weights differ).
    assert meta["final_eval_loss"] == pytest.approx(one.final_eval_loss, rel=0.05)
