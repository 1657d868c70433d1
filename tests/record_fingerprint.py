"""A fingerprint of what the pipeline makes of the bundled sample, offline and without training, and the
script that (re)records it in ``tests/data/sample_fingerprint.json``.

``sample_fingerprint(workdir)`` runs the pipeline's plain functions in a fresh workspace under ``workdir``
with the demo's settings (golden_size 24, answer_max_tokens 48), as ``bench/learning_curve.py`` prepares it:

- ingest ``examples/sample_rules.pdf`` (and, in a second warehouse, ``examples/sample_rules.md``): the ledger
  (documents, pages, chunks, facts: content columns only, no ids, paths or times), counted and hashed;
- register ``examples/sample_questions.jsonl`` in the golden set, extractive distillation, the pre-review
  gate, the ``auto`` review policy, the release gate: the qa rows (question, answer, evidence, kind,
  status, numbers, grounded) counted by status and kind and hashed, and each gate's outcomes;
- freeze the dataset: its id, counts and the sha256 of train.jsonl and valid.jsonl; the golden items;
- scores that need no model: every golden item (the hand-phrased file, and the held-out recall / reading
  splits) answered by scripted generators (``reference`` writes the reference answer, ``abstain`` says
  the abstention text, ``echo`` repeats its system prompt) through ``answer_batch`` in both modes (each
  mode on the items it is judged on), scored by ``evaluate`` in both families (model, shown) per
  question set, with the guard's action counts. Numbers are rounded to 4 places.

The script imports either code layout (the stage packages ``tasks.ingest.documents``, ``runtime.config``,
... or the flat modules before them: ``tasks.ingest``, ``tasks.config``, ...), always from the tree the
``tasks`` package on ``sys.path`` comes from, so a checkout of an older commit can be fingerprinted too:

    .venv/bin/python -m tests.record_fingerprint                 # rewrites tests/data/sample_fingerprint.json
    cd /tmp/pre && PYTHONPATH=/tmp/pre /work/main/.venv/bin/python /work/main/tests/record_fingerprint.py \\
        --out /tmp/pre_fp.json                                   # the code of another checkout
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

DEMO_SETTINGS = {"golden_size": 24, "answer_max_tokens": 48}  # what `make demo` writes to its slm.toml
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "sample_fingerprint.json"
PLACES = 4
PROJECT_PACKAGES = {"tasks", "runtime", "warehouse", "expectations", "review", "flows", "deployments"}

# Where each function lives: the stage layout first, then the flat layout before it (commit 9500925).
LOCATIONS: dict[str, tuple[str, ...]] = {
    "load_settings": ("runtime.config", "tasks.config"),
    "open_warehouse": ("warehouse.db",),
    "ingest_file": ("tasks.ingest.documents", "tasks.ingest"),
    "distill": ("tasks.distill.distill", "tasks.distill"),
    "make_teacher": ("tasks.distill.distill", "tasks.distill"),
    "run_gate": ("expectations.runner",),
    "apply_auto_policy": ("review.policy",),
    "freeze_dataset": ("tasks.train.dataset", "tasks.dataset"),
    "add_file": ("tasks.evaluate.golden", "tasks.golden"),
    "golden_items": ("tasks.evaluate.golden", "tasks.golden"),
    "answer_batch": ("tasks.answer.answer", "tasks.answer"),
    "ABSTAIN_TEXT": ("tasks.answer.answer", "tasks.answer"),
    "evaluate": ("tasks.evaluate.evaluate", "tasks.evaluate"),
    "judged_items": ("tasks.evaluate.evaluate", "tasks.evaluate"),
    "ledger_view": ("tasks.evaluate.evaluate", "tasks.evaluate"),
    "clear_chunk_cache": ("tasks.answer.retrieve", "tasks.retrieve"),
    "clear_fact_cache": ("tasks.answer.fact_retrieve", "tasks.fact_retrieve"),
}
ALIASES = {"clear_chunk_cache": "clear_cache", "clear_fact_cache": "clear_cache"}


def code_root() -> Path:
    """The checkout whose code is fingerprinted: where the importable ``tasks`` package lives."""
    import tasks

    return Path(tasks.__file__).resolve().parents[1]


def _module_in(root: Path, name: str) -> ModuleType | None:
    """``name`` imported, if it is a module or package of ``root`` (never one of another checkout)."""
    base = root.joinpath(*name.split("."))
    if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
        return None
    module = importlib.import_module(name)
    if not Path(module.__file__ or "").resolve().is_relative_to(root):
        raise ImportError(f"{name} was imported from {module.__file__}, not from {root}")
    return module


def pipeline_api(root: Path | None = None) -> dict[str, Any]:
    """Every function the fingerprint calls, from the layout ``root`` has."""
    root = root or code_root()
    api: dict[str, Any] = {}
    for key, names in LOCATIONS.items():
        attr = ALIASES.get(key, key)
        for name in names:
            module = _module_in(root, name)
            if module is not None and hasattr(module, attr):
                api[key] = getattr(module, attr)
                break
        else:
            raise ImportError(f"{attr} is in none of {', '.join(names)} under {root}")
    return api


# --- stable views of what the pipeline wrote ------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready, floats rounded, containers recursed (tuples as lists, dict keys as strings)."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return round(value, PLACES)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=_key) if isinstance(value, set | frozenset) else items
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)


def _key(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _digest(rows: list[Any]) -> str:
    """sha256 over the rows, sorted, one canonical JSON line each."""
    lines = sorted(_key(_plain(r)) for r in rows)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _rows(con: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in con.execute(sql).fetchall()]


def ledger(con: Any) -> dict[str, Any]:
    """Documents, pages, chunks and facts by content (document name, heading path, values, unit, subject...)."""
    documents = _rows(
        con,
        "SELECT name, kind, size_bytes, encoding, page_count, char_count, sha256(coalesce(text, '')),"
        " status, error FROM documents",
    )
    pages = _rows(
        con,
        "SELECT d.name, p.page_no, p.start_char, p.char_count FROM pages p JOIN documents d USING (doc_id)",
    )
    chunks = _rows(
        con,
        "SELECT d.name, c.seq, c.heading_path, c.text, c.start_char, c.end_char, c.page_start, c.page_end"
        " FROM chunks c JOIN documents d USING (doc_id)",
    )
    facts = _rows(
        con,
        "SELECT d.name, c.seq, c.heading_path, f.value, f.value_max, f.unit, f.raw, f.qualifier, f.subject,"
        " f.context, f.span_start, f.span_end"
        " FROM facts f JOIN chunks c ON c.chunk_id = f.chunk_id JOIN documents d ON d.doc_id = f.doc_id",
    )
    return {
        "documents": len(documents),
        "documents_sha256": _digest(documents),
        "pages": len(pages),
        "pages_sha256": _digest(pages),
        "chunks": len(chunks),
        "chunks_sha256": _digest(chunks),
        "facts": len(facts),
        "facts_by_unit": dict(Counter(f[5] for f in facts)),
        "facts_sha256": _digest(facts),
    }


def qa_rows(con: Any) -> dict[str, Any]:
    rows = _rows(
        con,
        "SELECT question, answer, evidence, kind, status, list_sort(numbers), grounded, is_numeric,"
        " evidence_found, unsure FROM qa_rows",
    )
    return {
        "count": len(rows),
        "by_status": dict(Counter(r[4] for r in rows)),
        "by_kind": dict(Counter(r[3] for r in rows)),
        "sha256": _digest(rows),
    }


def gate(report: Any) -> dict[str, Any]:
    """A gate's outcome without its run id, data docs path or offending row ids."""
    return {
        "success": report.success,
        "row_count": report.row_count,
        "conflicts": dict(report.conflicts),
        "moved_to_review": report.moved_to_review,
        "outcomes": [
            {
                "expectation": o.expectation,
                "column": o.column,
                "success": o.success,
                "observed": o.observed,
                "unexpected_count": o.unexpected_count,
            }
            for o in report.outcomes
        ],
        "offending_questions": sorted(str(r.get("question")) for r in report.offending),
    }


def dataset(info: Any, con: Any) -> dict[str, Any]:
    files = {
        name: hashlib.sha256((info.path / name).read_bytes()).hexdigest()
        for name in ("train.jsonl", "valid.jsonl")
    }
    records = sum(
        1 for name in files for line in (info.path / name).read_text("utf-8").splitlines() if line.strip()
    )
    (counts,) = con.execute("SELECT counts FROM datasets WHERE dataset_id = ?", [info.dataset_id]).fetchone()
    return {
        "dataset_id": info.dataset_id,
        "row_count": info.row_count,
        "train_count": info.train_count,
        "valid_count": info.valid_count,
        "numeric_share": info.numeric_share,
        "records": records,
        "counts": json.loads(counts) if isinstance(counts, str) else counts,
        "files_sha256": files,
    }


def golden(items: list[Any]) -> dict[str, Any]:
    rows = [(i.question, i.answer, sorted(i.numbers), i.type, i.doc, i.source, i.split) for i in items]
    return {
        "count": len(rows),
        "by_set": dict(Counter(f"{i.source.split(':')[0]}:{i.split or '-'}" for i in items)),
        "sha256": _digest(rows),
    }


def scripted(items: list[Any], abstain_text: str) -> dict[str, Callable[..., str]]:
    """Deterministic "models" (as ``bench/guard.py``): the reference answer, an abstention, an echo."""
    reference = {i.question: i.answer for i in items}

    def asked(messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"].rsplit("问题：", 1)[-1].strip()

    return {
        "reference": lambda messages, max_tokens, grammar=None: reference.get(asked(messages), abstain_text),
        "abstain": lambda messages, max_tokens, grammar=None: abstain_text,
        "echo": lambda messages, max_tokens, grammar=None: messages[0]["content"],
    }


# --- the fingerprint -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _isolated(folder: Path) -> Iterator[None]:
    """No ``SLM_*`` variable and no ``slm.toml`` of the caller's folder reach the settings."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SLM_")}
    cwd = Path.cwd()
    for k in saved:
        del os.environ[k]
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.update(saved)


def sample_fingerprint(workdir: Path | str) -> dict[str, Any]:
    """What the pipeline makes of the bundled sample (see the module docstring); ``workdir`` holds the
    workspaces and must be empty or absent. Nothing in the result depends on time, paths or run ids."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = code_root()
    api = pipeline_api(root)
    examples = root / "examples"
    pdf, md, hand = (
        examples / "sample_rules.pdf",
        examples / "sample_rules.md",
        examples / "sample_questions.jsonl",
    )
    with _isolated(workdir):
        api["clear_chunk_cache"]()
        api["clear_fact_cache"]()
        fingerprint: dict[str, Any] = {"settings": dict(DEMO_SETTINGS)}

        md_settings = api["load_settings"](workdir / "ws-md", **DEMO_SETTINGS)
        with api["open_warehouse"](md_settings.warehouse_path) as con:
            result = api["ingest_file"](con, md, md_settings)
            fingerprint["ledger_md"] = {"ingest": [result.status, result.pages, result.chunks, result.facts]}
            fingerprint["ledger_md"].update(ledger(con))

        settings = api["load_settings"](workdir / "ws", **DEMO_SETTINGS)
        with api["open_warehouse"](settings.warehouse_path) as con:
            result = api["ingest_file"](con, pdf, settings)
            fingerprint["ledger"] = {"ingest": [result.status, result.pages, result.chunks, result.facts]}
            fingerprint["ledger"].update(ledger(con))

            added = api["add_file"](con, hand)
            summary = api["distill"](con, settings, api["make_teacher"](settings, "extractive"))
            fingerprint["distill"] = {
                "hand_questions_added": added,
                "chunks": summary.chunks,
                "failed": summary.failed,
                "rows_added": summary.rows_added,
            }
            fingerprint["rows_distilled"] = qa_rows(con)
            pre = api["run_gate"](con, settings, "pre_review")
            auto = api["apply_auto_policy"](con, settings.similarity_threshold)
            fingerprint["rows_after_auto_review"] = qa_rows(con)
            release = api["run_gate"](con, settings, "release")
            fingerprint["gates"] = {
                "pre_review": gate(pre),
                "auto_policy": dict(auto),
                "release": gate(release),
            }
            if not release.success:
                raise RuntimeError(f"release gate failed: {release.message}")
            info = api["freeze_dataset"](con, settings, release.gate_run_id)
            fingerprint["dataset"] = dataset(info, con)
            items = api["golden_items"](con)
            fingerprint["golden"] = golden(items)

            view = api["ledger_view"](con)
            scores: dict[str, Any] = {}
            for model, generator in scripted(items, api["ABSTAIN_TEXT"]).items():
                for mode in ("closed_book", "grounded"):
                    judged = api["judged_items"](items, mode)
                    batch = api["answer_batch"](generator, con, mode, settings.answer_max_tokens)
                    result = api["evaluate"](judged, batch, view)
                    scores[f"{model}|{mode}"] = {
                        "per_set": result.metrics["per_set"],
                        "guard_actions": result.metrics["guard_actions"],
                    }
            fingerprint["scores"] = scores
    return _plain(fingerprint)


def differences(recorded: dict[str, Any], now: dict[str, Any], where: str = "") -> list[str]:
    """Where two fingerprints differ, one line per leaf: "scores.reference|grounded.per_set...: a -> b"."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        lines: list[str] = []
        for key in sorted(set(recorded) | set(now)):
            path = f"{where}.{key}" if where else key
            if key not in now:
                lines.append(f"{path}: missing now (recorded {_key(recorded[key])[:120]})")
            elif key not in recorded:
                lines.append(f"{path}: new (not recorded): {_key(now[key])[:120]}")
            else:
                lines += differences(recorded[key], now[key], path)
        return lines
    if recorded != now:
        return [f"{where}: recorded {_key(recorded)[:160]} -> now {_key(now)[:160]}"]
    return []


def foreign_modules(root: Path) -> list[str]:
    """Modules of the project's packages that were imported from another checkout than ``root``."""
    return [
        f"{name} ({module.__file__})"
        for name, module in sorted(sys.modules.items())
        if name.split(".")[0] in PROJECT_PACKAGES
        and getattr(module, "__file__", None)
        and not Path(module.__file__).resolve().is_relative_to(root)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # offline
    root = code_root()
    print(f"code: {root} (tasks from {sys.modules['tasks'].__file__})", flush=True)
    with tempfile.TemporaryDirectory(prefix="sample-fingerprint-") as tmp:
        fingerprint = sample_fingerprint(Path(tmp) / "work")
    strays = foreign_modules(root)
    if strays:
        raise SystemExit(f"project modules imported from outside {root}: {', '.join(strays)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fingerprint, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    ledger_part, dataset_part = fingerprint["ledger"], fingerprint["dataset"]
    print(
        f"{args.out}: {ledger_part['facts']} facts, {fingerprint['rows_after_auto_review']['count']} rows, "
        f"dataset {dataset_part['dataset_id']} ({dataset_part['row_count']} rows)"
    )


if __name__ == "__main__":
    main()
