"""Create PDFs with reportlab; read, merge, split and rotate them with pypdf (see ../SKILL.md)."""

import argparse
import json
import sys
from typing import Any

from pypdf import PdfReader, PdfWriter
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, letter
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import (
    Image,
    ListFlowable,
    ListItem,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)


def page_numbers(spec: str | None, count: int) -> list[int]:
    """'2,4-5' -> [1, 3, 4] (0-based); None -> every page."""
    if not spec:
        return list(range(count))
    out: list[int] = []
    for part in spec.split(","):
        start, _, end = part.partition("-")
        first, last = int(start), int(end or start)
        if not 1 <= first <= last <= count:
            raise SystemExit(f"pages {part!r} out of range 1-{count}")
        out.extend(range(first - 1, last))
    return out


def create(path: str, spec: dict[str, Any]) -> None:
    styles = getSampleStyleSheet()
    size = letter if str(spec.get("pagesize", "A4")).lower() == "letter" else A4
    doc = SimpleDocTemplate(path, pagesize=size, title=spec.get("title", ""))
    story: list[Any] = []
    if spec.get("title"):
        story.append(Paragraph(spec["title"], styles["Title"]))
    for block in spec.get("blocks", []):
        if "heading" in block:
            story.append(Paragraph(block["heading"], styles["Heading2"]))
        elif "paragraph" in block:
            story.append(Paragraph(block["paragraph"], styles["BodyText"]))
        elif "bullets" in block:
            items = [ListItem(Paragraph(str(i), styles["BodyText"])) for i in block["bullets"]]
            story.append(ListFlowable(items, bulletType="bullet"))
        elif "table" in block:
            table = Table(block["table"], repeatRows=1)
            table.setStyle(
                TableStyle(
                    [
                        ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                        ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                    ]
                )
            )
            story.append(table)
        elif "image" in block:
            image = Image(block["image"])
            width = float(block.get("width", 400))
            image.drawHeight = image.drawHeight * width / image.drawWidth
            image.drawWidth = width
            story.append(image)
        elif block.get("page_break"):
            story.append(PageBreak())
            continue
        else:
            raise SystemExit(f"unknown block: {json.dumps(block)[:80]}")
        story.append(Spacer(1, 8))
    doc.build(story)
    print(f"wrote {path}")


def read(path: str, pages: str | None) -> None:
    reader = PdfReader(path)
    for index in page_numbers(pages, len(reader.pages)):
        print(f"--- page {index + 1} ---")
        print(reader.pages[index].extract_text() or "")


def info(path: str) -> None:
    reader = PdfReader(path)
    box = reader.pages[0].mediabox if reader.pages else None
    meta = {k.lstrip("/"): str(v) for k, v in (reader.metadata or {}).items()}
    size = f"{float(box.width):.0f}x{float(box.height):.0f} pt" if box else "-"
    print(json.dumps({"pages": len(reader.pages), "page_size": size, "metadata": meta}, indent=1))


def merge(out: str, inputs: list[str]) -> None:
    writer = PdfWriter()
    for path in inputs:
        writer.append(path)
    with open(out, "wb") as handle:
        writer.write(handle)
    print(f"wrote {out}: {len(writer.pages)} pages")


def select(path: str, out: str, pages: str | None, degrees: int = 0) -> None:
    reader = PdfReader(path)
    writer = PdfWriter()
    chosen = set(page_numbers(pages, len(reader.pages)))
    for index, page in enumerate(reader.pages):
        if degrees:
            if index in chosen:
                page.rotate(degrees)
            writer.add_page(page)
        elif index in chosen:
            writer.add_page(page)
    with open(out, "wb") as handle:
        writer.write(handle)
    print(f"wrote {out}: {len(writer.pages)} pages")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create")
    p.add_argument("path")
    p.add_argument("--spec", required=True, help="JSON file, or '-' for stdin")
    p = sub.add_parser("read")
    p.add_argument("path")
    p.add_argument("--pages")
    p = sub.add_parser("info")
    p.add_argument("path")
    p = sub.add_parser("merge")
    p.add_argument("out")
    p.add_argument("inputs", nargs="+")
    p = sub.add_parser("pages")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--pages", required=True)
    p = sub.add_parser("rotate")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--degrees", type=int, default=90)
    p.add_argument("--pages")
    args = parser.parse_args(argv)
    if args.command == "create":
        text = sys.stdin.read() if args.spec == "-" else open(args.spec, encoding="utf-8").read()
        create(args.path, json.loads(text))
    elif args.command == "read":
        read(args.path, args.pages)
    elif args.command == "info":
        info(args.path)
    elif args.command == "merge":
        merge(args.out, args.inputs)
    elif args.command == "pages":
        select(args.path, args.out, args.pages)
    else:
        select(args.path, args.out, args.pages, degrees=args.degrees)
    return 0


if __name__ == "__main__":
    sys.exit(main())
