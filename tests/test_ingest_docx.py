"""Word files (.docx) take the same road as a PDF: headings, 第X条 paragraphs, automatic list numbers and
tables become one text that is chunked and read for facts the same way. Files no route reads are listed as
skipped with the reason; damaged, encrypted, empty and zip-bomb .docx files are refused naming the file."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import docx
import duckdb
import pytest
from docx.oxml import parse_xml
from docx.oxml.ns import nsdecls

from runtime.config import Settings
from tasks.ingest import extract as extract_module
from tasks.ingest.documents import ingest_file, ingest_paths
from tasks.ingest.extract import content_id
from tests.test_cli import slm
from warehouse import ledger

RATES = [
    ["人员类别", "住宿费（元/人·天）", "伙食补助费（元/人·天）"],
    ["三类人员", "500", "100"],
    ["二类人员", "350", "80"],
]

# The same rules as a person would write them in Markdown, the table stated in words.
RULES_MD = (
    """# 第一章 总则

第一条 为规范差旅费管理，制定本办法。

# 第二章 开支标准

第二条 出差人员市内交通费每人每天80元。

第三条 住宿费和伙食补助费标准如下："""
    "三类人员住宿费每人每天500元，伙食补助费每人每天100元；"
    """二类人员住宿费每人每天350元，伙食补助费每人每天80元。

第四条 差旅费报销须在出差结束后30日内办理。
"""
)


def _rules_docx() -> bytes:
    document = docx.Document()
    document.add_heading("第一章 总则", 1)
    document.add_paragraph("第一条 为规范差旅费管理，制定本办法。")
    document.add_heading("第二章 开支标准", 1)
    document.add_paragraph("第二条 出差人员市内交通费每人每天80元。")
    document.add_paragraph("第三条 住宿费和伙食补助费标准如下：")
    table = document.add_table(rows=len(RATES), cols=len(RATES[0]))
    for r, row in enumerate(RATES):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("第四条 差旅费报销须在出差结束后30日内办理。")
    return _save(document)


def _save(document) -> bytes:
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _facts(con: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    return ledger.list_facts(con, name)


def test_docx_chunks_and_facts_keep_headings_and_table_words(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    path = _write(tmp_path / "in", "rules.docx", _rules_docx())
    result = ingest_file(con, path, settings)
    assert result.status == "added", result.message
    assert result.message.startswith(f"{path}: docx+tables, 1 pages")
    assert result.message.endswith("6 facts (text 2, tables 4)")  # the route that read each fact

    paths = [row[0] for row in con.execute("SELECT heading_path FROM chunks ORDER BY seq").fetchall()]
    assert paths == [
        "第一章 总则 > 第一条",
        "第二章 开支标准 > 第二条",
        "第二章 开支标准 > 第三条",
        "第二章 开支标准 > 第四条",
    ]
    facts = _facts(con, "rules.docx")
    table = {(f["value"], f["unit"]): f for f in facts if f["heading_path"].endswith("第三条")}
    assert set(table) == {("500", "元/人·天"), ("100", "元/人·天"), ("350", "元/人·天"), ("80", "元/人·天")}
    # Each number keeps its row and its column: what it is for and for whom.
    assert (
        "三类人员" in table[("500", "元/人·天")]["subject"]
        and "住宿费" in table[("500", "元/人·天")]["subject"]
    )
    assert "三类人员" in table[("100", "元/人·天")]["subject"]
    assert "伙食补助费" in table[("100", "元/人·天")]["subject"]
    assert (
        "二类人员" in table[("350", "元/人·天")]["subject"]
        and "住宿费" in table[("350", "元/人·天")]["subject"]
    )
    assert con.execute(
        "SELECT kind FROM documents WHERE doc_id = ?", [content_id(path.read_bytes())]
    ).fetchone() == ("docx",)


def test_docx_and_markdown_of_the_same_rules_give_the_same_facts(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    word = _write(tmp_path / "in", "rules.docx", _rules_docx())
    markdown = _write(tmp_path / "in", "rules.md", RULES_MD.encode())
    assert ingest_file(con, word, settings).status == "added"
    assert ingest_file(con, markdown, settings).status == "added"

    def value_units(name: str) -> Counter:
        return Counter((f["value"], f["unit"]) for f in _facts(con, name))

    assert value_units("rules.docx") == value_units("rules.md")
    assert value_units("rules.docx")[("30", "天")] == 1

    def heading_paths(name: str) -> list[str]:
        return [
            row[0]
            for row in con.execute(
                "SELECT heading_path FROM chunks JOIN documents USING (doc_id) WHERE name = ? ORDER BY seq",
                [name],
            ).fetchall()
        ]

    assert heading_paths("rules.docx") == heading_paths("rules.md")


def test_automatic_numbering_gives_article_numbers(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    """Word numbers articles itself (第%1条, chineseCounting): the text has no 第X条, numbering.xml has."""
    document = docx.Document()
    numbering = document.part.numbering_part.element
    numbering.insert(
        0,
        parse_xml(
            f'<w:abstractNum {nsdecls("w")} w:abstractNumId="90"><w:lvl w:ilvl="0"><w:start w:val="1"/>'
            '<w:numFmt w:val="chineseCounting"/><w:lvlText w:val="第%1条"/><w:suff w:val="space"/></w:lvl>'
            '<w:lvl w:ilvl="1"><w:start w:val="1"/><w:numFmt w:val="chineseCounting"/>'
            '<w:lvlText w:val="（%2）"/><w:suff w:val="nothing"/></w:lvl></w:abstractNum>'
        ),
    )
    numbering.append(parse_xml(f'<w:num {nsdecls("w")} w:numId="90"><w:abstractNumId w:val="90"/></w:num>'))

    def numbered(text: str, level: int = 0) -> None:
        paragraph = document.add_paragraph(text)
        paragraph._p.get_or_add_pPr().append(
            parse_xml(f'<w:numPr {nsdecls("w")}><w:ilvl w:val="{level}"/><w:numId w:val="90"/></w:numPr>')
        )

    document.add_heading("第一章 总则", 1)
    for n in range(1, 11):
        numbered(f"第{n}项规定的内容。")
    numbered("出差人员伙食补助费每人每天100元。")
    numbered("乘坐火车硬席，", 1)
    numbered("乘坐轮船三等舱。", 1)
    document.add_paragraph("第一步", style="List Number")
    path = _write(tmp_path / "in", "numbered.docx", _save(document))
    result = ingest_file(con, path, settings)
    assert result.status == "added", result.message

    text = con.execute("SELECT text FROM documents").fetchone()[0]
    assert "第十一条 出差人员伙食补助费每人每天100元。" in text
    assert "（一）乘坐火车硬席，" in text and "（二）乘坐轮船三等舱。" in text
    assert "1. 第一步" in text
    paths = [row[0] for row in con.execute("SELECT heading_path FROM chunks ORDER BY seq").fetchall()]
    assert paths[0] == "第一章 总则 > 第一条" and paths[9] == "第一章 总则 > 第十条"
    assert paths[10] == "第一章 总则 > 第十一条"
    (fact,) = [f for f in _facts(con, "numbered.docx") if f["value"] == "100"]
    assert fact["unit"] == "元/人·天" and fact["heading_path"] == "第一章 总则 > 第十一条"


def _zip_bomb() -> bytes:
    """A real, small .docx with one extra part that unpacks to 20 MB of zeros."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(_rules_docx())) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in source.infolist():
            bomb.writestr(info, source.read(info))
        bomb.writestr("word/media/zeros.bin", b"\0" * (20 * 1024 * 1024))
    return out.getvalue()


def _encrypted_docx() -> bytes:
    """What Word writes for a password-protected .docx: an OLE compound file, not a zip."""
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504 + b"EncryptedPackage" * 64


BAD_DOCX = [
    ("corrupt.docx", lambda: b"PK\x03\x04" + bytes(range(256)) * 8, "corrupt .docx: not a zip archive"),
    ("truncated.docx", lambda: _rules_docx()[:2000], "corrupt .docx"),
    ("not-word.docx", lambda: _zip_of({"hello.txt": b"hi"}), "without word/document.xml"),
    ("bad-xml.docx", lambda: _replace_part("word/document.xml", b"<w:document"), "corrupt .docx"),
    ("encrypted.docx", _encrypted_docx, "encrypted Word file"),
    ("empty-text.docx", lambda: _save(docx.Document()), "empty Word document"),
    ("empty.docx", lambda: b"", "empty file"),
    ("old.doc", _encrypted_docx, "save it as .docx"),
]


def _zip_of(parts: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return out.getvalue()


def _replace_part(name: str, data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(_rules_docx())) as source:
        parts = {info.filename: source.read(info) for info in source.infolist()}
    return _zip_of({**parts, name: data})


@pytest.mark.parametrize(("name", "make", "reason"), BAD_DOCX, ids=[b[0] for b in BAD_DOCX])
def test_bad_word_files_are_refused_naming_the_file_and_store_nothing(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings, name: str, make, reason: str
) -> None:
    data = make()
    path = _write(tmp_path / "in", name, data)
    result = ingest_file(con, path, settings)
    assert result.status == "failed"
    assert result.message.startswith(f"{path}: ") and reason in result.message, result.message
    assert "\n" not in result.message and "unexpected error" not in result.message
    assert ledger.table_counts(con)["chunks"] == 0 and ledger.table_counts(con)["facts"] == 0
    if data:
        assert ledger.document_counts(con, content_id(data)) == {
            "documents": 1,
            "pages": 0,
            "chunks": 0,
            "facts": 0,
        }


def test_zip_bomb_is_refused_before_it_is_parsed(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zip_bomb()
    assert len(data) < 1024 * 1024  # small on disk: only unpacking it is large
    opened: list[str] = []
    monkeypatch.setattr(extract_module.docx, "Document", lambda *a, **k: opened.append("parsed"))
    path = _write(tmp_path / "in", "bomb.docx", data)
    result = ingest_file(con, path, settings.model_copy(update={"max_file_mb": 5}))
    assert result.status == "failed"
    assert (
        "file too large when unpacked (" in result.message
        and "MB > max_file_mb 5): a zip bomb" in result.message
    )
    assert opened == []
    assert ledger.document_counts(con, content_id(data))["pages"] == 0


def test_unreadable_types_in_a_folder_are_listed_as_skipped(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    folder = tmp_path / "in"
    _write(folder, "rules.docx", _rules_docx())
    _write(folder, "rates.xlsx", b"PK\x03\x04 a spreadsheet")
    _write(folder, "old.doc", _encrypted_docx())
    _write(folder, "README", b"notes")
    _write(folder, "~$rules.docx", b"\x05owner")
    _write(folder / ".git", "config.md", b"# not a rule")
    results = ingest_paths(con, [folder], settings)
    by_name = {r.path.name: r for r in results}
    assert by_name["rules.docx"].status == "added"
    skipped = {name: r.message for name, r in by_name.items() if r.status == "skipped"}
    assert set(skipped) == {"rates.xlsx", "old.doc", "README", "~$rules.docx", "in"}
    assert "unsupported type .xlsx (spreadsheet): save it as PDF, DOCX or TXT" in skipped["rates.xlsx"]
    assert "save it as .docx" in skipped["old.doc"]
    assert "unsupported type (no extension)" in skipped["README"]
    assert "lock file" in skipped["~$rules.docx"]
    assert skipped["in"] == f"{folder}: 1 hidden files (names starting with .)"
    assert ledger.table_counts(con)["documents"] == 1  # skipped files are not stored


def test_cli_lists_skipped_files_and_exits_zero_for_them_alone(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _write(folder, "rules.docx", _rules_docx())
    _write(folder, "rates.xlsx", b"PK\x03\x04 a spreadsheet")
    _write(folder, "rules.md", RULES_MD.encode())
    done = slm("--workspace", "ws", "ingest", str(folder), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr  # documented: skipped files alone are not errors
    lines = done.stdout.splitlines()
    assert any(
        line.startswith("skipped") and "rates.xlsx: unsupported type .xlsx" in line for line in lines
    ), done.stdout
    assert any(line.startswith("added") and "rules.docx: docx+tables, " in line for line in lines)
    assert any(line.startswith("added") and "rules.md: md, " in line for line in lines)
    assert "2 added, 0 unchanged, 0 failed, 1 skipped;" in done.stdout

    listed = slm("--workspace", "ws", "docs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    routes = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in listed.stdout.splitlines()
        if line.count("│") > 3 and "rules." in line
    }
    # the routes each document took and the facts each produced, as the ingest line said them
    added = {line.split(": ")[0].rsplit("/", 1)[-1]: line for line in lines if line.startswith("added")}
    assert routes["rules.md"] == "md"
    assert routes["rules.docx"].startswith("docx+tables (text ")
    assert routes["rules.docx"].split(" (", 1)[1].rstrip(")") in added["rules.docx"]

    _write(folder, "broken.docx", b"PK\x03\x04 broken")
    again = slm("--workspace", "ws", "ingest", str(folder), cwd=tmp_path)
    assert again.returncode == 1  # a failure still fails the run, as before
    assert "broken.docx: corrupt .docx" in again.stderr
    assert "0 added, 2 unchanged, 1 failed, 1 skipped;" in again.stdout


def test_table_unit_line_and_number_column(
    tmp_path: Path, con: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    """A "单位：元" line before the table gives bare cells their unit; a 序号 column is not a row name."""
    document = docx.Document()
    document.add_paragraph("第一条 会议费综合定额标准如下（单位：元）")
    rows = [
        ["序号", "会议类别", "住宿费", "伙食费"],
        ["1", "一类会议", "500", "150"],
        ["2", "二类会议", "400", "150"],
    ]
    table = document.add_table(rows=len(rows), cols=len(rows[0]))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    path = _write(tmp_path / "in", "meetings.docx", _save(document))
    assert ingest_file(con, path, settings).status == "added"
    facts = {(f["value"], f["subject"]): f["unit"] for f in _facts(con, "meetings.docx")}
    assert facts == {
        ("500", "一类会议 住宿费"): "元",
        ("150", "一类会议 伙食费"): "元",
        ("400", "二类会议 住宿费"): "元",
        ("150", "二类会议 伙食费"): "元",
    }
