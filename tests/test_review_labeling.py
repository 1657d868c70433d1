"""The review interface: the labelling config parses, numbers are highlighted and everything else escaped,
task ids are stable."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from label_studio_sdk.label_interface import LabelInterface

from review.facts import MAX_FACTS_PER_TASK
from review.labeling import (
    COMMENT,
    CORRECTED_ANSWER,
    CORRECTED_NUMBERS,
    CORRECTED_SUBJECT,
    FACT_NUMBERS,
    FACT_SUBJECT,
    FACT_VERDICT,
    VERDICT,
    label_config,
    marked_html,
    task_for_row,
    task_key,
)

CHUNK = {
    "text": "第五条 报销时限：\n一、应当在经济业务发生之日起三个月内办理报销手续。\n"
    "二、单张发票金额在1,200元以上的，应附<清单>；住宿费每人每天 500 元 & 以下。",
    "heading_path": "第一章 总则 > 第五条",
    "doc_name": "报销细则<v2>.pdf",
}
ROW = {
    "row_id": "r-1",
    "question": "单张发票多少钱以上要附清单？",
    "answer": "单张发票金额在1,200元以上的，应附清单。",
    "numbers": ["1200"],
    "verify_notes": "",
}


def test_config_parses_with_required_verdict_and_hotkeys() -> None:
    config = label_config()
    root = ET.fromstring(config)
    choices = root.find(f".//Choices[@name='{VERDICT}']")
    assert choices is not None and choices.get("required") == "true"
    assert {c.get("value"): c.get("hotkey") for c in choices.findall("Choice")} == {
        "accept": "a",
        "correct": "c",
        "reject": "r",
    }
    areas = {t.get("name") for t in root.iter("TextArea")}
    per_fact = {
        f"{FACT_NUMBERS}{{{{idx}}}}",
        f"{FACT_SUBJECT}{{{{idx}}}}",
    }  # repeated for each fact of a task
    assert areas == {CORRECTED_ANSWER, CORRECTED_NUMBERS, CORRECTED_SUBJECT, COMMENT} | per_fact
    assert root.find(".//HyperText[@name='source']").get("value") == "$source_html"
    interface = LabelInterface(config)  # Label Studio's own parser accepts it and links controls to objects
    assert {c.name for c in interface.controls} >= {VERDICT, CORRECTED_ANSWER}


def test_every_key_does_one_thing_for_a_fact_task_of_ten_numbers() -> None:
    # Label Studio's Repeater puts each fact's index in place of {{idx}} (its first occurrence in an attribute).
    root = ET.fromstring(label_config())
    repeated = root.find(".//Repeater")
    assert repeated is not None and repeated.get("on") == "$facts"
    keys = [
        c.get("hotkey") for c in root.iter("Choice") if c.get("hotkey") and "{{idx}}" not in c.get("hotkey")
    ]
    for i in range(MAX_FACTS_PER_TASK):
        keys += [
            c.get("hotkey").replace("{{idx}}", str(i), 1) for c in repeated.iter("Choice") if c.get("hotkey")
        ]
    assert len(keys) == len(set(keys)) == 3 + 2 * MAX_FACTS_PER_TASK
    names = [c.get("name") for c in repeated.iter("Choices")]
    assert names == [f"{FACT_VERDICT}{{{{idx}}}}"]


def test_task_validates_against_the_config() -> None:
    task = task_for_row(ROW, CHUNK, "rb-1")
    # Every value the interface shows is in the task; a row task repeats no fact block (the SDK's own
    # validate_task does not know Repeater: Label Studio's server imports these in the review tests).
    shown = [o.value_name for o in LabelInterface(label_config()).objects]
    assert all(task.get(v) is not None for v in shown if not v.startswith("facts["))
    assert task["facts"] == []


def test_row_numbers_are_marked_in_the_chunk_and_the_rest_escaped() -> None:
    task = task_for_row(ROW, CHUNK, "rb-1")
    source = task["source_html"]
    assert source.count("<mark") == 1
    assert ">1,200元</mark>" in source
    assert "&lt;清单&gt;" in source and "<清单>" not in source
    assert "&amp; 以下" in source
    assert "<br/>" in source  # line breaks of the chunk survive
    assert "500 元" in source and ">500 元</mark>" not in source  # not a number of this row
    assert ">1,200元</mark>" in task["answer_html"]
    assert "报销细则&lt;v2&gt;.pdf" in task["where_html"] and "第一章 总则 &gt; 第五条" in task["where_html"]
    assert task["row_id"] == "r-1" and task["batch_id"] == "rb-1"


def test_chinese_numerals_and_ranges_are_found_by_the_one_parser() -> None:
    html_text, found = marked_html("应在三个月内办理；标准为1500-2400元。", ["3", "2400"])
    assert ">三个月</mark>" in html_text and ">1500-2400元</mark>" in html_text
    assert {str(v) for v in found} == {"3", "2400"}


def test_numbers_not_in_the_source_are_called_out() -> None:
    row = {**ROW, "answer": "单张发票金额在1,500元以上。", "numbers": ["1500"]}
    task = task_for_row(row, CHUNK, "rb-1")
    assert "<mark" not in task["source_html"]
    assert "Not in the source: 1500" in task["notes_html"]


def test_task_ids_are_stable() -> None:
    first = task_for_row(ROW, CHUNK, "rb-1")
    assert task_for_row(dict(ROW), dict(CHUNK), "rb-1") == first
    assert first["task_key"] == task_key("r-1", "rb-1")
    assert task_key("r-1", "rb-2") != first["task_key"] and task_key("r-2", "rb-1") != first["task_key"]
