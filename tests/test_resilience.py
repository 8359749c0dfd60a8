"""Kill -9 a real pipeline run at several points, start it again, and get a run as good as an
uninterrupted one; two runs with the same --seed give bit-identical weights."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import atmc_tf.layers  # noqa: F401  (registers ATMCWrapper for load_model)
from pipeline_run import ROOT, run_pipeline, snapshot

pytestmark = pytest.mark.slow  # whole pipeline runs, killed and resumed

FLAGS = ["--limit_train=400", "--limit_test=120", "--da_epochs=4", "--al0_epochs=1", "--atmc32_epochs=1",
         "--atmcb_epochs=3", "--pgd_steps=2", "--eval_pgd_steps=3", "--micro_samples=4",
         "--size_ratio=0.1", "--verbose=0", "--batch_size=64", "--seed=3"]


def run_with_fault(wd, fault=None):
    return run_pipeline(*FLAGS, f"--workdir={wd}", extra_env={"ATMC_FAULT": fault} if fault else None)


def final_weights(wd):
    net = keras.models.load_model(os.path.join(wd, "atmc4", "model.keras"))
    return [w.numpy() for w in net.weights]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = tmp_path_factory.mktemp("resilience") / "clean"
    r = run_with_fault(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd


def _check_complete(wd, reference):
    report = json.loads((wd / "report.json").read_text())
    ref = json.loads((reference / "report.json").read_text())
    budget = report["stage_results"][-1]["constraints"]["budget"]
    assert report["size"]["nnz"] <= budget
    assert all(t["levels"] <= 16 for t in report["size"]["tensors"])
    assert report["phone"]["kernels_exact"] and report["micro"]["ok"]
    for key in ("keras_clean", "keras_robust"):
        assert report["summary"][key] >= ref["summary"][key] - 0.1, (key, report["summary"], ref["summary"])
    # nothing half-written under a final name: every model and JSON file reads back
    for stage in ("da", "al0", "atmc32", "atmc4"):
        keras.models.load_model(wd / stage / "model.keras")
        json.loads((wd / stage / "result.json").read_text())


def _check_identical(wd, reference):
    """A resumed run equals an uninterrupted one: weights, figures and every stage's history."""
    for a, b in zip(final_weights(reference), final_weights(wd)):
        np.testing.assert_array_equal(a, b)
    report, ref = (json.loads((d / "report.json").read_text()) for d in (wd, reference))
    assert report["summary"] == ref["summary"]
    for stage in ("da", "al0", "atmc32", "atmc4"):
        got, want = (json.loads((d / stage / "result.json").read_text())["history"] for d in (wd, reference))
        assert got == want, stage


@pytest.mark.parametrize("fault", ["da:2:3", "atmc4:2:2", "export"])
def test_sigkill_then_rerun_resumes(tmp_path, uninterrupted, fault):
    """The "export" case also checks determinism: its killed run trained every stage in its own process, so
    weights, figures and histories equal to the uninterrupted run's mean the same --seed gives bit-identical
    weights."""
    wd = tmp_path / "run"
    killed = run_with_fault(wd, fault)
    assert killed.returncode == -9, f"the run should have been killed at {fault}: {killed.stderr[-2000:]}"
    stage = fault.split(":")[0]
    if stage != "export":
        assert (wd / stage / "backup").is_dir(), "an epoch checkpoint must exist before the kill"
        assert not (wd / stage / "model.keras").exists()
        before = json.loads((wd / stage / "backup" / "training_metadata.json").read_text())
        killed_in_epoch = int(fault.split(":")[1])
        assert before["epoch"] == killed_in_epoch - 1 and before["seconds"] > 0
    resumed = run_with_fault(wd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if stage != "export":
        # the stage's wall time counts the epochs of the killed run too; its history holds every epoch
        result = json.loads((wd / stage / "result.json").read_text())
        assert result["seconds"] > before["seconds"], (result["seconds"], before)
        assert len(result["history"]["loss"]) == result["epochs"]
        assert not (wd / stage / "backup").exists()
    if stage == "atmc4":
        assert "done already" in resumed.stderr  # DA, AL0 and ATMC-32 were not redone
    _check_complete(wd, uninterrupted)
    _check_identical(wd, uninterrupted)
    assert not [p for p in snapshot(wd) if p.endswith(".tmp") or ".tmp." in p]


def test_kill_during_checkpoint_write_falls_back_to_previous_epoch(tmp_path, uninterrupted):
    """A truncated latest checkpoint (a kill mid-save) resumes from the previous epoch's copy."""
    wd = tmp_path / "run"
    killed = run_with_fault(wd, "atmc4:3:1")  # after epochs 1 and 2 were checkpointed
    assert killed.returncode == -9
    latest = wd / "atmc4" / "backup" / "latest.weights.h5"
    assert (wd / "atmc4" / "backup" / "previous.weights.h5").exists()
    latest.write_bytes(latest.read_bytes()[:1000])  # a damaged file (a failing disk; our writes are atomic)
    resumed = run_with_fault(wd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "previous epoch's checkpoint" in resumed.stderr
    _check_complete(wd, uninterrupted)
    _check_identical(wd, uninterrupted)


@pytest.mark.parametrize("point", ["atmc4:save"])  # ("atmc4:saved": model saved, result not, passes too; left out for CI time)
def test_kill_during_a_stages_final_save_keeps_its_training(tmp_path, uninterrupted, point):
    """The checkpoint outlives the save of the stage's result: a kill there retrains nothing."""
    wd = tmp_path / "run"
    killed = run_with_fault(wd, point)
    assert killed.returncode == -9
    meta = json.loads((wd / "atmc4" / "backup" / "training_metadata.json").read_text())
    assert meta["epoch"] == 3  # every epoch of the stage is in the checkpoint
    resumed = run_with_fault(wd, "atmc4:1:1")  # would kill the run if it trained the stage again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((wd / "atmc4" / "result.json").read_text())
    assert result["seconds"] == pytest.approx(meta["seconds"])
    _check_complete(wd, uninterrupted)
    _check_identical(wd, uninterrupted)


def _start(wd):
    """The pipeline in the background, as a second terminal would start it."""
    env = {k: v for k, v in os.environ.items() if k != "ATMC_FAULT"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "pipelines.atmc", *FLAGS, f"--workdir={wd}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.2)


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path):
    """One run per workdir: while the first holds it, a second one with the same flags is refused in one
    line and exits 2; the first finishes as if alone."""
    wd = tmp_path / "wd"
    first = _start(wd)
    try:
        _wait_for(wd / "config.json", first)  # claimed: the lock is held from here on
        second = run_with_fault(wd)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [l for l in second.stderr.splitlines() if l.strip()]
        assert lines[-1].startswith("error:") and "in use by another run" in lines[-1]
        assert str(first.pid) in lines[-1]
        _, err = first.communicate(timeout=900)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()


def test_sigint_and_sigterm_stop_in_one_line_and_the_run_resumes(tmp_path):
    wd = tmp_path / "wd"
    for sig, code, name, marker in ((signal.SIGINT, 130, "SIGINT", wd / "da" / "backup"),
                                    (signal.SIGTERM, 143, "SIGTERM", wd / "al0")):
        proc = _start(wd)
        try:
            _wait_for(marker, proc)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == code, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        last = [l for l in err.splitlines() if l.strip()][-1]
        assert last.startswith(f"stopped: {name}") and "resume" in last
    done = run_with_fault(wd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done already" in done.stderr and (wd / "report.json").exists()


def _can_mount():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="a real small file system needs root and a private mount namespace; "
                    "tests/test_checkpoint.py injects ENOSPC instead")
def test_a_full_disk_stops_in_one_line_and_the_next_run_resumes(tmp_path, uninterrupted):
    """For real: the workdir on a 1.4 MB tmpfs fills up during the DA stage's epoch checkpoints. One line,
    exit 2, no half-written file; with room made (the file system grown), the same command resumes and
    gives what an uninterrupted run gives."""
    small, out = tmp_path / "small", tmp_path / "out"
    small.mkdir()
    out.mkdir()
    cmd = " ".join([shlex.quote(sys.executable), "-m", "pipelines.atmc", *FLAGS, f"--workdir={small}/wd"])
    script = f"""
set -u
mount -t tmpfs -o size=1400k tmpfs {small}
{cmd} > {out}/full.out 2> {out}/full.err; echo $? > {out}/full.rc
find {small}/wd -name '*.tmp*' > {out}/full.tmp
mount -o remount,size=256m {small}
{cmd} > {out}/again.out 2> {out}/again.err; echo $? > {out}/again.rc
cp -r {small}/wd {out}/wd
"""
    env = {k: v for k, v in os.environ.items() if k != "ATMC_FAULT"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script], cwd=ROOT, env=env,
                   timeout=1200, check=True)
    err = (out / "full.err").read_text()
    assert (out / "full.rc").read_text().strip() == "2", err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: could not write") and "No space left on device" in last, last
    assert "MB free" in last and "run the same command again" in last, last
    assert (out / "full.tmp").read_text().strip() == "", "a temporary file was left behind"
    again = (out / "again.err").read_text()
    assert (out / "again.rc").read_text().strip() == "0", again[-3000:]
    _check_complete(out / "wd", uninterrupted)
    _check_identical(out / "wd", uninterrupted)


def test_changed_data_under_an_existing_workdir_is_refused(tmp_path):
    """Replacing the data file between runs must not resume silently on the old data's stages."""
    data = tmp_path / "data"
    data.mkdir()

    def write(seed):
        rng = np.random.default_rng(seed)
        np.savez(data / "mnist.npz", x_train=rng.integers(0, 256, (60, 28, 28)).astype(np.uint8),
                 y_train=np.arange(60) % 10, x_test=rng.integers(0, 256, (20, 28, 28)).astype(np.uint8),
                 y_test=np.arange(20) % 10)

    write(0)
    wd = tmp_path / "wd"
    args = ["--dataset=mnist_npz", f"--data_dir={data}", "--da_epochs=2", "--pgd_steps=1", "--verbose=0",
            f"--workdir={wd}"]
    killed = run_pipeline(*args, extra_env={"ATMC_FAULT": "da:2:1"})  # epoch 1 checkpointed
    assert killed.returncode == -9, killed.stderr[-2000:]
    write(1)  # other images under the same name
    before = snapshot(wd)
    r = run_pipeline(*args)
    assert r.returncode == 2, r.stderr[-3000:]
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "trained on other data" in last and "mnist_npz" in last, last
    assert snapshot(wd) == before
