"""Fact-first review with a REAL Label Studio server (issue #17): push a batch of the sample, annotate its fact
tasks (one per source sentence, each fact with its own verdict: one correct, one corrected value, one not a
rule, the rest correct) and its row tasks through the API,
sync, and check that every row's status and reviewer follows from those verdicts exactly; pushing and syncing
again changes nothing."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest

from review import push, server, sync
from review.facts import VERIFIER_VERSION
from tests.conftest import quick_labelstudio_settings, require_labelstudio
from tests.test_review_facts import (
    expected_statuses,
    fact_task_results,
    fact_verdicts,
    pick_facts,
    row_results,
    sample_plan,
    snapshot,
    statuses,
    waiting_needs,
)
from warehouse import review as queries
from warehouse.db import connect

ADMIN = "admin@slm-factory.local"


def _data(task: Any) -> dict[str, Any]:
    return task.data if hasattr(task, "data") else task["data"]


@pytest.mark.slow
def test_fact_first_batch_round_trip_with_a_real_label_studio(tmp_path: Path, stop_later) -> None:
    settings = quick_labelstudio_settings(tmp_path)
    require_labelstudio(settings, on_progress=print)
    stop_later(lambda: server.stop(settings))
    con = connect(settings.warehouse_path)
    try:
        server.start(settings, on_progress=print)
        client = server.client_for(settings)

        plan = sample_plan(con, settings)  # what the push will hold (it plans the same way)
        needs = waiting_needs(con)
        picked = pick_facts(con, plan.fact_ids, needs)
        before = statuses(con)

        batch = push.push_batch(con, settings, client, "flow-A")
        assert batch is not None and batch.created
        assert (batch.fact_tasks, batch.row_tasks) == (len(plan.fact_tasks), len(plan.row_ids))
        assert len(plan.fact_tasks) < len(plan.fact_ids)  # one task per sentence
        # The corrected fact shares its task with others: its verdict travels in its own field.
        assert any(len(t) > 1 for t in plan.fact_tasks if picked["fix"]["fact_id"] in t)
        assert batch.row_count == batch.new_tasks == plan.tasks and batch.rows_decided == plan.rows_decided
        again = push.push_batch(con, settings, client, "flow-B")
        assert (
            again is not None
            and not again.created
            and again.new_tasks == 0
            and again.batch_id == batch.batch_id
        )

        tasks = list(client.tasks.list(project=batch.ls_project_id, fields="all"))
        assert len(tasks) == plan.tasks  # no duplicate
        by_key = {_data(t).get("row_id") or tuple(_data(t)["fact_ids"]): t for t in tasks}
        assert set(by_key) == {*plan.fact_tasks, *plan.row_ids}
        for row_id in plan.row_ids:  # row tasks carry the ledger's suggestion as a prediction
            predictions = [
                p if isinstance(p, dict) else p.model_dump() for p in by_key[row_id].predictions or []
            ]
            assert [p["model_version"] for p in predictions] == [VERIFIER_VERSION]
            assert predictions[0]["result"][0]["value"]["choices"] == [plan.suggested[row_id]]

        # A fact task shows, read-only, the questions of the rows its verdict decides.
        ok = picked["ok"]["fact_id"]
        (holding,) = [t for t in plan.fact_tasks if ok in t]
        waiting = [r for r, ns in needs.items() if any(ok in n for n in ns)]
        question = con.execute("SELECT question FROM qa_rows WHERE row_id = ?", [waiting[0]]).fetchone()[0]
        shown = _data(by_key[holding])
        assert html.escape(question) in shown["notes_html"]
        assert f">{html.escape(picked['ok']['raw'])}</mark>" in shown["source_html"]
        assert [f["fact_id"] for f in shown["facts"]] == list(holding)  # each fact its own verdict field

        # Each fact task answered with each fact's own verdict (the three picked ones marked on their own).
        results = dict(
            zip(plan.fact_tasks, fact_task_results(plan.fact_tasks, fact_verdicts(plan, picked)), strict=True)
        )
        rows = row_results(plan)
        for key, task in by_key.items():
            client.annotations.create(id=task.id, result=results.get(key) or rows[key])
        progress = sync.batch_progress(con, settings, client, batch.batch_id)
        assert progress.complete and progress.tasks == plan.tasks

        result = sync.sync_batch(con, settings, client, batch.batch_id)
        assert result.status == "synced" and result.flagged == []
        assert result.applied["fact_corrected"] == 1 and result.applied["fact_not_a_rule"] == 1
        assert result.prediction_changed == (1 if plan.row_ids else 0)
        expected = expected_statuses(needs, picked, rows, ADMIN, set(plan.fact_ids))
        after = statuses(con)
        assert {r: after[r] for r in expected} == expected
        untouched = {r: s for r, s in before.items() if r not in expected}
        assert {r: s for r, s in after.items() if r not in expected} == untouched
        kinds = {s for s, _ in expected.values()}
        assert {"approved", "rejected", "needs_review"} <= kinds  # each verdict decided some row
        fixed = {v["fact_id"]: v for v in queries.fact_verdicts(con)}[picked["fix"]["fact_id"]]
        assert (
            fixed["original_value"] == picked["fix"]["value"] and fixed["value"] == picked["fix"]["new_value"]
        )
        assert fixed["annotator"] == ADMIN

        # Syncing again changes nothing.
        frozen = snapshot(con)
        for _ in range(2):
            again_sync = sync.sync_batch(con, settings, client, batch.batch_id)
            assert again_sync.applied == {} and again_sync.ledger == {}
            assert again_sync.unchanged == len(plan.row_ids) + len(plan.fact_ids)  # each fact's verdict
            assert snapshot(con) == frozen
        economy = {e["batch_id"]: e for e in queries.batch_economy(con)}[batch.batch_id]
        assert (economy["fact_tasks"], economy["row_tasks"]) == (len(plan.fact_tasks), len(plan.row_ids))
        assert economy["facts_asked"] == len(plan.fact_ids)

        # The rows the correction sent back go to people as row tasks; pushing twice makes one batch.
        rerouted = sorted(r for r, (s, _) in expected.items() if s == "needs_review")
        follow = push.push_batch(con, settings, client, "flow-C")
        assert (
            follow is not None
            and follow.created
            and (follow.fact_tasks, follow.row_tasks) == (0, len(rerouted))
        )
        same = push.push_batch(con, settings, client, "flow-C")
        assert (
            same is not None and not same.created and same.batch_id == follow.batch_id and same.new_tasks == 0
        )
        assert snapshot(con) == frozen
    finally:
        server.stop(settings)
        con.close()
