#!/usr/bin/env bash
# Install the Debian packages given that are missing (apt-get, as root or through sudo):
#   tools/debian_install.sh [--or-warn] PKG...
# Exit 0 when all are installed; 2 with one line when they cannot be. --or-warn: when this user
# cannot install (not root, no sudo), say so in one line and exit 0 (the caller goes on without them).
# Used by tools/env.sh (tools/debian-packages.txt) and tools/bazel_test.sh (Bazel itself).
set -uo pipefail
say() { echo "tools/debian_install.sh: $*" >&2; }
or_warn=0
if [ "${1:-}" = "--or-warn" ]; then or_warn=1; shift; fi
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -gt 0 ] || exit 0
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  elif [ "$or_warn" -eq 1 ]; then
    say "cannot install the Debian packages ${missing[*]} (not root, no sudo): ask an administrator for" \
        "'apt-get install ${missing[*]}'; going on without them"
    exit 0
  else
    say "cannot install the Debian packages ${missing[*]} (not root, no sudo): run 'apt-get install ${missing[*]}' as root"
    exit 2
  fi
fi
export DEBIAN_FRONTEND=noninteractive
say "installing ${missing[*]}"
t0=$SECONDS
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
  say "apt-get install failed; running apt-get update and retrying"
  if ! { "${sudo[@]}" apt-get update -qq >&2 &&
         "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }; then
    say "could not install ${missing[*]} with apt-get; install them, then run this command again"
    exit 2
  fi
fi
say "installed ${missing[*]} in $((SECONDS - t0)) s"
