#!/usr/bin/env bash
# Run a command as on a fresh machine that has only what the project's own files install:
#   tools/hermetic.sh tools/env.sh python -m pytest -q -n 2 --dist loadgroup tests   (what .ci/run does)
#
# - /usr/share/datasets (where Debian's data set packages put their files) is replaced by a
#   view holding only the files of the packages in tools/debian-packages.txt: data that was
#   copied there by hand, or that an undeclared package installed, is not visible;
# - HOME is a new empty folder, so nothing under ~/.keras, ~/.cache, ... is seen.
# A test that passes on a hand-set-up machine only (the class of bug where a green CI hid
# a missing install step) fails here. Needs root for the private mount namespace
# (unshare --mount); otherwise it says so in one line and only HOME is replaced.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "tools/hermetic.sh: $*" >&2; }
[ "$#" -gt 0 ] || { say "usage: tools/hermetic.sh COMMAND [ARG...]"; exit 2; }
hidden=/usr/share/datasets

if [ "$1" != "--inside-namespace" ]; then
  home="$(mktemp -d /tmp/atmc-hermetic-home.XXXXXX)"
  trap 'rm -rf "$home"' EXIT
  if [ "$(id -u)" -eq 0 ] && unshare --mount --propagation private true 2>/dev/null; then
    HOME="$home" unshare --mount --propagation private "$0" --inside-namespace "$@"
    exit $?
  fi
  say "no private mount namespace (needs root): $hidden stays as it is; only HOME is replaced"
  HOME="$home" "$@"
  exit $?
fi

# Inside the private mount namespace.
shift
unset KERAS_HOME
if [ -d "$hidden" ]; then
  mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$root/tools/debian-packages.txt" | awk '{print $1}')
  keep=()
  for p in "${pkgs[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      while IFS= read -r f; do
        case "$f" in "$hidden"/*) keep+=("$f") ;; esac
      done < <(dpkg -L "$p")
    fi
  done
  stage="$(mktemp -d /tmp/atmc-hermetic-stage.XXXXXX)"
  mount --bind "$hidden" "$stage"
  mount -t tmpfs -o mode=0755 tmpfs "$hidden"
  for f in "${keep[@]}"; do
    rel="${f#"$hidden"/}"
    if [ -d "$stage/$rel" ] && [ ! -L "$stage/$rel" ]; then
      mkdir -p "$hidden/$rel"
    elif [ -e "$stage/$rel" ]; then
      mkdir -p "$(dirname "$hidden/$rel")"
      : > "$hidden/$rel"
      mount --bind "$stage/$rel" "$hidden/$rel"
    fi
  done
  umount -l "$stage" && rmdir "$stage"
  mount -o remount,ro,bind "$hidden" 2>/dev/null || true
fi
exec "$@"
