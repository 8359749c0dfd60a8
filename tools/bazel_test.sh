#!/usr/bin/env bash
# `bazel test //...` offline with Debian's bazel-bootstrap 4.2.3 (the CI step):
#   tools/bazel_test.sh                      # every target
#   tools/bazel_test.sh //:test_data         # given targets; extra bazel flags are passed on too
#   tools/bazel_test.sh --tests_with_data    # the py_tests with `data` (they run programs or read files
#                                            # from their runfiles), found by `bazel query`
#   tools/bazel_test.sh --build_all ...      # `bazel build //...` first (every target, tests included)
#
# - Needs the project's virtualenv (.venv, made by tools/env.sh; CI runs that first):
#   Bazel runs every py_* target with .venv/bin/python3 (see third_party/bazel/venv.bzl).
# - Installs the Debian packages it needs when they are missing (as root, or through sudo).
# - Bazel's outputs and caches go to $ATMC_BAZEL_ROOT (default /tmp/atmc_tf-bazel; one
#   output base per clone under it), not into the clone (.bazelrc also turns off the
#   bazel-* convenience symlinks).  The bazel server is shut down at the end.
# Exit status: bazel's (0: all passed, 3: some test failed, 1: build/pattern error, 4: no tests),
# 2 when the venv or the Debian packages are missing.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "tools/bazel_test.sh: $*" >&2; }

python="${ATMC_BAZEL_PYTHON:-$root/.venv/bin/python3}"
if [ ! -x "$python" ] || ! "$python" -c "import pytest" >/dev/null 2>&1; then
  say "no usable virtualenv: $python is missing or cannot import pytest."
  say "Create the project's environment first: tools/env.sh true"
  exit 2
fi

"$root/tools/debian_install.sh" bazel-bootstrap bazel-rules-java bazel-platforms || exit 2

out_root="${ATMC_BAZEL_ROOT:-/tmp/atmc_tf-bazel}"
startup=(--output_user_root="$out_root")
cd "$root"
trap 'bazel "${startup[@]}" shutdown >/dev/null 2>&1 || true' EXIT

[ "$#" -gt 0 ] || set -- //...
args=()
build_all=0
for a in "$@"; do
  if [ "$a" = --build_all ]; then
    build_all=1
  elif [ "$a" = --tests_with_data ]; then
    mapfile -t found < <(bazel "${startup[@]}" query --noshow_progress 'attr(data, "\[.+\]", tests(//...))' 2>/dev/null)
    [ "${#found[@]}" -gt 0 ] || { say "bazel query found no py_test with data"; exit 1; }
    args+=("${found[@]}")
  else
    args+=("$a")
  fi
done
set -- "${args[@]}"
t0=$SECONDS
if [ "$build_all" = 1 ]; then
  bazel "${startup[@]}" build --repository_cache="$out_root/repository_cache" --keep_going \
    --show_progress_rate_limit=30 //... || { rc=$?; say "bazel build //... failed (exit status $rc)"; exit "$rc"; }
  say "bazel build //... took $((SECONDS - t0))s"
fi
bazel "${startup[@]}" test \
  --repository_cache="$out_root/repository_cache" \
  --keep_going \
  --test_output=errors \
  --local_test_jobs=2 \
  --show_progress_rate_limit=30 \
  "$@"
rc=$?
say "bazel test took $((SECONDS - t0))s, exit status $rc"
logs="$(bazel "${startup[@]}" info bazel-testlogs 2>/dev/null)" && say "test logs: $logs/<target>/test.log"
exit "$rc"
