"""TFLite Micro check of an int8 model: every op supported, the smallest arena, outputs as LiteRT's.

What the `tflite_micro` package (tflite-micro 0.dev20261023182759) does:

- `runtime.Interpreter.from_bytes(model, arena_size=N)` plans and allocates
  every tensor in the N-byte arena at construction; `set_input(array, 0)`
  wants the exact shape and dtype (ValueError otherwise), then `invoke()` and
  `get_output(0)`. Inputs are batch-1 int8 arrays, as on the device.
- An arena that is too small and an op TFLM lacks both make `from_bytes` raise
  RuntimeError("TFLM failed to allocate tensors"). The reason ("Failed to
  resize buffer. Requested: 3072, available 1568", "Failed to get registration
  from op code SKIP_GRAM") is printed by C++ on file descriptor 2, not in the
  exception, so the check reads fd 2.
- TFLM does not verify the flatbuffer (microcontrollers cannot afford it):
  truncated bytes fail in its Python reader, but corrupt bytes that still parse
  can segfault or hang the process. So TFLM runs in child processes with a
  timeout and a bad model never kills the caller.
- This build can also SEGFAULT for a valid model at one arena size where
  neighbouring sizes fail cleanly (seen: a MobileNetV2-style model at exactly
  4,096 bytes). So every arena probe runs in a child of its own: a crash at one
  size means "not this size", and the search goes on.

TFLM may differ from LiteRT by one int8 step (different rounding in a few
kernels); that is documented upstream and allowed here.
"""
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from atmc_tf.export.tflite import op_names

ARENA_START = 4 * 1024
ARENA_MAX = 64 * 1024 * 1024  # far above any model this project targets; the probe proves it is enough
ARENA_GRANULARITY = 256
MAX_STEP_DIFF = 1
DEFAULT_TIMEOUT_S = 300
# Printed for builtin and custom ops alike (the builtin case also prints "Didn't find op for ...").
_UNSUPPORTED_OP = re.compile(r"Failed to get registration from op code (\S+)")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class MicroCheck:
    """Outcome of check_micro. ops: distinct builtin ops in order of first use (what
    the firmware's op resolver must register). arena_bytes: smallest working
    tensor arena, to ARENA_GRANULARITY. max_abs_diff_vs_litert: in int8 steps."""
    ok: bool = False
    ops: list = dataclasses.field(default_factory=list)
    unsupported_ops: list = dataclasses.field(default_factory=list)
    arena_bytes: int | None = None
    max_abs_diff_vs_litert: int | None = None
    samples_checked: int = 0
    error: str | None = None

    def as_dict(self):
        return dataclasses.asdict(self)


class _CheckFailed(Exception):
    """A reason the check cannot pass, reported in MicroCheck.error."""


def check_micro(tflite_bytes, x_int8_samples, litert_outputs_int8, timeout_s=DEFAULT_TIMEOUT_S,
                max_step_diff=MAX_STEP_DIFF):
    """Run every sample through TFLite Micro and compare with LiteRT's int8 outputs.

    x_int8_samples: [n, ...] int8 inputs (one batch-1 inference each);
    litert_outputs_int8: LiteRT's [n, ...] int8 outputs for them; they may differ by up to
    max_step_diff output steps. Never raises and never lets TFLM take the process down: failures go
    to `error`.
    """
    result = MicroCheck()
    try:
        result.ops = list(dict.fromkeys(op_names(tflite_bytes)))
        x = np.asarray(x_int8_samples)
        expected = np.asarray(litert_outputs_int8)
        if len(x) == 0:
            raise _CheckFailed("no samples to check")
        if x.dtype != np.int8 or expected.dtype != np.int8:
            raise _CheckFailed(f"samples and LiteRT outputs must be int8, got {x.dtype} and {expected.dtype}")
        if len(expected) != len(x):
            raise _CheckFailed(f"{len(x)} samples but {len(expected)} LiteRT outputs")
        model = bytes(tflite_bytes)
        # ARENA_MAX first, so that a model failing for another reason (an unsupported op, a crash at
        # every size) is not mistaken for one needing a bigger arena.
        first = _child(model, "probe", ARENA_MAX, x[:1], timeout_s)
        result.unsupported_ops = list(dict.fromkeys(_UNSUPPORTED_OP.findall("\n".join(first["log"]))))
        if first["error"]:  # a crash names its arena already
            where = ", the largest tried" if first.get("crashed") else f" even with a {ARENA_MAX}-byte arena"
            raise _CheckFailed(f"{first['error']}{where} ({_tail(chr(10).join(first['log']))})")
        result.arena_bytes = _smallest_arena(model, x[:1], timeout_s)
        child = _child(model, "run", result.arena_bytes, x, timeout_s)
        if child["error"]:
            raise _CheckFailed(f"{child['error']} while running the samples ({_tail(chr(10).join(child['log']))})"
                               if child.get("crashed") else
                               f"{child['error']} (running the samples with the {result.arena_bytes}-byte arena)")
        outputs = child["outputs"].reshape(len(x), -1).astype(np.int32)
        if outputs.shape[1] != expected[0].size:
            raise _CheckFailed(f"TFLM outputs have {outputs.shape[1]} values per sample, LiteRT's {expected[0].size}")
        result.samples_checked = len(x)
        result.max_abs_diff_vs_litert = int(np.abs(outputs - expected.reshape(len(x), -1)).max())
        if result.max_abs_diff_vs_litert > max_step_diff:
            raise _CheckFailed(f"TFLM outputs differ from LiteRT's by up to {result.max_abs_diff_vs_litert} "
                               f"int8 steps, more than the {max_step_diff} allowed")
        result.ok = not result.unsupported_ops
    except Exception as e:  # noqa: BLE001 -- the contract is to report, not raise
        result.ok = False
        result.error = str(e) if isinstance(e, _CheckFailed) else f"{type(e).__name__}: {e}"
    return result


def _write_task(work, model, x, task):
    """The files child_main reads from the folder `work`: the model, the inputs and the task."""
    with open(os.path.join(work, "model.tflite"), "wb") as f:
        f.write(model)
    np.save(os.path.join(work, "inputs.npy"), x)
    with open(os.path.join(work, "task.json"), "w") as f:
        json.dump(task, f)


def _child_command(work):
    """(argv, environment) of a child running child_main on the folder `work`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["ATMC_TF_LIGHT_IMPORT"] = "1"  # LiteRT and TFLite Micro only: no TensorFlow in the child
    # -c rather than -m: runpy warns when the package __init__ already imported this module.
    return [sys.executable, "-c", "import sys; from atmc_tf.export.micro import child_main; child_main(sys.argv[1])",
            work], env


def _child(model, mode, arena_bytes, x, timeout_s):
    """Run child_main in a fresh interpreter: mode "probe" (build an interpreter with this arena,
    run x[0]) or "run" (every sample of x). Returns {"error", "log", "outputs"}; a child that
    crashes or hangs is an error (with "crashed": True and its stderr as the log), never an exception here."""
    with tempfile.TemporaryDirectory() as work:
        _write_task(work, model, x, {"mode": mode, "arena_bytes": int(arena_bytes)})
        command, env = _child_command(work)
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"TFLite Micro did not finish within {timeout_s} s with a {arena_bytes}-byte arena "
                             "(killed)", "log": [], "outputs": None, "crashed": True}
        result_file = os.path.join(work, "result.json")
        if proc.returncode != 0 or not os.path.exists(result_file):
            return {"error": f"TFLite Micro child process {_exit_reason(proc.returncode)} with a "
                             f"{arena_bytes}-byte arena", "log": proc.stderr.splitlines(), "outputs": None,
                    "crashed": True}
        with open(result_file) as f:
            child = json.load(f)
        outputs_file = os.path.join(work, "outputs.npy")
        child["outputs"] = np.load(outputs_file) if os.path.exists(outputs_file) else None
        return child


def _next_probe(known):
    """The search for the smallest working arena, to ARENA_GRANULARITY, of a model that works with
    ARENA_MAX, as a function of the probes made so far (known: {arena bytes: works}): doubling from
    ARENA_START, then bisection. ("probe", size) for the next size to try, or ("answer", size)."""
    high = ARENA_START
    while high < ARENA_MAX:
        if high not in known:
            return "probe", high
        if known[high]:
            break
        high *= 2
    high = min(high, ARENA_MAX)
    low = high // 2 if high > ARENA_START else 0  # low fails (or is nothing)
    while high - low > ARENA_GRANULARITY:
        mid = max((low + high) // 2 // ARENA_GRANULARITY * ARENA_GRANULARITY, low + ARENA_GRANULARITY)
        if mid not in known:
            return "probe", mid
        if known[mid]:
            high = mid
        else:
            low = mid
    return "answer", high


def _smallest_arena(model, sample, timeout_s):
    """The smallest working arena (_next_probe's search). The probes run in ONE child process (a new
    interpreter each) that writes "try N" before and "done N 0|1" after each probe; a probe that
    crashes the child, or runs longer than timeout_s, counts as a size that does not work (this
    TFLM build segfaults for some valid models at one size), and a new child carries on from the
    probes made. One child instead of one per probe: about 13 process starts fewer per check."""
    known = {}
    while True:
        kind, size = _next_probe(known)
        if kind == "answer":
            return size
        with tempfile.TemporaryDirectory() as work:
            _write_task(work, model, sample, {"mode": "search", "arena_bytes": 0, "known": sorted(known.items())})
            progress = os.path.join(work, "progress.txt")
            command, env = _child_command(work)
            with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
                pending, since = None, time.monotonic()
                while proc.poll() is None:
                    time.sleep(0.01)
                    now_pending = _read_progress(progress, known)
                    if now_pending != pending:
                        pending, since = now_pending, time.monotonic()
                    elif time.monotonic() - since > timeout_s:
                        proc.kill()
                        proc.wait()
                        break
                pending = _read_progress(progress, known)
                if pending is not None:  # crashed or killed during this probe: it does not work
                    known[pending] = False
                elif proc.returncode != 0 and _next_probe(known)[0] == "probe":
                    # died between probes (not at a size): nothing learnt, so stop instead of looping
                    raise _CheckFailed(f"TFLite Micro arena search child process {_exit_reason(proc.returncode)}")


def _read_progress(path, known):
    """Fold the finished probes of a search child's progress file into `known`; the size it is
    trying now, or None."""
    pending = None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f.read().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "try":
                pending = int(parts[1])
            elif len(parts) == 3 and parts[0] == "done":
                known[int(parts[1])] = parts[2] == "1"
                pending = None
    return pending


def failure_reason(result):
    """Why a MicroCheck (or its as_dict()) did not pass, on one line; None if it passed."""
    get = result.get if isinstance(result, dict) else lambda k: getattr(result, k)
    if get("ok"):
        return None
    reason = get("error") or f"ops TFLite Micro lacks: {', '.join(get('unsupported_ops'))}"
    return " ".join(str(reason).split())


def _exit_reason(returncode):
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"died with {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _tail(text, lines=5):
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"


# --- inside the child process -----------------------------------------------------------

@contextlib.contextmanager
def captured_output(fds=(2,)):
    """Collect what native code writes to the file descriptors `fds` inside the block (a list of
    non-blank lines, filled on exit, also when the block raises); the descriptors are restored."""
    lines = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as log:
        for fd in fds:
            os.dup2(log.fileno(), fd)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)
            log.seek(0)
            lines.extend(line for line in log.read().decode(errors="replace").splitlines() if line.strip())


def _attempt(model, arena_bytes, sample):
    """(error or None, TFLM log) for building an interpreter with this arena and running one sample."""
    from tflite_micro import runtime

    with captured_output() as log:
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
            interpreter.set_input(sample, 0)
            interpreter.invoke()
            error = None
        except Exception as e:  # noqa: BLE001 -- every TFLM failure is a reason to report
            error = f"{type(e).__name__}: {e}"
    return error, log


def child_main(work_dir):
    """Entry point of a child process: reads model.tflite, inputs.npy and task.json ({"mode":
    "probe" or "run", "arena_bytes"}) from work_dir; writes result.json (error, TFLM log) and, for
    "run", outputs.npy. ATMC_MICRO_CRASH_ARENAS (comma-separated sizes) makes a probe at those
    sizes die with SIGSEGV, as this TFLM build does for some models, and ATMC_MICRO_HANG_ARENAS makes
    a search's probe at those sizes hang (both for the tests)."""
    from tflite_micro import runtime

    with open(os.path.join(work_dir, "model.tflite"), "rb") as f:
        model = f.read()
    x = np.load(os.path.join(work_dir, "inputs.npy"))
    with open(os.path.join(work_dir, "task.json")) as f:
        task = json.load(f)
    arena = int(task["arena_bytes"])
    crash_at = {int(v) for v in os.environ.get("ATMC_MICRO_CRASH_ARENAS", "").split(",") if v.strip()}
    hang_at = {int(v) for v in os.environ.get("ATMC_MICRO_HANG_ARENAS", "").split(",") if v.strip()}
    if task["mode"] == "probe" and arena in crash_at:
        os.kill(os.getpid(), signal.SIGSEGV)
    result = {"error": None, "log": []}
    if task["mode"] == "search":  # _smallest_arena's probes, one interpreter each, logged as they go
        known = {int(a): bool(w) for a, w in task["known"]}
        with open(os.path.join(work_dir, "progress.txt"), "a", buffering=1) as progress:
            while True:
                kind, size = _next_probe(known)
                if kind == "answer":
                    return
                progress.write(f"try {size}\n")
                if size in crash_at:
                    os.kill(os.getpid(), signal.SIGSEGV)
                if size in hang_at:
                    time.sleep(3600)
                known[size] = _attempt(model, size, x[:1])[0] is None
                progress.write(f"done {size} {int(known[size])}\n")
    if task["mode"] == "probe":
        result["error"], result["log"] = _attempt(model, arena, x[:1])
    else:
        with captured_output() as log:
            try:
                interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena)
                outputs = []
                for sample in x:
                    interpreter.set_input(sample[None], 0)
                    interpreter.invoke()
                    outputs.append(interpreter.get_output(0).copy())
                np.save(os.path.join(work_dir, "outputs.npy"), np.stack(outputs))
            except Exception as e:  # noqa: BLE001
                result["error"] = f"{type(e).__name__}: {e}"
        result["log"] = log
    with open(os.path.join(work_dir, "result.json"), "w") as f:
        json.dump(result, f)
