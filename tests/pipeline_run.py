"""Run the pipeline as a user does (a subprocess) and fingerprint a workdir; shared by tests."""
import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, timeout=900, extra_env=None):
    """python -m MODULE ARGS in a fresh process from the checkout; extra_env e.g. {"ATMC_FAULT": "export"}."""
    env = {k: v for k, v in os.environ.items() if k != "ATMC_FAULT"}
    env.update({"PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(extra_env or {})})
    env = {k: v for k, v in env.items() if v != ""}  # an empty value in extra_env removes the variable
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_pipeline(*args, timeout=900, extra_env=None):
    """python -m pipelines.atmc ARGS in a fresh process."""
    return run_module("pipelines.atmc", *args, timeout=timeout, extra_env=extra_env)


def snapshot(directory):
    """{relative path: sha256} of every file under directory."""
    out = {}
    for base, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out
