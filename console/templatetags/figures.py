"""Numbers as the cost pages show them (one rule each, shared with the charts): `usd` for money in
USD millionths, `cents` for budgets in cents, `thousands` for counts."""

from django import template

from console.analytics import thousands as _thousands
from console.analytics import usd as _usd

register = template.Library()


@register.filter
def usd(micros: int | float | None) -> str:
    return _usd(micros or 0)


@register.filter
def cents(value: int | None) -> str:
    return _usd((value or 0) * 10_000)


@register.filter
def thousands(value: int | float | None) -> str:
    return _thousands(value or 0)
