"""List prices for usage accounting (spec 16). Token prices are USD per million tokens, which is
conveniently the same number as micro-USD per token, so costs are kept as integer micro-USD.

The defaults can be replaced with GALLEY_PRICES_JSON (inline JSON or a path to a JSON file):
    {"models": {"claude-opus-4": {"input": 5, "output": 25}, ...},
     "cache_read_multiplier": 0.1, "cache_write_5m_multiplier": 1.25, "cache_write_1h_multiplier": 2,
     "session_hour": 0.08, "web_search_per_1000": 10}
Model prices match the longest key that prefixes the model id; "default" covers the rest.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PRICES: dict[str, Any] = {
    "models": {
        "claude-opus-4": {"input": 5, "output": 25},
        "claude-opus-5": {"input": 5, "output": 25},
        "claude-sonnet-4-6": {"input": 3, "output": 15},
        "claude-sonnet-4-5": {"input": 3, "output": 15},
        "claude-sonnet-4": {"input": 3, "output": 15},
        "claude-haiku-4-5": {"input": 1, "output": 5},
        "default": {"input": 3, "output": 15},
    },
    "cache_read_multiplier": 0.1,
    "cache_write_5m_multiplier": 1.25,
    "cache_write_1h_multiplier": 2.0,
    "session_hour": 0.08,
    "web_search_per_1000": 10.0,
}


class PriceTableError(ValueError):
    pass


def parse_price_table(raw: str | None) -> dict[str, Any]:
    """Read GALLEY_PRICES_JSON (inline JSON or a file path) over the defaults; raise on a bad value."""
    if not raw:
        return DEFAULT_PRICES
    text = raw if raw.lstrip().startswith("{") else Path(raw).read_text()
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise PriceTableError(f"GALLEY_PRICES_JSON is not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise PriceTableError("GALLEY_PRICES_JSON must be a JSON object")
    table = {**DEFAULT_PRICES, **given}
    models = {**DEFAULT_PRICES["models"], **(given.get("models") or {})}
    for name, price in models.items():
        if not isinstance(price, dict) or not all(
            isinstance(price.get(k), (int, float)) and price[k] >= 0 for k in ("input", "output")
        ):
            raise PriceTableError(f"GALLEY_PRICES_JSON: model {name!r} needs numeric input and output prices")
    table["models"] = models
    for key in (
        "cache_read_multiplier",
        "cache_write_5m_multiplier",
        "cache_write_1h_multiplier",
        "session_hour",
        "web_search_per_1000",
    ):
        if not isinstance(table[key], (int, float)) or table[key] < 0:
            raise PriceTableError(f"GALLEY_PRICES_JSON: {key} must be a non-negative number")
    return table


def _table() -> dict[str, Any]:
    from django.conf import settings

    return getattr(settings, "GALLEY_PRICES", DEFAULT_PRICES)


@dataclass
class ModelPrice:
    input: float
    output: float


def model_price(model: str) -> ModelPrice:
    from providers.registry import model_config

    configured = model_config(model)  # a registry model's own prices, when set
    if configured is not None and configured.input_price is not None and configured.output_price is not None:
        return ModelPrice(input=configured.input_price, output=configured.output_price)
    models = _table()["models"]
    best = max(
        (key for key in models if key != "default" and model.startswith(key)), key=len, default="default"
    )
    price = models.get(best) or DEFAULT_PRICES["models"]["default"]
    return ModelPrice(input=float(price["input"]), output=float(price["output"]))


def has_list_price(model: str) -> bool:
    """True when a table entry other than the catch-all `default` prices this model."""
    return any(key != "default" and model.startswith(key) for key in _table()["models"])


def token_cost_micros(
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
) -> int:
    """Cost of one model call in micro-USD (USD per MTok == micro-USD per token)."""
    table = _table()
    price = model_price(model)
    cost = (
        input_tokens * price.input
        + output_tokens * price.output
        + cache_read_tokens * price.input * table["cache_read_multiplier"]
        + cache_write_5m_tokens * price.input * table["cache_write_5m_multiplier"]
        + cache_write_1h_tokens * price.input * table["cache_write_1h_multiplier"]
    )
    return round(cost)


def runtime_cost_micros(active_seconds: float) -> int:
    return round(active_seconds * _table()["session_hour"] * 1_000_000 / 3600)


def web_search_cost_micros(requests: int) -> int:
    return round(requests * _table()["web_search_per_1000"] * 1_000_000 / 1000)


def total_cost_micros(*, token_cost_micros: int, active_seconds: float, web_search_requests: int) -> int:
    return (
        token_cost_micros + runtime_cost_micros(active_seconds) + web_search_cost_micros(web_search_requests)
    )


def micros_to_cents(micros: int) -> int:
    """list_cost is in minor units (cents), rounded to the cent (half up)."""
    return math.floor(micros / 10_000 + 0.5)
