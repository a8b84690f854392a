#!/usr/bin/env bash
# What `make test` needs besides Python packages and bubblewrap (make setup): Chromium for the browser
# tests; curl, git and prlimit, which the sandbox tests run; Ruby's gem and Go, which the package-build
# tests install small packages with (from loopback mirrors). As root on Debian/Ubuntu the missing
# ones are installed; otherwise they are named and the run stops before any test.
# Usage: test-prereqs.sh [--no-browser]   (make test-fast skips the browser tests)
set -u
missing=()  # Debian/Ubuntu package names
[ "${1:-}" = "--no-browser" ] || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
[ -x /usr/bin/gem ] || missing+=(ruby)
[ -x /usr/bin/go ] || missing+=(golang-go)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing ${missing[*]} (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null && exit 0
  echo "make test: apt-get could not install ${missing[*]}" >&2
  exit 1
fi
echo "make test needs these system packages, which are not installed: ${missing[*]}" >&2
echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
[ "${1:-}" = "--no-browser" ] || echo "  (the browser tests run /usr/bin/chromium; make test-fast skips them)" >&2
exit 1
