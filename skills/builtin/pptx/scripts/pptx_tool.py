"""Create, read and edit .pptx presentations with python-pptx (see ../SKILL.md)."""

import argparse
import json
import sys
from typing import Any

from pptx import Presentation
from pptx.util import Emu, Inches

TITLE, BULLETS, TITLE_ONLY = 0, 1, 5


def _bullets(frame: Any, items: list[Any], level: int = 0, first: list[bool] | None = None) -> None:
    first = first if first is not None else [True]
    for item in items:
        if isinstance(item, list):
            _bullets(frame, item, level + 1, first)
            continue
        paragraph = frame.paragraphs[0] if first[0] else frame.add_paragraph()
        first[0] = False
        paragraph.text = str(item)
        paragraph.level = level


def add_slide(deck: Any, spec: dict[str, Any]) -> None:
    layout = spec.get("layout", "bullets")
    if layout == "title":
        slide = deck.slides.add_slide(deck.slide_layouts[TITLE])
        slide.shapes.title.text = spec.get("title", "")
        if len(slide.placeholders) > 1:
            slide.placeholders[1].text = spec.get("subtitle", "")
    elif layout == "bullets":
        slide = deck.slides.add_slide(deck.slide_layouts[BULLETS])
        slide.shapes.title.text = spec.get("title", "")
        _bullets(slide.placeholders[1].text_frame, spec.get("bullets", []))
    elif layout in ("table", "image"):
        slide = deck.slides.add_slide(deck.slide_layouts[TITLE_ONLY])
        slide.shapes.title.text = spec.get("title", "")
        left, top = Inches(0.5), Inches(1.5)
        width, height = deck.slide_width - Inches(1), deck.slide_height - Inches(2)
        if layout == "table":
            rows = spec["table"]
            shape = slide.shapes.add_table(len(rows), max(len(r) for r in rows), left, top, width, Emu(0))
            for i, row in enumerate(rows):
                for j, value in enumerate(row):
                    shape.table.cell(i, j).text = str(value)
        else:
            picture = slide.shapes.add_picture(spec["image"], left, top)
            scale = min(width / picture.width, height / picture.height, 1)
            picture.width, picture.height = int(picture.width * scale), int(picture.height * scale)
    else:
        raise SystemExit(f"unknown layout {layout!r} (title, bullets, table, image)")
    if spec.get("notes"):
        slide.notes_slide.notes_text_frame.text = spec["notes"]


def create(path: str, spec: dict[str, Any]) -> None:
    deck = Presentation()
    if spec.get("widescreen", True):
        deck.slide_width, deck.slide_height = Inches(13.333), Inches(7.5)
    for slide in spec.get("slides", []):
        add_slide(deck, slide)
    deck.save(path)
    print(f"wrote {path}: {len(deck.slides)} slides")


def describe(path: str) -> list[dict[str, Any]]:
    deck = Presentation(path)
    slides = []
    for number, slide in enumerate(deck.slides, start=1):
        title = slide.shapes.title.text if slide.shapes.title is not None else ""
        texts, tables = [], []
        for shape in slide.shapes:
            if shape == slide.shapes.title:
                continue
            if shape.has_text_frame:
                texts += [p.text for p in shape.text_frame.paragraphs if p.text]
            if getattr(shape, "has_table", False) and shape.has_table:
                tables.append([[c.text for c in row.cells] for row in shape.table.rows])
        notes = slide.notes_slide.notes_text_frame.text if slide.has_notes_slide else ""
        slides.append({"slide": number, "title": title, "text": texts, "tables": tables, "notes": notes})
    return slides


def read(path: str, as_json: bool) -> None:
    slides = describe(path)
    if as_json:
        print(json.dumps(slides, indent=1))
        return
    for s in slides:
        print(f"## slide {s['slide']}: {s['title']}")
        for line in s["text"]:
            print(f"- {line}")
        for table in s["tables"]:
            for row in table:
                print("\t".join(row))
        if s["notes"]:
            print(f"notes: {s['notes']}")


def edit(path: str, replaces: list[str], add: list[str], delete: list[int], out: str | None) -> None:
    deck = Presentation(path)
    pairs = [r.split("=", 1) for r in replaces]
    for slide in deck.slides:
        for shape in slide.shapes:
            if not shape.has_text_frame:
                continue
            for paragraph in shape.text_frame.paragraphs:
                for run in paragraph.runs:
                    for old, new in pairs:
                        run.text = run.text.replace(old, new)
    for number in sorted(delete, reverse=True):
        slide_ids = deck.slides._sldIdLst
        entry = list(slide_ids)[number - 1]
        deck.part.drop_rel(entry.rId)
        slide_ids.remove(entry)
    for item in add:
        title, _, bullets = item.partition("=")
        add_slide(
            deck, {"layout": "bullets", "title": title, "bullets": [b for b in bullets.split(";") if b]}
        )
    deck.save(out or path)
    print(f"wrote {out or path}: {len(deck.slides)} slides")


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
    p_edit.add_argument("--add-bullets", action="append", default=[], metavar="TITLE=ITEM;ITEM")
    p_edit.add_argument("--delete-slide", action="append", default=[], type=int)
    p_edit.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "create":
        text = sys.stdin.read() if args.spec == "-" else open(args.spec, encoding="utf-8").read()
        create(args.path, json.loads(text))
    elif args.command == "read":
        read(args.path, args.json)
    else:
        edit(args.path, args.replace, args.add_bullets, args.delete_slide, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
