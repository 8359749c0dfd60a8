"""benchmarks/bench_boost.py (issue 24's benchmark): the quick run end to end and resumed, settings refused on
another workdir, the learners' share of the budget, and the target's verdicts."""
import json

import pytest
from pipeline_run import run_module


def run_bench(*args, timeout=900):
    return run_module("benchmarks.bench_boost", *args, timeout=timeout)


@pytest.mark.slow
def test_quick_run_single_and_ensemble_resume(tmp_path):
    wd = tmp_path / "bb"
    r = run_bench("--quick", f"--workdir={wd}", f"--page={tmp_path / 'docs' / 'bb.md'}")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((wd / "results.json").read_text())
    assert list(results["cells"]) == ["single", "boost_2"]
    single, ens = results["cells"]["single"], results["cells"]["boost_2"]
    assert single["learners"] == 1 and ens["learners"] == 2 and [r["round"] for r in ens["rounds"]] == [1, 2]
    for c in (single, ens):
        assert 0 <= c["keras_robust_worst"] <= c["keras_clean"] + 1e-9 and c["device_bytes"]["tflm"] > 0
        assert c["latency_ms"] > 0 and c["train_seconds"] > 0
    boost_cfg = json.loads((wd / "cells" / "boost_2" / "config.json").read_text())
    assert boost_cfg["method"] == "boost" and boost_cfg["rounds"] == 2 and boost_cfg["size_ratio"] == pytest.approx(0.15)
    page = (tmp_path / "docs" / "bb.md").read_text()
    assert "Smoke test" in page and "| boost_2 |" in page and "- boost_2: **" in page
    per_round = " / ".join(f"{r['worst_case']:.3f}" for r in ens["rounds"])
    assert f"| {ens['train_seconds']:.0f} | {per_round} |" in page  # the robust curve of the rounds
    assert f"- boost_2: `python -m benchmarks.bench_boost --quick --workdir={wd}" in page  # how each cell was made
    again = run_bench("--quick", f"--workdir={wd}")
    assert again.returncode == 0 and again.stdout.count("done (resumed)") == 2, again.stdout
    other = run_bench("--quick", "--eps=0.2", f"--workdir={wd}", timeout=120)
    assert other.returncode == 2 and "other settings (eps)" in other.stderr


@pytest.mark.parametrize("flag", ["--rounds=1", "--rounds=2,x", "--rounds=4,4", "--size_ratio=1.5", "--boost_lr=0",
                                  "--learner_size_ratio=0", "--learner_epochs=0"])
def test_bad_flags_are_one_line(tmp_path, flag):
    r = run_bench(flag, f"--workdir={tmp_path / 'x'}", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and flag.split("=")[0] in r.stderr
    assert not (tmp_path / "x").exists()


def test_learners_share_the_single_models_budget():
    from benchmarks import bench_boost as B
    assert B.cells_to_run(["2", "8"]) == [("single", None), ("boost_2", 2), ("boost_8", 8)]
    s = {"dataset": "fashion_mnist", "model": "lenet", "seed": 0, "eps": 0.1, "pgd_steps": 7, "eval_pgd_steps": 20,
         "eval_restarts": 1, "micro_samples": 10, "limit_train": None, "limit_test": 500, "size_ratio": 0.01,
         "boost_epochs": 5, "boost_lr": 3e-3,
         "da_epochs": 20, "al0_epochs": 5, "atmc32_epochs": 5, "atmcb_epochs": 5}
    single = B.pipeline_args("single", None, s, "/b")
    assert "--method=atmc" in single and "--bits=8" in single and "--size_ratio=0.01" in single
    assert "--limit_test=500" in single and not any(a.startswith("--limit_train") for a in single)
    ens = B.pipeline_args("boost_8", 8, s, "/b", data_dir="/d")
    assert "--method=boost" in ens and "--rounds=8" in ens and "--size_ratio=0.00125" in ens and "--data_dir=/d" in ens
    assert "--da_lr=0.003" in ens and not any(a.startswith("--da_lr") for a in single)
    assert B.cells_to_run(["4"], "small_cnn", 0.5) == [("single", None), ("boost_4_small_cnn_r0.5", 4)]
    small = B.pipeline_args("boost_4_small_cnn_r0.5", 4, s, "/b", learner=B.learner_of(4, s, "small_cnn", 0.5))
    assert "--model=small_cnn" in small and "--size_ratio=0.5" in small and "--rounds=4" in small
    assert "--boost_epochs=5" in small
    assert B.learner_of(8, s) == ("lenet", 0.00125, 5)
    assert B.cells_to_run(["2"], None, None, 9) == [("single", None), ("boost_2_model_e9", 2)]
    longer = B.pipeline_args("boost_2_model_e9", 2, s, "/b", learner=B.learner_of(2, s, None, None, 9))
    assert "--boost_epochs=9" in longer and "--model=lenet" in longer and "--size_ratio=0.005" in longer


def test_target_needs_equal_bytes_and_half_the_time():
    from benchmarks import bench_boost as B

    def cell(robust, seconds, tflm):
        return {"keras_robust_worst": robust, "train_seconds": seconds, "device_bytes": {"tflm": tflm}}
    results = {"cells": {"single": cell(0.70, 1000, 100_000), "boost_2": cell(0.695, 450, 105_000),
                         "boost_4": cell(0.695, 600, 105_000), "boost_8": cell(0.72, 900, 130_000)}}
    assert [(k, st) for k, st, _ in B.goal_status(results)] == [
        ("boost_2", "met"), ("boost_4", "not met"), ("boost_8", "not met")]  # 4: too slow; 8: too many bytes
    results["cells"]["boost_4"] = cell(0.71, 990, 90_000)  # better at <= its time
    assert B.goal_status(results)[1][1] == "met"
    del results["cells"]["single"]
    assert {st for _, st, _ in B.goal_status(results)} == {"not yet measured"}
