#!/usr/bin/env bash
# Set up (once) and use the project's environment, then run the given command in it:
#   tools/env.sh python -m pipelines.atmc
#   tools/env.sh python -m pytest tests
# Creates .venv from requirements.txt (re-installs when requirements.txt changes).
# Fashion-MNIST for the benchmark comes from Debian: apt-get install dataset-fashion-mnist
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "tools/env.sh: installing requirements into $venv (first run takes a few minutes)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$root"
exec "$@"
