#!/usr/bin/env bash
# Set up (once) and use the project's environment, then run the given command in it:
#   tools/env.sh python -m pipelines.atmc
#   tools/env.sh python -m pytest tests
# Set-up, all of it done here (nothing is installed by hand):
# - .venv from requirements.txt and benchmarks/requirements.txt (re-installed when either changes);
# - the Debian packages in tools/debian-packages.txt that are missing (data sets the tests
#   and the benchmark read), with apt-get as root or through sudo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "tools/env.sh: $*" >&2; }

# --- Debian packages --------------------------------------------------------------
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$root/tools/debian-packages.txt" | awk '{print $1}')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      say "cannot install the Debian packages ${missing[*]} (not root, no sudo): ask an administrator for" \
          "'apt-get install ${missing[*]}'; continuing without them (Fashion-MNIST runs and their tests will say what is missing)"
      missing=()
    fi
  fi
fi
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  say "installing Debian packages: ${missing[*]}"
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    say "apt-get install failed; running apt-get update and retrying"
    if ! { "${sudo[@]}" apt-get update -qq >&2 &&
           "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }; then
      say "could not install ${missing[*]} with apt-get; install them, then run this command again"
      exit 2
    fi
  fi
fi

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
