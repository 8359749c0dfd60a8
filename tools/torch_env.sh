#!/usr/bin/env bash
# Set up (once) and use the PyTorch environment of the step-time benchmark, then run the given command in it:
#   tools/torch_env.sh true                                   # create .venv-torch
#   tools/torch_env.sh python benchmarks/step_time_torch.py ...
# .venv-torch is installed from benchmarks/requirements-torch.txt (re-installed when it changes); it is
# separate from .venv on purpose: the library never imports torch. benchmarks/step_time.py runs its
# PyTorch worker with .venv-torch/bin/python and skips PyTorch (saying so on its page) when it is absent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "tools/torch_env.sh: $*" >&2; }
venv="$root/.venv-torch"
stamp="$venv/.requirements.sha256"
req="$root/benchmarks/requirements-torch.txt"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing $req into $venv (first run takes a few minutes)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -r "$req" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$@"
