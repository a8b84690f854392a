"""Celery beat's schedule file (`<data dir>/celerybeat-schedule`), kept private like every other data file
(galley/datafiles.py): created 0600, and the files its database keeps beside it narrowed to 0600 too."""

import dbm
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

from galley.datafiles import private_dir


class PrivateScheduler(PersistentScheduler):
    def _open_schedule(self) -> Any:
        path = Path(self.schedule_filename)
        # dbm creates a missing database with this mode (SQLite's journals then take the same one); a file an
        # older version made 0644 is narrowed.
        dbm.open(str(path), "c", 0o600).close()
        for made in path.parent.glob(path.name + "*"):
            private_dir(made, mode=0o600)
        return super()._open_schedule()
