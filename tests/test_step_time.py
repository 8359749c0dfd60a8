"""benchmarks/step_time.py: the TF side at batch 8, one round of one step, in-process (no subprocess, no
PyTorch: .venv-torch is never created here); the results JSON, the resumable rerun and the page."""
import json
import os

import pytest

from benchmarks import step_time


def _in_process(variant, cfg, npz, torch_python):
    assert variant != "torch", "torch must be skipped when its python is absent"
    return step_time.tf_worker(variant, npz, cfg["steps"], cfg["warmup"], cfg["eps"], cfg["pgd_steps"], cfg["k"],
                               cfg["lr"])


def test_tf_side_results_and_page(tmp_path):
    cfg = step_time.make_config(["atmc", "bare", "torch"], batch_size=8, steps=1, warmup=1)
    results, page = str(tmp_path / "r.json"), str(tmp_path / "p.md")
    absent = str(tmp_path / "no-venv-torch" / "python")
    step_time.run(cfg, results, page, 1, absent, run_variant=_in_process)
    res = json.load(open(results))
    (rnd,) = res["rounds"]
    assert sorted(rnd["results"]) == ["atmc", "bare"]
    atmc, bare = rnd["results"]["atmc"], rnd["results"]["bare"]
    assert atmc["median_s"] > 0 and bare["median_s"] > 0
    # Same seed arrays: the same initial function on both TF sides.
    assert atmc["initial_clean_loss"] == pytest.approx(bare["initial_clean_loss"], rel=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["p.md", "r.json"]  # the inputs .npz is removed
    text = open(page).read()
    assert "PyTorch was not run" in text
    assert f"| atmc | {atmc['median_s']:.4f} |" in text and "not run |" in text
    assert "load average at start" in text and "tensorflow 2." in text

    # A rerun with the same settings and enough rounds adds nothing; other settings are refused.
    step_time.run(cfg, results, page, 1, absent, run_variant=lambda *a: pytest.fail("no round was missing"))
    with pytest.raises(SystemExit) as e:
        step_time.run(dict(cfg, steps=2), results, page, 1, absent, run_variant=_in_process)
    assert e.value.code == 2


def test_render_ratio_to_torch():
    out = lambda s, fw="tf": {"framework": fw, "median_s": s, "initial_clean_loss": 2.3}
    res = {"config": step_time.make_config(["atmc", "bare", "torch"]), "command": "c", "started": "t",
           "torch_python": "p", "machine": {"cpu": "x", "nproc": 2, "loadavg_at_start": [1, 1, 1], "python": "3",
                                             "platform": "l"},
           "rounds": [{"round": i, "loadavg": None, "results": {"atmc": out(a), "bare": out(b), "torch": out(t, "torch")}}
                      for i, (a, b, t) in enumerate([(1.3, 1.2, 1.0), (1.5, 1.4, 0.9), (1.2, 1.1, 1.1)])]}
    text = step_time.render(res, "r.json")
    assert "| atmc | 1.3000 | 1.083 | 1.300 |" in text  # medians 1.3 / 1.2 / 1.0
    assert "**NOT MET**, atmc / torch = 1.300" in text
    assert "PyTorch was not run" not in text


def test_importing_every_program_together_defines_no_flag_twice():
    """Tests import benchmark and pipeline modules into one pytest process (pytest-xdist puts any two files
    on one worker): a program defines its absl flags when it runs, or under names no other module uses.
    benchmarks.step_time once defined --eps on import and broke six pipeline tests that shared its worker."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mods = ["benchmarks.step_time", "benchmarks.gan_benchmark", "pipelines.gan", "pipelines.flags_def",
            "benchmarks.benchmark", "pipelines.atmc", "pipelines.check_tflite"]
    r = subprocess.run([sys.executable, "-c", "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
                        *mods], cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_bfloat16_variants_run_in_their_own_process(tmp_path):
    """*_bf16 set Keras' global mixed_bfloat16 policy, so they only ever run as a subprocess (as run() does)."""
    cfg = step_time.make_config(["atmc_bf16", "bare_bf16"], batch_size=8, steps=1, warmup=1)
    results, page = str(tmp_path / "r.json"), str(tmp_path / "p.md")
    step_time.run(cfg, results, page, 1, str(tmp_path / "no-torch"))
    (rnd,) = json.load(open(results))["rounds"]
    assert sorted(rnd["results"]) == ["atmc_bf16", "bare_bf16"]
    assert all(r["median_s"] > 0 and r["initial_clean_loss"] > 0 for r in rnd["results"].values())
    assert "mixed_bfloat16" in open(page).read()
