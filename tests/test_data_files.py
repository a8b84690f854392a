"""Files Galley's processes create in the data dir are private (0600), Celery beat's schedule included."""

import os
import time
from pathlib import Path

import pytest

from tests.live import live_galley

pytestmark = [pytest.mark.slow]


def _schedule_files(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in data_dir.glob("celerybeat-schedule*")}


def _wait_for_schedule(data_dir: Path) -> dict[str, int]:
    deadline = time.monotonic() + 120
    while "celerybeat-schedule" not in _schedule_files(data_dir):
        assert time.monotonic() < deadline, "the worker's beat never wrote its schedule"
        time.sleep(0.2)
    time.sleep(1.0)  # beat syncs its first entries (and SQLite its journal files) right after opening
    return _schedule_files(data_dir)


def test_the_beat_schedule_of_a_serving_worker_is_private() -> None:
    with live_galley() as galley:
        files = _wait_for_schedule(galley.data_dir)
        assert files and set(files.values()) == {0o600}, files
        assert os.path.getsize(galley.data_dir / "celerybeat-schedule") > 0  # a real schedule, in use


def test_a_schedule_file_an_older_version_left_0644_is_narrowed() -> None:
    import tempfile

    from galley.beat import PrivateScheduler
    from galley.celery import app

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "celerybeat-schedule"
        scheduler = PrivateScheduler(app=app, schedule_filename=str(path), lazy=True)
        scheduler.setup_schedule()
        scheduler.close()
        assert set(_schedule_files(Path(tmp)).values()) == {0o600}
        for made in Path(tmp).iterdir():
            made.chmod(0o644)
        again = PrivateScheduler(app=app, schedule_filename=str(path), lazy=True)
        again.setup_schedule()
        assert "harness-sweep" in again.schedule  # the same schedule, kept
        again.close()
        assert set(_schedule_files(Path(tmp)).values()) == {0o600}
