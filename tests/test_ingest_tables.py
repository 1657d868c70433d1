"""Rate tables become ledger facts whose subject names their row and column ("北京 住宿费 三类人员" -> 500元).

Documents made here (tests/data/make_rate_tables.py): the same travel rules as a PDF whose ruled table has
merged header cells and a "单位：元" line and runs on over two pages (its header printed again there, or
not), and as a Word file with the header merged the Word way. All give the same ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import duckdb
import pymupdf
import pytest

from runtime.config import load_settings
from tasks.ingest.documents import ingest_file
from tasks.ingest.tables import read_pdf_page, table_text
from tests.conftest import corpus_path
from tests.data.make_rate_tables import expected_cells, rate_rows, rate_table_docx, rate_table_pdf
from warehouse import ledger
from warehouse.db import connect

DOCUMENTS = {
    "rates.pdf": lambda: rate_table_pdf(repeat_header=True),
    "rates-no-repeat.pdf": lambda: rate_table_pdf(repeat_header=False),
    "rates.docx": rate_table_docx,
}
CELLS = len(expected_cells())  # 36 regions x 4 value columns


@pytest.fixture(scope="module")
def warehouse_con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """One warehouse for the module: the three documents are ingested once (tables cost a second a page)."""
    settings = load_settings(tmp_path_factory.mktemp("tables") / "ws")
    connection = connect(settings.warehouse_path)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ingested(
    tmp_path_factory: pytest.TempPathFactory, warehouse_con: duckdb.DuckDBPyConnection
) -> dict[str, list[dict]]:
    """Each document ingested: its facts by file name; the results' messages under "messages"."""
    folder = tmp_path_factory.mktemp("documents")
    settings = load_settings(folder / "ws")
    out: dict[str, list[dict]] = {}
    for name, make in DOCUMENTS.items():
        path = folder / name
        path.write_bytes(make())
        result = ingest_file(warehouse_con, path, settings)
        assert result.status == "added", result.message
        out[name] = ledger.list_facts(warehouse_con, name)
        out.setdefault("messages", []).append(result.message)  # type: ignore[arg-type]
    return out


def test_every_cell_is_one_fact_named_by_its_row_and_column(ingested: dict[str, list[dict]]) -> None:
    for name in DOCUMENTS:
        by_subject = Counter((f["subject"], f["value"], f["unit"]) for f in ingested[name])
        for (region, column), value in expected_cells().items():
            # Exactly once: the table's cells are not also read a second time as flat page text.
            assert by_subject[(f"{region} {column}", value, "元")] == 1, (name, region, column, value)
        facts = {f["subject"]: f for f in ingested[name]}
        lodging = facts["北京 住宿费 三类人员"]
        assert (lodging["value"], lodging["unit"]) == ("500", "元")
        assert "三类人员" in lodging["context"] and "住宿费" in lodging["context"]
        assert lodging["heading_path"].endswith("第三条")
        assert facts["西藏 伙食补助费"]["value"] == "120"
        assert facts["新疆 住宿费 一类人员"]["value"] == "750"  # a row on the table's second page
        # The running text around the table keeps its facts as before.
        assert any(f["value"] == "80" and f["unit"] == "元/人·天" for f in ingested[name])
        assert any(f["value"] == "30" and f["unit"] == "天" for f in ingested[name])


def test_a_table_fact_keeps_its_cell(ingested: dict[str, list[dict]]) -> None:
    """Row and column of the number in its table as printed (header rows counted), "" for running text."""
    columns = {"住宿费 一类人员": 2, "住宿费 二类人员": 3, "住宿费 三类人员": 4, "伙食补助费": 5}
    regions = [region for region, *_ in rate_rows()]
    for name in DOCUMENTS:
        table = [f for f in ingested[name] if f["cell"]]
        assert len(table) == CELLS and {f["cell"] for f in ingested[name] if f not in table} == {""}
        for fact in table:
            region, column = fact["subject"].split(" ", 1)
            row, col = map(int, fact["cell"][1:].split("c"))
            assert col == columns[column], (name, fact["subject"], fact["cell"])
            if name == "rates.docx":  # one table on one page: two header rows, then the regions in order
                assert row == 3 + regions.index(region), (fact["subject"], fact["cell"])
    word = {f["subject"]: f["cell"] for f in ingested["rates.docx"]}
    assert word["北京 住宿费 三类人员"] == "r3c4"


def test_pdf_and_word_give_the_same_ledger(ingested: dict[str, list[dict]]) -> None:
    def ledger_of(name: str) -> Counter:
        return Counter((f["value"], f["value_max"], f["unit"], f["subject"]) for f in ingested[name])

    assert ledger_of("rates.pdf") == ledger_of("rates.docx")
    assert ledger_of("rates-no-repeat.pdf") == ledger_of("rates.docx")
    assert sum(ledger_of("rates.docx").values()) == CELLS + 2  # the table, 80元 and 30日


def test_result_says_which_route_read_the_facts(ingested: dict[str, list[dict]]) -> None:
    messages = ingested["messages"]
    pdf, _, word = messages  # type: ignore[misc]
    assert "pdf text+tables, 2 pages, " in pdf and pdf.endswith(f"{CELLS + 2} facts (text 2, tables {CELLS})")
    assert "docx+tables, 1 pages, " in word and word.endswith(f"(text 2, tables {CELLS})")


def test_facts_on_the_second_page_keep_their_page(
    ingested: dict[str, list[dict]], warehouse_con: duckdb.DuckDBPyConnection
) -> None:
    # A fact's page: the last page starting at or before its number (the ledger's one page rule).
    pages = dict(
        warehouse_con.execute(
            "SELECT f.subject, (SELECT max(p.page_no) FROM pages p WHERE p.doc_id = f.doc_id"
            "  AND p.start_char <= c.start_char + f.span_start)"
            " FROM facts f JOIN chunks c ON c.chunk_id = f.chunk_id JOIN documents d ON d.doc_id = f.doc_id"
            " WHERE d.name = 'rates.pdf'"
        ).fetchall()
    )
    assert pages["北京 住宿费 三类人员"] == 1
    assert pages["新疆 住宿费 三类人员"] == 2


def test_pdf_page_text_has_the_table_once_as_row_lines() -> None:
    doc = pymupdf.open(stream=rate_table_pdf(repeat_header=True), filetype="pdf")
    first = read_pdf_page(doc[0])
    second = read_pdf_page(doc[1], first.open_table)
    assert first.open_table is not None  # the table reaches the foot of page 1
    assert "北京 住宿费 一类人员1100元；北京 住宿费 二类人员650元；北京 住宿费 三类人员500元；" in first.text
    assert "\n1100 \n" not in first.text and first.text.count("1100") == 1
    # Page 2 repeats the header: it is dropped, the rows are named with page 1's header.
    assert "地区" not in second.text and "新疆 伙食补助费120元。" in second.text
    assert second.text.index("新疆") < second.text.index("第四条")  # the text after the table stays after it
    assert second.open_table is None


def test_table_text_merged_headers_units_and_numbering() -> None:
    grid = [
        ["差旅费开支标准（单位：元）", None, None, None],
        ["序号", "地区", "住宿费", None],
        [None, None, "处级", "其他人员"],
        ["1", "北京", "650", "500"],
        ["2", "西藏", "500", None],  # a value merged over two columns is one fact, not two
    ]
    table = table_text(grid)
    assert table.lines[0] == "差旅费开支标准（单位：元）" and table.unit == "元"
    assert table.lines[-2] == "北京 住宿费 处级650元；北京 住宿费 其他人员500元。"
    # the cells' subjects and places: row 4 (caption and two header rows above), columns 3 and 4
    assert table.row_cells[table.lines[-2]] == (("北京 住宿费 处级", 4, 3), ("北京 住宿费 其他人员", 4, 4))
    assert table.lines[-1] == "西藏 住宿费 处级500元。"
    # Units in a column header apply to that column; a table running on reuses the header and unit.
    more = table_text([["序号", "地区", "住宿费", None], ["3", "上海", "600", "450"]], continues=table)
    assert more.lines == ["上海 住宿费 处级600元；上海 住宿费 其他人员450元。"]
    per_column = table_text([["城市", "住宿费（元/人·天）", "备注"], ["拉萨", "500", "旺季上浮"]])
    assert per_column.lines[-1] == "拉萨 住宿费500元/人·天；拉萨 备注 旺季上浮。"
    # A region merged down over its cities names each of their rows.
    regions = table_text(
        [["地区", "城市", "住宿费（元）"], ["西藏", "拉萨", "500"], [None, "其他地区", "350"]]
    )
    assert regions.lines[-2:] == ["西藏 拉萨 住宿费500元。", "西藏 其他地区 住宿费350元。"]
    assert [c.subject for c in regions.row_cells["西藏 其他地区 住宿费350元。"]] == ["西藏 其他地区 住宿费"]


def test_corpus_table_running_over_two_pages_gets_row_and_column_subjects() -> None:
    """07_sdvcst p.83-84: a percentage table whose second page has no header; before tables were read,
    its numbers had subjects like "0%10%结余部分计算机等级考试"."""
    path = corpus_path("pdfs", "07_sdvcst_finance_management_rules.pdf")
    doc = pymupdf.open(path)
    page83 = read_pdf_page(doc[82])
    page84 = read_pdf_page(doc[83], page83.open_table)
    subjects = {
        c.subject for t in (*page83.tables, *page84.tables) for row in t.row_cells.values() for c in row
    }
    assert {"社会培训 上缴学校经费", "社会培训 主办部门经费", "托福考试 上缴学校经费"} <= subjects
    assert "房屋、资产租赁 上缴学校经费100%；" in page84.text
    assert "社会服务项目" not in page84.text  # page 84 continues the table, it does not start one
