#!/usr/bin/env bash
# Print the path of a Python >= 3.12 (Django 6.1 needs it): python3.13/3.12 on PATH, else pyenv's.
set -u
for candidate in python3.13 python3.12 python3; do
  if path=$(command -v "$candidate" 2>/dev/null) && "$path" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    echo "$path"; exit 0
  fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]' | sort -rV); do
    if [ -x "$root/versions/$version/bin/python3" ]; then echo "$root/versions/$version/bin/python3"; exit 0; fi
  done
fi
echo "Galley needs Python 3.12 or newer (Django 6.1). Install python3.12 and try again." >&2
exit 1
