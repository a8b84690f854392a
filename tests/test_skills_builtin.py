"""Galley's built-in skills: each SKILL.md passes the upload rules, and each helper script creates,
reads and edits a real file that the format's own library opens."""

import json
import subprocess
import sys
from pathlib import Path

import docx
import openpyxl
import pptx
import pypdf
import pytest
from openpyxl.chart import BarChart

from skills.catalog import BUILTIN_DIR, builtin_get, builtin_ids


def run(skill: str, *args: str, cwd: Path) -> str:
    script = BUILTIN_DIR / skill / "scripts" / f"{skill}_tool.py"
    done = subprocess.run(
        [sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def spec(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("skill_id", ["xlsx", "docx", "pptx", "pdf"])
def test_each_builtin_skill_is_a_valid_bundle(skill_id: str) -> None:
    skill = builtin_get(skill_id)
    assert skill is not None and skill_id in builtin_ids()
    assert skill.bundle.name == skill_id
    assert len(skill.bundle.description) > 40
    paths = {f.path for f in skill.bundle.files}
    assert {"SKILL.md", f"scripts/{skill_id}_tool.py"} <= paths
    assert f"/workspace/skills/{skill_id}/scripts/{skill_id}_tool.py" in skill.bundle.skill_md().decode()


def test_xlsx_helper_builds_formulas_and_a_chart_and_edits(tmp_path: Path) -> None:
    book = tmp_path / "sales.xlsx"
    rows = [
        ["Region", "Q1", "Q2", "Total"],
        ["North", 120, 135, "=SUM(B2:C2)"],
        ["South", 98, 110, "=SUM(B3:C3)"],
    ]
    charts = [{"type": "bar", "title": "Sales", "data": "B1:C3", "categories": "A2:A3", "anchor": "F2"}]
    run(
        "xlsx",
        "create",
        str(book),
        "--spec",
        spec(tmp_path, {"sheets": [{"name": "Sales", "rows": rows, "charts": charts}]}),
        cwd=tmp_path,
    )
    wb = openpyxl.load_workbook(book)
    sheet = wb["Sales"]
    assert sheet["D2"].value == "=SUM(B2:C2)" and sheet["B3"].value == 98 and sheet["A1"].font.bold
    chart = sheet._charts[0]
    assert isinstance(chart, BarChart) and len(chart.series) == 2

    out = run("xlsx", "read", str(book), "--formulas", cwd=tmp_path)
    assert "North\t120\t135\t=SUM(B2:C2)" in out
    run(
        "xlsx",
        "edit",
        str(book),
        "--set",
        "Sales!B2=125",
        "--set",
        "Sales!E2==B2*2",
        "--add-sheet",
        "Notes",
        cwd=tmp_path,
    )
    wb = openpyxl.load_workbook(book)
    assert wb["Sales"]["B2"].value == 125 and wb["Sales"]["E2"].value == "=B2*2"
    assert wb.sheetnames == ["Sales", "Notes"]
    data = json.loads(run("xlsx", "read", str(book), "--json", "--formulas", cwd=tmp_path))
    assert data["Sales"]["charts"] == 1


def test_docx_helper_creates_reads_and_edits(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    blocks = [
        {"heading": "Summary", "level": 1},
        {"paragraph": "Sales grew in 2025.", "bold": True},
        {"bullets": ["North", "South"]},
        {"table": [["Region", "Q1"], ["North", "120"]]},
    ]
    run(
        "docx",
        "create",
        str(path),
        "--spec",
        spec(tmp_path, {"title": "Report", "blocks": blocks}),
        cwd=tmp_path,
    )
    document = docx.Document(str(path))
    texts = [p.text for p in document.paragraphs]
    assert texts[:3] == ["Report", "Summary", "Sales grew in 2025."]
    assert document.tables[0].cell(1, 1).text == "120"
    assert "## Summary" in run("docx", "read", str(path), cwd=tmp_path)
    run("docx", "edit", str(path), "--replace", "2025=2026", "--append", "The end.", cwd=tmp_path)
    document = docx.Document(str(path))
    assert document.paragraphs[2].text == "Sales grew in 2026." and document.paragraphs[2].runs[0].bold
    assert document.paragraphs[-1].text == "The end."


def test_pptx_helper_creates_reads_and_edits(tmp_path: Path) -> None:
    path = tmp_path / "deck.pptx"
    slides = [
        {"layout": "title", "title": "Review", "subtitle": "2025"},
        {"layout": "bullets", "title": "Highlights", "bullets": ["Up", ["North"]], "notes": "say hi"},
        {"layout": "table", "title": "Numbers", "table": [["A", "B"], ["1", "2"]]},
    ]
    run("pptx", "create", str(path), "--spec", spec(tmp_path, {"slides": slides}), cwd=tmp_path)
    deck = pptx.Presentation(str(path))
    assert len(deck.slides) == 3 and deck.slides[1].shapes.title.text == "Highlights"
    described = json.loads(run("pptx", "read", str(path), "--json", cwd=tmp_path))
    assert described[1]["text"] == ["Up", "North"] and described[1]["notes"] == "say hi"
    assert described[2]["tables"] == [[["A", "B"], ["1", "2"]]]
    run(
        "pptx",
        "edit",
        str(path),
        "--replace",
        "2025=2026",
        "--add-bullets",
        "Next=Hire;Ship",
        "--delete-slide",
        "3",
        cwd=tmp_path,
    )
    described = json.loads(run("pptx", "read", str(path), "--json", cwd=tmp_path))
    assert [s["title"] for s in described] == ["Review", "Highlights", "Next"]
    assert described[0]["text"] == ["2026"] and described[2]["text"] == ["Hire", "Ship"]


def test_pdf_helper_creates_reads_merges_splits_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    blocks = [
        {"heading": "Summary"},
        {"paragraph": "Sales grew."},
        {"bullets": ["North", "South"]},
        {"table": [["Region", "Q1"], ["North", "120"]]},
        {"page_break": True},
        {"paragraph": "Second page."},
    ]
    run(
        "pdf",
        "create",
        str(path),
        "--spec",
        spec(tmp_path, {"title": "Report", "blocks": blocks}),
        cwd=tmp_path,
    )
    reader = pypdf.PdfReader(str(path))
    assert len(reader.pages) == 2 and "Sales grew." in reader.pages[0].extract_text()
    assert "Second page." in run("pdf", "read", str(path), "--pages", "2", cwd=tmp_path)
    assert json.loads(run("pdf", "info", str(path), cwd=tmp_path))["pages"] == 2
    run("pdf", "merge", "both.pdf", str(path), str(path), cwd=tmp_path)
    assert len(pypdf.PdfReader(str(tmp_path / "both.pdf")).pages) == 4
    run("pdf", "pages", "both.pdf", "some.pdf", "--pages", "2,4", cwd=tmp_path)
    some = pypdf.PdfReader(str(tmp_path / "some.pdf"))
    assert [("Second page." in p.extract_text()) for p in some.pages] == [True, True]
    run("pdf", "rotate", "some.pdf", "turned.pdf", "--degrees", "90", "--pages", "1", cwd=tmp_path)
    turned = pypdf.PdfReader(str(tmp_path / "turned.pdf"))
    assert [p.rotation for p in turned.pages] == [90, 0]
