"""Create, read and edit .xlsx workbooks with openpyxl (see ../SKILL.md)."""

import argparse
import json
import re
import sys
from typing import Any

from openpyxl import Workbook, load_workbook
from openpyxl.chart import BarChart, LineChart, PieChart, Reference, ScatterChart, Series
from openpyxl.styles import Font
from openpyxl.utils.cell import range_boundaries

NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def parse_value(text: str) -> Any:
    if NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    return text


def ref(sheet: Any, cells: str) -> Reference:
    min_col, min_row, max_col, max_row = range_boundaries(cells)
    return Reference(sheet, min_col=min_col, min_row=min_row, max_col=max_col, max_row=max_row)


def add_chart(sheet: Any, spec: dict[str, Any]) -> None:
    kind = spec.get("type", "bar")
    if kind == "scatter":
        chart: Any = ScatterChart()
        x = ref(sheet, spec["categories"])
        min_col, min_row, max_col, max_row = range_boundaries(spec["data"])
        for col in range(min_col, max_col + 1):
            y = Reference(sheet, min_col=col, min_row=min_row, max_row=max_row)
            chart.series.append(Series(y, x, title_from_data=True))
    else:
        chart = {"bar": BarChart, "column": BarChart, "line": LineChart, "pie": PieChart}[kind]()
        if kind == "bar":
            chart.type = "bar"
        elif kind == "column":
            chart.type = "col"
        chart.add_data(ref(sheet, spec["data"]), titles_from_data=True)
        if spec.get("categories"):
            chart.set_categories(ref(sheet, spec["categories"]))
    chart.title = spec.get("title")
    if kind != "pie":
        if spec.get("x_title"):
            chart.x_axis.title = spec["x_title"]
        if spec.get("y_title"):
            chart.y_axis.title = spec["y_title"]
    chart.width = spec.get("width", 18)
    chart.height = spec.get("height", 9)
    sheet.add_chart(chart, spec.get("anchor", "H2"))


def create(path: str, spec: dict[str, Any]) -> None:
    book = Workbook()
    book.remove(book.active)
    for sheet_spec in spec.get("sheets") or [{"name": "Sheet1", "rows": []}]:
        sheet = book.create_sheet(sheet_spec.get("name", f"Sheet{len(book.sheetnames) + 1}"))
        for row in sheet_spec.get("rows", []):
            sheet.append(row)
        if sheet_spec.get("bold_header", True) and sheet.max_row >= 1:
            for cell in sheet[1]:
                cell.font = Font(bold=True)
        for column, width in (sheet_spec.get("column_widths") or {}).items():
            sheet.column_dimensions[column].width = width
        for cells, fmt in (sheet_spec.get("number_format") or {}).items():
            for row in sheet[cells]:
                for cell in row if isinstance(row, tuple) else (row,):
                    cell.number_format = fmt
        if sheet_spec.get("freeze"):
            sheet.freeze_panes = sheet_spec["freeze"]
        for chart in sheet_spec.get("charts", []):
            add_chart(sheet, chart)
    book.save(path)
    print(f"wrote {path}: sheets {', '.join(book.sheetnames)}")


def read(path: str, sheet_name: str | None, formulas: bool, as_json: bool) -> None:
    book = load_workbook(path, data_only=not formulas)
    names = [sheet_name] if sheet_name else book.sheetnames
    out: dict[str, Any] = {}
    for name in names:
        sheet = book[name]
        rows = [[cell.value for cell in row] for row in sheet.iter_rows()]
        out[name] = {"rows": rows, "charts": len(sheet._charts)}
    if as_json:
        print(json.dumps(out, default=str, indent=1))
        return
    for name, data in out.items():
        print(f"# sheet {name} ({len(data['rows'])} rows, {data['charts']} charts)")
        for row in data["rows"]:
            print("\t".join("" if v is None else str(v) for v in row))


def edit(path: str, sets: list[str], add_sheets: list[str], out: str | None) -> None:
    book = load_workbook(path)
    for name in add_sheets:
        book.create_sheet(name)
    for assignment in sets:
        # The first '=' separates cell and value, so `Sales!D2==SUM(B2:C2)` sets a formula.
        target, _, value = assignment.partition("=")
        sheet_name, _, cell = target.rpartition("!")
        sheet = book[sheet_name] if sheet_name else book.active
        sheet[cell] = value if value.startswith("=") else parse_value(value)
    book.save(out or path)
    print(f"wrote {out or path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_create = sub.add_parser("create", help="create a workbook from a JSON spec")
    p_create.add_argument("path")
    p_create.add_argument("--spec", required=True, help="JSON file, or '-' for stdin")
    p_read = sub.add_parser("read", help="print a workbook's cells")
    p_read.add_argument("path")
    p_read.add_argument("--sheet")
    p_read.add_argument("--formulas", action="store_true")
    p_read.add_argument("--json", action="store_true")
    p_edit = sub.add_parser("edit", help="set cells, add sheets")
    p_edit.add_argument("path")
    p_edit.add_argument("--set", action="append", default=[], metavar="SHEET!CELL=VALUE")
    p_edit.add_argument("--add-sheet", action="append", default=[])
    p_edit.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "create":
        text = sys.stdin.read() if args.spec == "-" else open(args.spec, encoding="utf-8").read()
        create(args.path, json.loads(text))
    elif args.command == "read":
        read(args.path, args.sheet, args.formulas, args.json)
    else:
        edit(args.path, args.set, args.add_sheet, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
