"""What the benchmarks that keep a results file of cells and a page share (gan_benchmark, bench_threats,
bench_boost): the results file (resumed, refused when another benchmark's settings wrote it), one cell as a
pipelines.atmc run in its own process and folder, and the page's provenance lines and files."""
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from pipelines.console import fail  # noqa: F401  (the programs' one-line exit 2, re-exported for them)
from pipelines.provenance import machine, package_versions


def quick_defaults(flag_values, quick):
    """--quick's settings, where the command line did not set the flag itself (explicit flags win)."""
    for name, value in quick.items():
        if not flag_values[name].present:
            flag_values[name].value = value


def write_json(path, obj):
    """results.json atomically, keys in the order written (the cells' run order is the page's)."""
    from atmc_tf.export import atomic
    atomic.write_text_atomic(path, json.dumps(obj, indent=1))


def utc_minute():
    """Now, to the minute, as the results files record times ('2026-12-03 18:49 UTC')."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def open_results(bench_dir, settings, quick, program):
    """<bench_dir>/results.json, resumed (refused, exit 2, when it holds other settings) or new; stamped with
    this invocation's command line, versions, machine and time, and written back."""
    os.makedirs(os.path.join(bench_dir, "cells"), exist_ok=True)
    path = os.path.join(bench_dir, "results.json")
    if os.path.exists(path):
        with open(path) as fh:
            results = json.load(fh)
        diff = sorted(k for k in set(settings) | set(results["settings"])
                      if results["settings"].get(k) != settings.get(k))
        if diff:
            fail(f"--workdir={bench_dir} holds a benchmark of other settings ({', '.join(diff)}); use another --workdir")
    else:
        results = {"settings": settings, "quick": quick, "cells": {}}
    results["command"] = f"python -m {program} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results["env"] = {"versions": package_versions(["tensorflow", "keras", "ai-edge-litert", "numpy"]),
                      "machine": "{cpu_model}, {nproc} CPUs, {platform}, nice {nice}".format(**machine())}
    now = utc_minute()
    results.setdefault("date", now)  # when the run started; "updated": its last (resumed) invocation
    results["updated"] = now
    write_json(path, results)
    return results


def run_pipeline(name, args, bench_dir):
    """One cell: python -m pipelines.atmc ARGS in its own process (its output goes to ours); exit 2 with the
    cell's name if it fails (a rerun resumes the cell from its folder). Returns the wall seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    print(f"{name}: python -m pipelines.atmc {' '.join(shlex.quote(a) for a in args)}", flush=True)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pipelines.atmc", *args], env=env)
    if r.returncode != 0:
        fail(f"cell {name}: pipelines.atmc exited with status {r.returncode} (its output above); "
             f"fix the cause and rerun: the cell resumes from {os.path.join(bench_dir, 'cells', name)}")
    return time.time() - t0


def provenance_lines(results):
    env = results.get("env", {})
    return ["", f"Command: `{results.get('command', '')}`", "", f"Versions: {json.dumps(env.get('versions', {}))}", "",
            f"Machine: {env.get('machine', '')}; started {results.get('date', '')}, last run "
            f"{results.get('updated', results.get('date', ''))}.", f"Settings: {json.dumps(results['settings'])}", ""]


def write_page(bench_dir, name, page, also=None):
    """The page into <bench_dir>/<name>, and into `also` (--page) with results.json copied beside it."""
    with open(os.path.join(bench_dir, name), "w") as fh:
        fh.write(page)
    if also:
        os.makedirs(os.path.dirname(os.path.abspath(also)), exist_ok=True)
        with open(also, "w") as fh:
            fh.write(page)
        shutil.copyfile(os.path.join(bench_dir, "results.json"), os.path.splitext(also)[0] + ".json")
    return os.path.join(bench_dir, name)
