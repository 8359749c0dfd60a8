"""Failures that used to come late (after training, with a traceback, on every rerun) come first:
output paths are checked before any work, and a diverged run says how to run again."""
import os
import shutil
import subprocess
import sys

import pytest

from pipeline_run import ROOT, run_pipeline, snapshot
from test_bad_input import TINY, assert_mentions, the_error_line


def test_a_too_long_workdir_is_refused_before_anything_is_written(tmp_path):
    deep = tmp_path.joinpath(*["d" * 200] * 20)  # about 4,050 characters, each name under 255
    r = run_pipeline(*TINY, f"--workdir={deep}")
    line = the_error_line(r)
    assert_mentions(line, "--workdir is", "characters long", "path limit")
    assert os.listdir(tmp_path) == []


def test_an_output_folder_in_the_way_is_refused(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "export").write_text("not a folder")
    before = snapshot(wd)
    line = the_error_line(run_pipeline(*TINY, f"--workdir={wd}"))
    assert_mentions(line, str(wd / "export"), "in the way")
    assert snapshot(wd) == before


def _can_mount():
    return os.geteuid() == 0 and shutil.which("unshare") and subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0


def test_a_read_only_export_folder_is_refused_before_training(tmp_path):
    """A writable workdir whose export/ is read-only: refused at start-up, not after training. As root,
    permission bits do not stop a write, so the folder is made read-only the way a mount does it."""
    wd = tmp_path / "wd"
    (wd / "export").mkdir(parents=True)
    (wd / "export" / "old.tflite").write_bytes(b"keep")
    before = snapshot(wd)
    cmd = [sys.executable, "-m", "pipelines.atmc", *TINY, f"--workdir={wd}"]
    env = {k: v for k, v in os.environ.items() if k != "ATMC_FAULT"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    if _can_mount():
        export = str(wd / "export")
        script = f'mount --bind "{export}" "{export}" && mount -o remount,ro,bind "{export}" && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "bash", *cmd]
    elif os.geteuid() == 0:
        pytest.skip("root without mount namespaces: no way to make a folder read-only here")
    else:
        os.chmod(wd / "export", 0o555)
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(wd / "export", 0o755)
    line = the_error_line(r)
    assert_mentions(line, str(wd / "export"), "not writable")
    assert snapshot(wd) == before


def test_a_diverged_run_says_to_rerun_with_a_new_workdir(tmp_path):
    wd = tmp_path / "wd"
    r = run_pipeline(*TINY, "--da_lr=1e12", f"--workdir={wd}")
    assert r.returncode == 3, r.stderr[-3000:]
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: loss became") and "--da_lr" in last and "new --workdir" in last, last
    # ... and that is what a rerun with a lower rate in the same workdir is told
    again = run_pipeline(*TINY, "--da_lr=0.001", f"--workdir={wd}")
    assert_mentions(the_error_line(again), "da_lr", "new --workdir")
