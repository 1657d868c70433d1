"""Training on more than one process: the entry point that ``torchrun`` or ``accelerate launch`` starts once
per process (one per GPU, or CPU processes with the gloo backend).

    torchrun --nproc-per-node 4 -m tasks.train.launch -w ws [--dataset ID] [--profile P] [--max-steps N]
    accelerate launch --num_processes 4 -m tasks.train.launch -w ws ...

Each process trains on its share of every global batch (``profile.batch_size`` rows per process), DDP
averages the gradients, and rank 0 alone saves the adapter and records the challenger in the warehouse.
Keep the global batch of a one-process run by dividing ``batch_size`` by the number of processes
(``--set batch_size=2``). Without a workspace, ``--dataset-dir``/``--out`` train a snapshot folder directly
(what the tests and benchmarks use); rank 0 then prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tasks.train.train import process_rank


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` profile overrides; values are JSON where they parse (numbers, lists), text otherwise."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.train.launch", description=__doc__.split("\n")[0])
    parser.add_argument(
        "-w", "--workspace", type=Path, help="slm workspace: train a challenger and record it"
    )
    parser.add_argument("--dataset", help="dataset id in the workspace (default: the newest)")
    parser.add_argument("--dataset-dir", type=Path, help="a dataset snapshot folder (no workspace)")
    parser.add_argument("--out", type=Path, help="run folder for --dataset-dir")
    parser.add_argument("--base", help="base model (default: setting base_model)")
    parser.add_argument("--profile", help="cpu-small | gpu-qlora | prototype")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="with --dataset-dir")
    parser.add_argument("--save-steps", type=int, default=50, help="with --dataset-dir")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads per process (default: cores / processes)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)

    if args.dataset_dir is not None:
        from tasks.train.train import train

        if args.out is None or args.base is None:
            parser.error("--dataset-dir needs --out and --base")
        result = train(
            args.dataset_dir,
            args.base,
            args.out,
            profile=args.profile or "cpu-small",
            max_steps=args.max_steps,
            resume=args.resume,
            seed=args.seed,
            progress=process_rank() == 0,
            save_steps=args.save_steps,
            overrides=overrides or None,
            threads=args.threads,
        )
        if process_rank() == 0:
            print(json.dumps(_summary(result), ensure_ascii=False))
        return 0

    from runtime.config import load_settings
    from tasks.train.challenger import NoDataset, train_challenger

    settings = load_settings(args.workspace)
    if args.threads:
        settings = settings.model_copy(update={"train_threads": args.threads})
    try:
        result, model_id = train_challenger(
            settings,
            args.dataset,
            args.base,
            args.profile,
            args.max_steps,
            resume=args.resume,
            progress=process_rank() == 0,
            overrides=overrides or None,
        )
    except NoDataset as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if process_rank() == 0:
        print(
            f"challenger {model_id}: {result.optimizer_steps} steps on {result.device} "
            f"x{result.extra.get('world_size', 1)} processes, adapter {result.adapter_dir}"
        )
    return 0


def _summary(result: Any) -> dict[str, Any]:
    return {
        "adapter_dir": str(result.adapter_dir),
        "optimizer_steps": result.optimizer_steps,
        "loss_curve": [list(point) for point in result.loss_curve],
        "final_eval_loss": result.final_eval_loss,
        "tokens_per_s": result.tokens_per_s,
        "world_size": result.extra.get("world_size", 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
