"""A frozen dataset (chat JSONL, ``tasks.train.dataset``) in the formats other training tools read.

- ``alpaca``: ``instruction`` / ``input`` / ``output`` with the system prompt in ``system`` and earlier turns
  in ``history``, as LLaMA-Factory's data/README documents it (and the Stanford Alpaca layout it extends);
- ``sharegpt``: ``conversations`` of ``{"from": "human"|"gpt", "value": ...}`` with the system prompt in a
  ``system`` column, LLaMA-Factory's ShareGPT layout (human in odd positions, gpt in even ones);
- ``llamafactory``: the ShareGPT files plus their entries in ``dataset_info.json`` (``file_name``,
  ``formatting``, ``columns``, ``tags``), merged into the one already in the folder, so ``--out`` can be
  LLaMA-Factory's own ``data/`` directory; the validation split is its own entry (``eval_dataset``);
- ``hf``: a ``datasets.DatasetDict`` (train, validation) written with ``save_to_disk``, the chat records as
  they are (``messages``, the format TRL's SFTTrainer and ``apply_chat_template`` read).

The user turn is kept whole (for a context row: the retrieved rules, then the question), so every format
renders exactly the prompt our own training sees. Everything is written beside the target and renamed into
place: an interrupted export leaves the previous one (or nothing), never half a file; exporting again
replaces the files with the same content.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from runtime.config import Settings

DATASET_FORMATS = ("llamafactory", "alpaca", "sharegpt", "hf")
SPLITS = ("train", "valid")
HF_SPLIT_NAMES = {"train": "train", "valid": "validation"}  # the names the datasets library uses
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


class DatasetExportError(ValueError):
    """The dataset cannot be exported as asked; the message names the file and the problem."""


@dataclass(frozen=True)
class DatasetExport:
    dataset_id: str
    format: str
    out_dir: Path
    files: tuple[Path, ...]  # what was written (for hf: the saved dataset folder)
    counts: dict[str, int]  # records per split
    entries: tuple[str, ...] = ()  # dataset_info.json entry names (llamafactory)


def read_records(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The records of a frozen dataset folder per split, read as training reads them
    (:func:`tasks.train.train.read_rows`), each checked to be a system prompt and user/assistant turns."""
    from tasks.train.train import TrainError, read_rows

    folder = Path(folder)
    if not (folder / "train.jsonl").is_file():
        raise DatasetExportError(
            f"{folder / 'train.jsonl'}: missing (the dataset folder is incomplete or gone)"
        )
    records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        try:
            records[split] = read_rows(path)
        except TrainError as exc:
            raise DatasetExportError(str(exc)) from exc
        for record in records[split]:
            try:
                _turns(record["messages"])
            except DatasetExportError as exc:
                raise DatasetExportError(f"{path}: record {record.get('id')}: {exc}") from exc
    return records


def _turns(messages: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """(system prompt, [(user, assistant), ...]) of a chat record; anything else is refused by name."""
    system = ""
    rest = list(messages)
    if rest and rest[0].get("role") == "system":
        system = str(rest.pop(0).get("content") or "")
    pairs: list[tuple[str, str]] = []
    for position in range(0, len(rest), 2):
        pair = rest[position : position + 2]
        roles = [m.get("role") for m in pair]
        if roles != ["user", "assistant"]:
            raise DatasetExportError(
                f"messages must be an optional system message then user/assistant pairs, found roles {roles}"
            )
        pairs.append((str(pair[0].get("content") or ""), str(pair[1].get("content") or "")))
    if not pairs:
        raise DatasetExportError("a record needs at least one user/assistant pair")
    return system, pairs


def to_alpaca(record: dict[str, Any]) -> dict[str, Any]:
    """One chat record as an Alpaca record: the last user turn is the instruction (``input`` empty, so
    LLaMA-Factory's ``instruction\\ninput`` is the user turn unchanged), earlier pairs are ``history``."""
    system, pairs = _turns(record["messages"])
    *history, (question, answer) = pairs
    return {
        "id": record.get("id"),
        "instruction": question,
        "input": "",
        "output": answer,
        "system": system,
        "history": [list(pair) for pair in history],
    }


def to_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """One chat record as a ShareGPT record (LLaMA-Factory's tags: from/value, human/gpt, system column)."""
    system, pairs = _turns(record["messages"])
    conversations = [
        {"from": SHAREGPT_ROLES[role], "value": text}
        for question, answer in pairs
        for role, text in (("user", question), ("assistant", answer))
    ]
    return {"id": record.get("id"), "conversations": conversations, "system": system}


def llamafactory_entry(file_name: str) -> dict[str, Any]:
    """A ``dataset_info.json`` entry for a ShareGPT file written by :func:`to_sharegpt`."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    }


def export_dataset(folder: Path, dataset_id: str, fmt: str, out_dir: Path) -> DatasetExport:
    """Write the frozen dataset in ``folder`` as ``fmt`` into ``out_dir`` (see the module docstring)."""
    if fmt not in DATASET_FORMATS:
        raise DatasetExportError(f"format must be one of {', '.join(DATASET_FORMATS)}, not {fmt!r}")
    records = read_records(folder)
    counts = {split: len(rows) for split, rows in records.items()}
    out_dir = Path(out_dir)
    if fmt == "hf":
        return DatasetExport(dataset_id, fmt, out_dir, (_save_hf(records, out_dir),), counts)
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetExportError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = "alpaca" if fmt == "alpaca" else "sharegpt"
    convert = to_alpaca if layout == "alpaca" else to_sharegpt
    files: list[Path] = []
    entries: dict[str, dict[str, Any]] = {}
    for split, rows in records.items():
        if not rows:
            continue  # a dataset of one row has no validation split
        path = out_dir / f"slm-{dataset_id}-{layout}-{split}.json"
        _write_json(path, [convert(row) for row in rows])
        files.append(path)
        entries[f"slm-{dataset_id}" + ("" if split == "train" else f"-{split}")] = llamafactory_entry(
            path.name
        )
    if fmt == "llamafactory":
        files.append(_merge_dataset_info(out_dir / "dataset_info.json", entries))
    return DatasetExport(
        dataset_id, fmt, out_dir, tuple(files), counts, tuple(entries) if fmt == "llamafactory" else ()
    )


def _write_json(path: Path, value: Any) -> None:
    """A JSON file written beside its name and renamed into place."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _merge_dataset_info(path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Add (or replace) ``entries`` in the folder's ``dataset_info.json``, keeping every other dataset."""
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetExportError(f"{path}: not valid JSON ({exc.msg}); fix or remove it first") from exc
        if not isinstance(existing, dict):
            raise DatasetExportError(f"{path}: expected a JSON object of dataset entries")
    _write_json(path, {**existing, **entries})
    return path


def _save_hf(records: dict[str, list[dict[str, Any]]], out_dir: Path) -> Path:
    """``DatasetDict.save_to_disk`` into a sibling folder, then renamed over an earlier export of ours."""
    from datasets import Dataset, DatasetDict
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "dataset_dict.json").is_file():
        raise DatasetExportError(
            f"{out_dir}: not empty and not a saved Hugging Face dataset; choose another --out"
        )
    columns = ("id", "messages", "doc", "kind", "context")
    splits = {
        HF_SPLIT_NAMES[split]: Dataset.from_list([{c: row.get(c) for c in columns} for row in rows])
        for split, rows in records.items()
        if rows
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # a bar per split for a few hundred rows is noise on the command line
    try:
        DatasetDict(splits).save_to_disk(str(staging / "data"))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging / "data", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not quiet:
            enable_progress_bars()
    return out_dir


def export_frozen_dataset(
    con: duckdb.DuckDBPyConnection, settings: Settings, dataset_id: str, fmt: str, out_dir: Path | None = None
) -> DatasetExport:
    """Export the frozen dataset ``dataset_id`` (a unique prefix is enough, as for ``slm train --dataset``)
    into ``out_dir``, by default ``<workspace>/artifacts/dataset-exports/<id>-<format>``."""
    from tasks.train.challenger import resolve_dataset

    if fmt not in DATASET_FORMATS:
        raise DatasetExportError(f"format must be one of {', '.join(DATASET_FORMATS)}, not {fmt!r}")
    found = resolve_dataset(con, dataset_id)
    full_id = found["dataset_id"]
    target = (
        out_dir if out_dir is not None else settings.artifacts_dir / "dataset-exports" / f"{full_id}-{fmt}"
    )
    return export_dataset(Path(found["path"]), full_id, fmt, target)
