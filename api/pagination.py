"""Opaque keyset cursors (spec 1.9). A cursor names the last row seen and the order it was read in,
so pages stay stable while rows are inserted concurrently."""

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.db.models import Q, QuerySet

from api.errors import ApiError

Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class Cursor:
    key: list[Any]
    order: Order
    direction: Literal["next", "prev"]


def encode(cursor: Cursor) -> str:
    raw = json.dumps({"k": cursor.key, "o": cursor.order, "d": cursor.direction}, separators=(",", ":"))
    return "page_" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, *, order: Order) -> Cursor:
    try:
        if not token.startswith("page_"):
            raise ValueError
        body = token[5:]
        raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        cursor = Cursor(key=list(raw["k"]), order=raw["o"], direction=raw["d"])
        if cursor.order not in ("asc", "desc") or cursor.direction not in ("next", "prev"):
            raise ValueError
        if not isinstance(cursor.key, list) or len(cursor.key) != 2:
            raise ValueError
    except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, f"page: {token!r} is not a valid page cursor.") from None
    if cursor.order != order:
        raise ApiError(400, "page: this cursor was issued for a different `order`.")
    return cursor


@dataclass
class Page:
    items: list[Any]
    next_page: str | None
    prev_page: str | None


def paginate(
    queryset: QuerySet[Any],
    *,
    fields: tuple[str, str],
    limit: int,
    order: Order = "desc",
    page: str | None = None,
    key_of: Any = None,
) -> Page:
    """Keyset pagination over two columns (a sort column and a unique tiebreaker)."""
    first, second = fields
    key_of = key_of or (lambda obj: [_jsonable(getattr(obj, first)), _jsonable(getattr(obj, second))])
    cursor = decode(page, order=order) if page else None
    forward = cursor is None or cursor.direction == "next"
    ascending = (order == "asc") == forward
    qs = queryset
    if cursor is not None:
        a, b = cursor.key
        if ascending:
            qs = qs.filter(Q(**{f"{first}__gt": a}) | Q(**{first: a, f"{second}__gt": b}))
        else:
            qs = qs.filter(Q(**{f"{first}__lt": a}) | Q(**{first: a, f"{second}__lt": b}))
    sort = (first, second) if ascending else (f"-{first}", f"-{second}")
    rows = list(qs.order_by(*sort)[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    if not forward:
        rows.reverse()
    next_page = prev_page = None
    if rows:
        if (forward and has_more) or (not forward and cursor is not None):
            next_page = encode(Cursor(key_of(rows[-1]), order, "next"))
        if (not forward and has_more) or (forward and cursor is not None):
            prev_page = encode(Cursor(key_of(rows[0]), order, "prev"))
    return Page(items=rows, next_page=next_page, prev_page=prev_page)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def check_limit(limit: int | None, *, default: int, maximum: int) -> int:
    if limit is None:
        return default
    if limit < 1 or limit > maximum:
        raise ApiError(400, f"limit: must be between 1 and {maximum}, got {limit}.")
    return limit


def page_body(page: Page, data: Sequence[Any], *, with_prev: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"data": list(data), "next_page": page.next_page}
    if with_prev:
        body["prev_page"] = page.prev_page
    return body
