"""One flow per stage, for work pools that split the work (deployments/prefect.yaml): the CPU pool runs
ingest, distil and the gates (and the build-dataset flow, which adds review), the GPU pool trains, evaluates
and exports; ``device-check`` tells what a pool's worker would train on. Composition only."""

from __future__ import annotations

import platform
import sys

from prefect import flow

from flows.distill_fan_out import distill_step
from flows.gates import gate_task
from flows.prefect_tasks import ingest_task
from flows.results import DistillRun, IngestSummary
from runtime.config import load_settings


@flow(name="ingest", log_prints=True)
def ingest_flow(paths: list[str], workspace: str | None = None) -> IngestSummary:
    return ingest_task(load_settings(workspace), paths)


@flow(name="distill", log_prints=True)
def distill_flow(workspace: str | None = None, teacher: str | None = None) -> DistillRun:
    overrides = {"teacher": teacher} if teacher else {}
    return distill_step(load_settings(workspace, **overrides))


@flow(name="gate", log_prints=True)
def gate_flow(gate: str, workspace: str | None = None) -> str:
    return gate_task(load_settings(workspace), gate).message


@flow(name="device-check", log_prints=True)
def device_check() -> dict[str, str]:
    """Where this flow ran and what training would use there: host, Python, torch, CUDA devices, and the
    file this flow was loaded from (a worker of a deployment runs it from its clone of the project)."""
    import torch

    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    found = {
        "host": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_devices": ", ".join(cuda) or "none",
        "flow_file": __file__,
    }
    for name, value in found.items():
        print(f"{name}: {value}")
    return found
