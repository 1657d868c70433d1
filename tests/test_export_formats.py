"""Exports people already use: a frozen dataset for LLaMA-Factory / Alpaca / ShareGPT / Hugging Face datasets,
each read back with the library that reads it, and checked against LLaMA-Factory's documented schema
(data/README.md: ``dataset_info.json`` keys, ``formatting``, ``columns``, ``tags``; Alpaca's
instruction/input/output/system/history; ShareGPT's conversations of from/value with human in odd and gpt in
even positions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.config import Settings, load_settings
from tasks.export.datasets import (
    DatasetExportError,
    export_dataset,
    export_frozen_dataset,
    read_records,
    to_alpaca,
    to_sharegpt,
)
from tests.conftest import SAMPLE_MD
from tests.test_cli import slm
from warehouse.db import connect

# LLaMA-Factory's data/README.md: the keys a dataset_info.json entry may have, and those of columns and tags.
LLAMAFACTORY_ENTRY_KEYS = {
    "hf_hub_url", "ms_hub_url", "script_url", "file_name", "file_sha1", "subset", "folder", "ranking",
    "formatting", "split", "num_samples", "columns", "tags",
}  # fmt: skip
LLAMAFACTORY_COLUMNS = {
    "prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
    "chosen", "rejected", "kto_tag",
}  # fmt: skip
LLAMAFACTORY_TAGS = {
    "role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag",
}  # fmt: skip


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str, Path]:
    """The sample ingested, distilled (extractive), auto-reviewed and frozen by a passing release gate."""
    from expectations.runner import run_gate
    from review.policy import apply_auto_policy
    from tasks.distill.distill import distill, make_teacher
    from tasks.ingest.documents import ingest_file
    from tasks.train.dataset import freeze_dataset

    root = tmp_path_factory.mktemp("frozen")
    cfg = load_settings(root / "ws", per_fact=1)
    con = connect(cfg.warehouse_path)
    try:
        ingest_file(con, SAMPLE_MD, cfg)
        distill(con, cfg, make_teacher(cfg))
        apply_auto_policy(con)
        report = run_gate(con, cfg, "release")
        assert report.success, report.message
        info = freeze_dataset(con, cfg, report.gate_run_id)
    finally:
        con.close()
    return cfg, info.dataset_id, info.path


def _chat(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_llamafactory_export_matches_its_documented_schema_and_loads_with_datasets(
    frozen: tuple[Settings, str, Path], tmp_path: Path
) -> None:
    from datasets import load_dataset

    cfg, dataset_id, folder = frozen
    out = tmp_path / "data"
    out.mkdir()
    # LLaMA-Factory's own data/ folder already lists datasets: ours are added, theirs kept.
    (out / "dataset_info.json").write_text(
        json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}})
    )
    con = connect(cfg.warehouse_path, read_only=True)
    try:
        done = export_frozen_dataset(con, cfg, dataset_id[:8], "llamafactory", out)
    finally:
        con.close()
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["alpaca_en_demo"] == {"file_name": "alpaca_en_demo.json"}
    assert set(done.entries) == {f"slm-{dataset_id}", f"slm-{dataset_id}-valid"} <= set(info)
    originals = {split: _chat(folder / f"{split}.jsonl") for split in ("train", "valid")}
    for name in done.entries:
        entry = info[name]
        assert set(entry) <= LLAMAFACTORY_ENTRY_KEYS and entry["formatting"] == "sharegpt"
        assert set(entry["columns"]) <= LLAMAFACTORY_COLUMNS and set(entry["tags"]) <= LLAMAFACTORY_TAGS
        # Loaded as LLaMA-Factory loads a local file: datasets' json builder over dataset_dir/file_name.
        loaded = load_dataset("json", data_files=str(out / entry["file_name"]), split="train")
        columns, tags = entry["columns"], entry["tags"]
        assert {columns["messages"], columns["system"]} <= set(loaded.column_names)
        split = "valid" if name.endswith("-valid") else "train"
        assert len(loaded) == len(originals[split]) > 0
        for row, original in zip(loaded, originals[split], strict=True):
            turns = row[columns["messages"]]
            assert [t[tags["role_tag"]] for t in turns] == [tags["user_tag"], tags["assistant_tag"]]
            messages = original["messages"]
            assert row[columns["system"]] == messages[0]["content"]
            assert [t[tags["content_tag"]] for t in turns] == [m["content"] for m in messages[1:]]
    # Again: the same files, the other entries still there, no temporary file left behind.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    con = connect(cfg.warehouse_path, read_only=True)
    try:
        export_frozen_dataset(con, cfg, dataset_id, "llamafactory", out)
    finally:
        con.close()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_alpaca_and_sharegpt_files_follow_llamafactory_layouts(
    frozen: tuple[Settings, str, Path], tmp_path: Path
) -> None:
    from datasets import load_dataset

    _, dataset_id, folder = frozen
    train = _chat(folder / "train.jsonl")
    alpaca = export_dataset(folder, dataset_id, "alpaca", tmp_path / "alpaca")
    assert alpaca.counts["train"] == len(train) and not alpaca.entries
    rows = load_dataset("json", data_files=str(alpaca.files[0]), split="train")
    assert {"instruction", "input", "output", "system", "history"} <= set(rows.column_names)
    context_rows = 0
    for row, original in zip(rows, train, strict=True):
        system, user, assistant = original["messages"]
        # LLaMA-Factory's prompt is instruction + "\n" + input when input is set: ours is the user turn itself.
        assert (row["instruction"], row["input"], row["output"]) == (
            user["content"],
            "",
            assistant["content"],
        )
        assert row["system"] == system["content"] and row["history"] == []
        context_rows += "规定原文" in row["instruction"]
    assert context_rows > 0  # context copies keep their retrieved rules in the instruction

    sharegpt = export_dataset(folder, dataset_id, "sharegpt", tmp_path / "sharegpt")
    rows = load_dataset("json", data_files=str(sharegpt.files[0]), split="train")
    for row, original in zip(rows, train, strict=True):
        roles = [turn["from"] for turn in row["conversations"]]
        assert roles[0::2] == ["human"] * (len(roles) // 2) and roles[1::2] == ["gpt"] * (len(roles) // 2)
        assert row["system"] == original["messages"][0]["content"]


def test_hf_export_loads_with_load_from_disk(frozen: tuple[Settings, str, Path], tmp_path: Path) -> None:
    from datasets import load_from_disk

    _, dataset_id, folder = frozen
    out = tmp_path / "hf"
    export_dataset(folder, dataset_id, "hf", out)
    loaded = load_from_disk(str(out))
    records = read_records(folder)
    assert set(loaded) == {"train", "validation"}
    for split, name in (("train", "train"), ("valid", "validation")):
        assert loaded[name]["id"] == [r["id"] for r in records[split]]
        assert loaded[name]["messages"] == [r["messages"] for r in records[split]]
    # Exporting again replaces the earlier export; a folder holding something else is refused.
    export_dataset(folder, dataset_id, "hf", out)
    assert len(load_from_disk(str(out))["train"]) == len(records["train"])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(DatasetExportError, match="taken: not empty and not a saved Hugging Face dataset"):
        export_dataset(folder, dataset_id, "hf", taken)
    assert (taken / "notes.txt").read_text() == "mine"


def test_multi_turn_records_and_bad_records() -> None:
    record = {
        "id": "r1",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"},
        ],
    }
    assert to_alpaca(record) == {
        "id": "r1", "instruction": "Q2", "input": "", "output": "A2", "system": "S", "history": [["Q1", "A1"]],
    }  # fmt: skip
    assert [t["from"] for t in to_sharegpt(record)["conversations"]] == ["human", "gpt", "human", "gpt"]
    with pytest.raises(DatasetExportError, match=r"roles \['user'\]"):
        to_alpaca({"messages": [{"role": "user", "content": "Q"}]})


def test_bad_dataset_file_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "valid.jsonl").write_text("", encoding="utf-8")
    user, answer = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
    for line, message in (
        ("{not json", r"train.jsonl:1: not JSON"),
        (json.dumps({"messages": [user]}), r"train.jsonl:1: a row needs messages ending with the assistant"),
        (
            json.dumps({"id": "r7", "messages": [user, user, answer]}),
            r"train.jsonl: record r7: messages must be",
        ),
    ):
        (folder / "train.jsonl").write_text(line + "\n", encoding="utf-8")
        with pytest.raises(DatasetExportError, match=message):
            export_dataset(folder, "x", "alpaca", tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetExportError, match="format must be one of llamafactory, alpaca, sharegpt, hf"):
        export_dataset(folder, "x", "csv", tmp_path / "out")
    with pytest.raises(DatasetExportError, match="missing"):
        export_dataset(tmp_path / "gone", "x", "hf", tmp_path / "out")


def test_datasets_export_command(frozen: tuple[Settings, str, Path], tmp_path: Path) -> None:
    cfg, dataset_id, _ = frozen
    listed = slm("-w", str(cfg.workspace), "datasets", cwd=tmp_path, env={"COLUMNS": "250"})
    assert listed.returncode == 0 and dataset_id in listed.stdout
    done = slm(
        "-w", str(cfg.workspace), "datasets", "export", dataset_id[:6], "--format", "sharegpt", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    written = cfg.artifacts_dir / "dataset-exports" / f"{dataset_id}-sharegpt"
    assert (written / f"slm-{dataset_id}-sharegpt-train.json").is_file()
    unknown = slm("-w", str(cfg.workspace), "datasets", "export", "ffffffff", "--format", "hf", cwd=tmp_path)
    assert unknown.returncode == 2 and "dataset 'ffffffff' not found" in unknown.stderr
    bad = slm("-w", str(cfg.workspace), "datasets", "export", dataset_id, "--format", "csv", cwd=tmp_path)
    assert bad.returncode == 2 and "format must be one of" in bad.stderr
