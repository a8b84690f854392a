"""Create, read and edit .docx documents with python-docx (see ../SKILL.md)."""

import argparse
import json
import sys
from typing import Any

import docx


def create(path: str, spec: dict[str, Any]) -> None:
    document = docx.Document()
    if spec.get("title"):
        document.add_heading(spec["title"], level=0)
    for block in spec.get("blocks", []):
        if "heading" in block:
            document.add_heading(block["heading"], level=int(block.get("level", 1)))
        elif "paragraph" in block:
            run = document.add_paragraph().add_run(block["paragraph"])
            run.bold = bool(block.get("bold"))
            run.italic = bool(block.get("italic"))
        elif "bullets" in block:
            for item in block["bullets"]:
                document.add_paragraph(str(item), style="List Bullet")
        elif "numbered" in block:
            for item in block["numbered"]:
                document.add_paragraph(str(item), style="List Number")
        elif "table" in block:
            rows = block["table"]
            table = document.add_table(rows=len(rows), cols=max(len(r) for r in rows))
            table.style = block.get("style", "Table Grid")
            for i, row in enumerate(rows):
                for j, value in enumerate(row):
                    table.cell(i, j).text = str(value)
                    if i == 0:
                        for run in table.cell(i, j).paragraphs[0].runs:
                            run.bold = True
        elif block.get("page_break"):
            document.add_page_break()
        else:
            raise SystemExit(f"unknown block: {json.dumps(block)[:80]}")
    document.save(path)
    print(f"wrote {path}")


def read(path: str, as_json: bool) -> None:
    document = docx.Document(path)
    paragraphs = [{"style": p.style.name if p.style else "", "text": p.text} for p in document.paragraphs]
    tables = [[[cell.text for cell in row.cells] for row in t.rows] for t in document.tables]
    if as_json:
        print(json.dumps({"paragraphs": paragraphs, "tables": tables}, indent=1))
        return
    for p in paragraphs:
        style = p["style"]
        if style == "Title":
            print(f"# {p['text']}")
        elif style.startswith("Heading"):
            level = style.removeprefix("Heading").strip() or "1"
            print("#" * (int(level) + 1) + " " + p["text"] if level.isdigit() else p["text"])
        elif style.startswith("List"):
            print(f"- {p['text']}")
        elif p["text"]:
            print(p["text"])
    for i, table in enumerate(tables):
        print(f"[table {i + 1}]")
        for row in table:
            print("\t".join(row))


def edit(path: str, replaces: list[str], appends: list[str], out: str | None) -> None:
    document = docx.Document(path)
    pairs = [r.split("=", 1) for r in replaces]
    count = 0
    containers = list(document.paragraphs)
    for table in document.tables:
        for row in table.rows:
            for cell in row.cells:
                containers.extend(cell.paragraphs)
    for paragraph in containers:
        for old, new in pairs:
            if old not in paragraph.text:
                continue
            hit = False
            for run in paragraph.runs:
                if old in run.text:
                    run.text = run.text.replace(old, new)
                    hit = True
            if not hit:  # the text spans runs: rewrite the paragraph as one run
                text = paragraph.text.replace(old, new)
                for run in paragraph.runs[1:]:
                    run.text = ""
                paragraph.runs[0].text = text
            count += 1
    for text in appends:
        document.add_paragraph(text)
    document.save(out or path)
    print(f"wrote {out or path}: {count} replacements, {len(appends)} paragraphs appended")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_create = sub.add_parser("create")
    p_create.add_argument("path")
    p_create.add_argument("--spec", required=True, help="JSON file, or '-' for stdin")
    p_read = sub.add_parser("read")
    p_read.add_argument("path")
    p_read.add_argument("--json", action="store_true")
    p_edit = sub.add_parser("edit")
    p_edit.add_argument("path")
    p_edit.add_argument("--replace", action="append", default=[], metavar="OLD=NEW")
    p_edit.add_argument("--append", action="append", default=[])
    p_edit.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "create":
        text = sys.stdin.read() if args.spec == "-" else open(args.spec, encoding="utf-8").read()
        create(args.path, json.loads(text))
    elif args.command == "read":
        read(args.path, args.json)
    else:
        edit(args.path, args.replace, args.append, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
