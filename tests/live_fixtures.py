"""Module-scoped fixtures for SDK tests of whole turns (registered in conftest): `model`, a scripted
model, and `galley`, a live Galley whose worker talks to it. A module may define its own `model`."""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import LiveGalley, live_galley
from tests.model_server import ScriptedModel, scripted_model


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as server:
        yield server


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    with live_galley({"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url}) as server:
        yield server


ENDS = ("session.status_idle", "session.status_terminated")


def until_idle(stream: Iterator[Any], limit: int = 60) -> list[Any]:
    """Read a session stream until the turn ends (idle or terminated), at most `limit` events."""
    seen = []
    for event in stream:
        seen.append(event)
        if (
            getattr(event, "type", "") in ("session.status_idle", "session.status_terminated")
            or len(seen) >= limit
        ):
            break
    return seen
