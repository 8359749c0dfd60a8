"""The benchmark program: a --quick run end to end (results JSON, BENCHMARKS.md, PNG), resume, bad flags,
and the target logic on hand-made results."""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench_report as R  # noqa: E402


def run_bench(*args, timeout=900, extra_env=None):
    env = {**{k: v for k, v in os.environ.items() if k != "ATMC_FAULT"}, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
           **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "benchmarks.benchmark", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rerun_without_training(tmp_path, old, *flags):
    """The --quick benchmark with `flags` on tmp_path/wd, holding the results `old` (None: as left by the last
    call); it must succeed and train nothing. Returns (the completed process, the results it leaves)."""
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    if old is not None:
        (wd / "results.json").write_text(json.dumps(old))
    r = run_bench("--quick", f"--workdir={wd}", f"--docs_dir={tmp_path / 'docs'}", *flags, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ": training (lr" not in r.stderr
    with open(wd / "results.json") as fh:
        return r, json.load(fh)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run (about two minutes on 2 cores) shared by the tests below."""
    base = tmp_path_factory.mktemp("bench")
    wd, docs = base / "wd", base / "docs"
    r = run_bench("--quick", f"--workdir={wd}", f"--docs_dir={docs}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    with open(wd / "results.json") as fh:
        results = json.load(fh)
    return wd, docs, results, r


@pytest.mark.slow
def test_a_failing_cell_does_not_end_the_run(quick, tmp_path):
    """A cell that raises is logged in one line with its traceback kept, the run goes on with the next cells
    (a structured cell dropped from the results is recorded again after it) and exits 1 naming it, unrecorded,
    so that the same command retries it."""
    import shutil
    wd, _, res, _ = quick
    copy = tmp_path / "wd"
    shutil.copytree(wd, copy)
    old = json.loads(json.dumps(res))
    del old["cells"]["ap@0.01"], old["cells"]["satmc8@0.5"]
    (copy / "results.json").write_text(json.dumps(old))
    r = run_bench("--quick", f"--workdir={copy}", f"--docs_dir={tmp_path / 'docs'}",
                  extra_env={"ATMC_FAULT": "cell:ap@0.01"})
    assert r.returncode == 1, r.stderr[-3000:]
    assert "benchmark: cell ap@0.01 FAILED: RuntimeError: ATMC_FAULT=cell:ap@0.01: injected failure" in r.stderr
    assert "same command retries them" in r.stderr
    assert "Traceback" in (copy / "failures" / "ap@0.01.txt").read_text()
    after = json.loads((copy / "results.json").read_text())
    assert "ap@0.01" not in after["cells"] and after["cells"]["satmc8@0.5"]["status"] == "done"


@pytest.mark.slow
def test_quick_results_have_every_field(quick):
    _, _, res, _ = quick
    meta = res["meta"]
    assert meta["quick"] is True
    assert "benchmarks.benchmark --quick" in meta["command"]
    for key in ("tensorflow", "keras", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert"):
        assert meta["versions"][key], key
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu_model"]
    assert meta["started"] and res["updated"]
    cells = res["cells"]
    assert set(cells) == {"da", "da_more", "ap@0.01", "atmc8@0.01", "tfmot@0.01", "da~fgsm_rs",
                          "atmc8@0.01~fgsm_rs", "satmc8@0.5"}, sorted(cells)
    for key, cell in cells.items():
        assert cell["status"] == "done", (key, cell)
        fields = R.TFMOT_FIELDS if cell["method"] == "tfmot" else R.CELL_FIELDS
        missing = [f for f in fields if f not in cell or cell[f] is None]
        assert not missing, (key, missing)
        for f in ("clean_acc", "robust_acc", "tflite_clean_acc", "tflite_robust_acc"):
            assert 0 <= cell[f] <= 1, (key, f, cell[f])
        assert 0 < cell["tflite_gzip_bytes"] < cell["tflite_bytes"], key
        assert cell["train_seconds"] > 0 and cell["paper_bits"] > 0, key
    da, a8, ap = cells["da"], cells["atmc8@0.01"], cells["ap@0.01"]
    more = cells["da_more"]  # the fair ceiling: DA + the compression epochs, still dense
    assert more["nnz"] == da["nnz"] and more["paper_ratio"] == pytest.approx(1.0)
    assert [st["epochs"] for st in more["stages"]] == [res["meta"]["settings"]["compress_epochs"]]
    assert da["paper_ratio"] == pytest.approx(1.0)
    for c in (a8, ap):  # the budget holds: paper-style size at most the ratio asked
        assert c["paper_ratio"] <= 0.01 + 1e-9, c["paper_ratio"]
    assert a8["kernel_code_mismatches"] == 0  # codebook_int8: the .tflite stores the trained codes
    assert a8["nnz"] > ap["nnz"]  # 8-bit nonzeros are cheaper than fp32 ones at the same size
    assert a8["tflite_gzip_bytes"] < da["tflite_gzip_bytes"]
    t = cells["tfmot@0.01"]
    assert t["target_gzip_bytes"] == a8["tflite_gzip_bytes"] and 0 < t["sparsity"] < 1
    assert t["rebuild_max_logit_diff"] < 1e-3
    tm = res["timing"]
    assert tm["bare_step_s"] > 0 and tm["ratio_atmc8"] > 0 and tm["ratio_atmc4"] > 0
    assert res["pgd100"]["cell"] in cells and 0 <= res["pgd100"]["robust_acc"] <= 1
    assert res["resnet50_cost"]["skipped"]
    assert res["tuning"]["da_lr"]["chosen"] and set(res["tuning"]["lr"]) == {"ap", "atmc"}
    # device bytes: LiteRT = the raw .tflite; TFLM = the batch-1 model, its sparse kernels LUT- or PRUNE-compressed
    assert a8["l0_scoring"] == "magnitude"
    assert a8["tflm_bytes"] < a8["tflm_b1_bytes"], a8
    assert any(t["encoding"] in ("lut_per_channel", "prune") for t in a8["tflm_encoding"]), a8["tflm_encoding"]
    assert da["tflm_bytes"] <= da["tflm_b1_bytes"]
    assert t["tflm_bytes"] > 0 and "TFMOT" in t["tflm_source"]
    for c in cells.values():
        assert os.path.getsize(c["tflm_file"]) == c["tflm_bytes"]
    # phone bytes: the pipeline's choice (pipelines/phone.py) among the int8, INT4-packed and sparse files
    for c in (da, a8, ap):
        assert c["phone_file"] in ("int8", "int4", "sparse") and c["phone_bytes"] <= c["tflite_bytes"], c
        assert (c["phone_file"] == "int8") == (c["phone_bytes"] == c["tflite_bytes"])
    assert "phone_bytes" not in t  # TFMOT's cell: its own tf_keras file, not re-chosen
    # issue 22: DA from scratch and ATMC-8 from it, trained with FGSM-RS (the stages say so), PGD cells untouched
    for key in ("da~fgsm_rs", "atmc8@0.01~fgsm_rs"):
        c = cells[key]
        assert c["train_attack"] == "fgsm_rs" and "train_attack" not in cells[key.split("~")[0]], key
        stage_dirs = [os.path.dirname(c["model_file"])] if key.startswith("da") else [
            os.path.join(os.path.dirname(os.path.dirname(c["model_file"])), st["stage"]) for st in c["stages"]]
        for d in stage_dirs:
            with open(os.path.join(d, "result.json")) as fh:
                assert json.load(fh)["train_attack"] == "fgsm_rs", d
    assert cells["atmc8@0.01~fgsm_rs"]["paper_ratio"] <= 0.01 + 1e-9
    assert cells["atmc8@0.01~fgsm_rs"]["kernel_code_mismatches"] == 0
    # issue 16: structured cells ship as the cut model, smaller than DA's, at most the kept ratio of its parameters
    for key in ("satmc8@0.5",):  # --quick trains one structured method (--structured_methods)
        c, st = cells[key], cells[key]["structure"]
        assert c["tflite_bytes"] < da["tflite_bytes"] and st["macs"]["compressed"] < st["macs"]["dense"], key
        assert st["params"]["compressed"] <= 0.5 * st["params"]["dense"] + 1e-9, (key, st["params"])
        assert st["tflite_b1_bytes"]["compressed"] < st["tflite_b1_bytes"]["dense"], key
        assert all(v > 0 for v in st["litert_latency_ms"].values()), key
        assert c["model_file"].endswith("deployed.keras") and os.path.exists(c["model_file"]), key
    assert cells["satmc8@0.5"]["kernel_code_mismatches"] == 0
    # issue 18: every cell attacked as reviewers do, with the --quick attack settings
    for key, c in cells.items():
        a = c["attacks"]
        assert a["settings"] == {"apgd_steps": 3, "square_n": 40, "square_queries": 20, "eps": 0.1,
                                 "eval_pgd_steps": 3, "eval_restarts": 1, "seed": 0}, key
        assert a["n"] == 200 and a["square"]["n"] == 40 and 1 <= a["square"]["queries_mean"] <= 20, key
        assert a["tflite"]["clean"] == pytest.approx(c["tflite_clean_acc"]), key
        # a worst case is never above any of its attacks, nor above clean
        assert a["tflite_worst_case"] <= min(a["tflite"].values()) + 1e-12, key
        assert a["first_n"]["tflite_direct"] <= a["square"]["acc"] + 1e-12, key
        if c["method"] == "tfmot":  # a tf_keras model: the attacks on its .tflite only
            assert "keras" not in a and set(a["tflite"]) == {"clean", "twin pgd"}, a
            continue
        assert set(a["keras"]) == {"clean", "pgd", "apgd-ce", "apgd-dlr"}, key
        assert a["keras_worst_case"] <= min(a["keras"].values()) + 1e-12, key
        assert a["keras"]["clean"] == pytest.approx(c["clean_acc"]), key
        assert {"transfer pgd", "transfer apgd-ce", "transfer apgd-dlr", "twin pgd"} <= set(a["tflite"]), key
        assert a["twin_agreement"] >= 0.9, (key, a["twin_agreement"])


@pytest.mark.slow
def test_quick_docs_written_and_marked_as_smoke_test(quick):
    wd, docs, res, _ = quick
    md = (docs / "BENCHMARKS.md").read_text()
    assert "QUICK SMOKE RUN" in md
    assert res["meta"]["command"] in md
    assert res["meta"]["machine"]["cpu_model"] in md
    assert "tensorflow 2." in md
    for t in ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T14", "T15"):
        assert f"| {t} |" in md
    fast = md.split("## Cheaper adversarial training")[1].split("\n## ")[0]
    assert "| DA | FGSM-RS |" in fast and "| ATMC-8 @ 0.01 | FGSM-RS |" in fast and "NOT RUN YET" not in fast
    attacks = md.split("## Attacks as reviewers run them")[1].split("\n## ")[0]
    for key in res["cells"]:
        assert f"| {key} | " in attacks, key
    assert "Not attacked yet" not in attacks
    assert "### size ratio 0.01" in md and "| ATMC-8 | " in md and "TFMOT prune+QAT" in md
    assert "| TFLM bytes |" in md and f"{res['cells']['atmc8@0.01']['tflm_bytes']:,}" in md
    lamp = md.split("## Magnitude vs LAMP scoring")[1].split("\n## ")[0]  # the quick run has no LAMP cells
    assert f"| 0.01 | ATMC-8 | {R._pct(res['cells']['atmc8@0.01']['tflite_robust_acc'])} | NOT RUN YET |" in lamp
    # NOT RUN YET where the quick run has no cells (T3 needs AL0, ATMC-4 and ratio 0.003)
    assert "| T3 |" in md and md.split("| T3 |")[1].split("\n")[0].count("NOT RUN YET") == 1
    png = (docs / "benchmark_tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with open(docs / R.RESULTS_COPY) as fh:  # the page's source, beside it
        assert json.load(fh) == res


@pytest.mark.slow
def test_rerun_resumes_without_retraining_and_retime_measures_again(quick):
    wd, docs, res, _ = quick
    before = {k: c["finished"] for k, c in res["cells"].items()}
    r = run_bench("--quick", f"--workdir={wd}", f"--docs_dir={docs}", "--retime", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(wd / "results.json") as fh:
        after = json.load(fh)
    assert {k: c["finished"] for k, c in after["cells"].items()} == before
    assert ": training (lr" not in r.stderr  # no cell was trained again
    (old,) = after["timing_history"]  # --retime kept the replaced figures
    assert old["timing"] == res["timing"] and old["replaced"]
    assert after["timing"]["all_times_s"] != res["timing"]["all_times_s"]  # measured afresh
    assert after["timing"]["ratio_atmc8"] > 0
    assert "replaced by `--retime`" in (docs / "BENCHMARKS.md").read_text()


@pytest.mark.slow
def test_remeasure_device_bytes_fills_cells_recorded_without_them(quick, tmp_path):
    """A results.json from before the device bytes (fields removed): --remeasure_device_bytes measures
    them from each cell's saved model (TFMOT: its .tflite) to the bytes the run recorded, trains nothing."""
    wd, _, res, _ = quick
    old = json.loads(json.dumps(res))
    for c in old["cells"].values():
        for f in R.DEVICE_FIELDS + ("tflm_file", "tflm_source", "tflm_compressed_tensors", "phone_bytes"):
            c.pop(f, None)
    assert "| n/a |" in R.markdown(old)
    r, after = rerun_without_training(tmp_path, old, "--remeasure_device_bytes")
    for key, c in res["cells"].items():
        assert after["cells"][key]["tflm_bytes"] == c["tflm_bytes"], key
        assert after["cells"][key]["tflm_b1_bytes"] == c["tflm_b1_bytes"], key
        assert after["cells"][key]["device_bytes_remeasured"]
        assert after["cells"][key].get("phone_bytes") == c.get("phone_bytes"), key
    assert f"TFLM {res['cells']['atmc8@0.01']['tflm_bytes']} B" in r.stdout


@pytest.mark.slow
def test_reexport_activation_sparsity_redoes_the_wta_cells_exported_pairwise(quick, tmp_path):
    """A winners-take-all cell exported before the O(n) form (no wta_export mark): --reexport_activation_sparsity
    exports it again from its saved model (wide layers as a threshold search), keeps the old figures under
    pairwise_export, measures latency and attacks again, trains nothing and leaves the other cells alone."""
    import keras

    from atmc_tf.export import op_names
    from atmc_tf.layers import insert_activation_sparsity, strip_model
    wd, _, res, _ = quick
    old = json.loads(json.dumps(res))
    base = old["cells"]["atmc8@0.01"]
    net = insert_activation_sparsity(strip_model(keras.models.load_model(base["model_file"])), "wta", density=0.25)
    model_file = str(tmp_path / "wta.keras")
    net.save(model_file)
    old["cells"]["atmc8@0.01~wta25"] = {**base, "variant": "wta25", "activation_sparsity": "wta",
                                        "activation_density": 0.25, "model_file": model_file,
                                        "activation": {"litert_latency_ms": {"with": 9.0, "without": 0.1}}}
    _, after = rerun_without_training(tmp_path, old, "--reexport_activation_sparsity")
    c = after["cells"]["atmc8@0.01~wta25"]
    assert c["wta_export"] and c["pairwise_export"]["tflite_bytes"] == base["tflite_bytes"]
    assert c["pairwise_export"]["litert_latency_ms"]["with"] == 9.0 and c["activation"]["litert_latency_ms"]["with"] < 9
    assert c["attacks"]["settings"] == base["attacks"]["settings"] and c["tflm_bytes"] > 0
    assert c["tflite_file"].startswith(str(tmp_path / "wd")) and "GATHER" in op_names(open(c["tflite_file"], "rb").read())
    for key, cell in res["cells"].items():
        assert after["cells"][key] == cell, key
    md = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "| ATMC-8 @ 0.01 | 0.25 | pairwise | " in md and "| ATMC-8 @ 0.01 | 0.25 | threshold search | " in md


@pytest.mark.slow
def test_attacks_only_attacks_again_when_the_attack_settings_change(quick, tmp_path):
    """--attacks_only trains nothing; cells attacked with the same settings are left alone, a changed query
    budget attacks every cell again, and a cell recorded before the attacks existed gets them."""
    wd, _, res, _ = quick
    old = json.loads(json.dumps(res))
    del old["cells"]["ap@0.01"]["attacks"]
    assert "Not attacked yet: ap@0.01" in R.markdown(old)
    _, after = rerun_without_training(tmp_path, old, "--attacks_only")
    for key, c in res["cells"].items():
        if key != "ap@0.01":
            assert after["cells"][key]["attacks"] == c["attacks"], key  # same settings: not attacked again
    assert after["cells"]["ap@0.01"]["attacks"]["settings"] == res["cells"]["ap@0.01"]["attacks"]["settings"]
    _, again = rerun_without_training(tmp_path, None, "--attacks_only", "--square_queries=6")
    for key, c in again["cells"].items():
        assert c["attacks"]["settings"]["square_queries"] == 6 and c["attacks"]["square"]["queries_mean"] <= 6, key
        assert c["finished"] == res["cells"][key]["finished"], key
    assert "| T7 |" in (tmp_path / "docs" / "BENCHMARKS.md").read_text()


@pytest.mark.slow
def test_render_only_rebuilds_the_docs(quick, tmp_path):
    wd, _, _, _ = quick
    docs = tmp_path / "docs"
    r = run_bench("--quick", f"--workdir={wd}", f"--docs_dir={docs}", "--render_only", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (docs / "BENCHMARKS.md").read_text()
    assert page.startswith("# Benchmark")
    assert (docs / "benchmark_tradeoff.png").stat().st_size > 10_000
    # Without the workdir, from the copy of the results beside the page: the same page.
    (docs / "BENCHMARKS.md").unlink()
    r = run_bench("--quick", f"--workdir={tmp_path / 'gone'}", f"--docs_dir={docs}", "--render_only", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert R.RESULTS_COPY in r.stdout
    assert (docs / "BENCHMARKS.md").read_text() == page


@pytest.mark.slow
def test_workdir_of_other_settings_is_refused(quick):
    wd, docs, _, _ = quick
    r = run_bench("--quick", f"--workdir={wd}", f"--docs_dir={docs}", "--eps=0.2", timeout=120)
    assert r.returncode == 2
    assert "other settings" in r.stderr and "eps" in r.stderr


def test_library_and_pipelines_never_import_the_benchmark():
    """benchmarks/ sits on top of atmc_tf and pipelines/; neither may depend on it."""
    offenders = []
    for top in ("atmc_tf", "pipelines"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in (f for f in files if f.endswith(".py")):
                file = os.path.join(folder, name)
                with open(file) as fh:
                    tree = ast.parse(fh.read(), file)
                for node in ast.walk(tree):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                    offenders += [f"{os.path.relpath(file, ROOT)}: {n}" for n in names
                                  if n.split(".")[0] == "benchmarks"]
    assert not offenders


IDENTITY_CHECK = """
import json, sys
from benchmarks.benchmark import identity_diff
mine = {"eps": 0.1, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "tune_val": 3000}
print(json.dumps([
    identity_diff(mine, {"eps": 0.1}),                                   # an Adam-era run: no optimizer flags
    identity_diff(mine, {**mine, "since_removed": 1}),                   # a setting the program dropped
    identity_diff({**mine, "tune_val": 10}, {k: v for k, v in mine.items() if k != "tune_val"}),
]))
"""


def test_identity_of_a_run_from_before_a_setting_existed():
    """A workdir whose run predates a pipeline setting ran at that setting's PipelineConfig default
    (Adam, no weight decay), not at the benchmark's flag default (SGD); a benchmark-only flag
    missing from it counts as the flag's default; a removed setting is ignored."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", IDENTITY_CHECK], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    adam_era, removed, bench_flag = json.loads(r.stdout)
    assert adam_era == ["optimizer", "weight_decay"]  # momentum 0.9 and tune_val 3000 are their defaults
    assert removed == []
    assert bench_flag == ["tune_val"]  # 10 against the flag default 3000


def test_identity_ignores_the_boosting_settings():
    """--method=boost's settings train nothing here: a workdir recorded before --boost_epochs' default changed
    (5 -> 15) resumes."""
    from benchmarks import benchmark as B

    class Cfg:  # what identity reads of a PipelineConfig
        def as_dict(self):
            return {"eps": 0.1, "model": "lenet", "method": "atmc", "rounds": 3, "boost_epochs": 15}
    mine = B.identity(Cfg(), {"quick": False})
    assert "boost_epochs" not in mine and "rounds" not in mine and "eps" in mine
    assert B.identity_diff(mine, {**mine, "boost_epochs": 5, "rounds": 3}) == []


@pytest.mark.parametrize("flag,mentions", [
    ("--ratios=0", "--ratios"), ("--ratios=0.01,abc", "--ratios"), ("--methods=magic", "--methods"),
    ("--method=ap", "--method"), ("--size_ratio=0.1", "--size_ratio"), ("--compress_epochs=2", "--compress_epochs"),
    ("--lr_grid=-1", "--lr_grid"), ("--variants=pgd", "--variants"), ("--structured_methods=ap", "--structured_methods"),
    ("positional", "unexpected arguments")])
def test_bad_flags_exit_2(tmp_path, flag, mentions):
    r = run_bench(flag, f"--workdir={tmp_path / 'wd'}", f"--docs_dir={tmp_path / 'docs'}", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert mentions in r.stderr
    assert not (tmp_path / "wd" / "results.json").exists()


def test_render_only_without_results_fails_cleanly(tmp_path):
    r = run_bench(f"--workdir={tmp_path}", f"--docs_dir={tmp_path / 'docs'}", "--render_only", timeout=120)
    assert r.returncode == 2 and "results.json" in r.stderr


# --- the target logic, on hand-made results ------------------------------------------------

def _cell(method, ratio, robust, clean=0.8, t_robust=None, t_clean=None, gz=1000):
    return {"method": method, "ratio": ratio, "status": "done", "robust_acc": robust, "clean_acc": clean,
            "tflite_robust_acc": robust if t_robust is None else t_robust,
            "tflite_clean_acc": clean if t_clean is None else t_clean, "tflite_gzip_bytes": gz}


def _results(ratios=(0.003, 0.01), methods=R.METHODS, **cells):
    return {"meta": {"settings": {"ratios": list(ratios), "methods": list(methods)}}, "cells": dict(cells)}


def _status(results, tid):
    return next(t["status"] for t in R.targets(results) if t["id"] == tid)


def test_targets_t1_t2():
    res = _results(**{"da": _cell("da", None, 0.70), "atmc8@0.01": _cell("atmc8", 0.01, 0.68),
                      "ap@0.01": _cell("ap", 0.01, 0.64)})
    assert _status(res, "T1") == R.MET and _status(res, "T2") == R.MET
    res["cells"]["atmc8@0.01"]["robust_acc"] = 0.66  # 4 points below DA, 2 above AP
    assert _status(res, "T1") == R.NOT_MET and _status(res, "T2") == R.NOT_MET
    res["cells"]["da_more"] = _cell("da_more", None, 0.67)  # context only: the verdicts stay
    t1, t2 = R.targets(res)[:2]
    assert (t1["status"], t2["status"]) == (R.NOT_MET, R.NOT_MET)
    assert "da_more - ATMC-8 = 1.0 pts" in t1["evidence"][-1]
    assert "AP is 3.0 pts below the dense ceiling" in t2["evidence"][-1]
    del res["cells"]["ap@0.01"]
    assert _status(res, "T2") == R.NOT_RUN


def test_targets_t3_needs_every_low_ratio_and_fails_early():
    cells = {}
    for r in (0.003, 0.01):
        cells.update({f"ap@{r:g}": _cell("ap", r, 0.5), f"al0@{r:g}": _cell("al0", r, 0.55),
                      f"atmc8@{r:g}": _cell("atmc8", r, 0.6), f"atmc4@{r:g}": _cell("atmc4", r, 0.58)})
    res = _results(**cells)
    assert _status(res, "T3") == R.MET
    del res["cells"]["atmc4@0.003"]
    assert _status(res, "T3") == R.NOT_RUN
    res["cells"]["atmc4@0.003"] = {"method": "atmc4", "ratio": 0.003, "status": "infeasible", "reason": "x"}
    assert _status(res, "T3") == R.MET  # an infeasible (ratio, bits) pair is reported, not counted
    res["cells"]["atmc8@0.01"]["robust_acc"] = 0.55  # ties AL0: does not beat it
    assert _status(res, "T3") == R.NOT_MET


def test_targets_t4_t5_t6():
    res = _results(ratios=(0.01,), **{"atmc8@0.01": _cell("atmc8", 0.01, 0.6, t_robust=0.61),
                                      "tfmot@0.01": _cell("tfmot", 0.01, 0.05)})
    assert _status(res, "T4") == R.MET
    res["cells"]["tfmot@0.01"]["tflite_robust_acc"] = 0.35
    assert _status(res, "T4") == R.NOT_MET
    assert _status(res, "T5") == R.NOT_RUN  # DA and the baselines are missing
    res = _results(ratios=(0.01,), methods=("da", "atmc8"),
                   **{"da": _cell("da", None, 0.7), "atmc8@0.01": _cell("atmc8", 0.01, 0.6)})
    res["meta"]["settings"]["methods"] = ["da", "atmc8"]
    for m in R.COMPRESSED:
        res["cells"].setdefault(f"{m}@0.01", _cell(m, 0.01, 0.5))
    assert _status(res, "T5") == R.MET
    res["cells"]["ap@0.01"]["tflite_clean_acc"] = 0.78  # 2 points below Keras
    assert _status(res, "T5") == R.NOT_MET
    assert _status(res, "T6") == R.NOT_RUN
    res["timing"] = {"ratio_atmc8": 1.05, "atmc8_step_s": 0.21, "bare_step_s": 0.2}
    assert _status(res, "T6") == R.MET
    res["timing"]["ratio_atmc8"] = 1.2
    assert _status(res, "T6") == R.NOT_MET
    # ATMC-4 counts too: one variant above 1.10 and the target is not met
    res["timing"].update(ratio_atmc8=1.05, ratio_atmc4=1.17, atmc4_step_s=0.234)
    assert _status(res, "T6") == R.NOT_MET
    res["timing"]["ratio_atmc4"] = 1.09
    assert _status(res, "T6") == R.MET


def _attacked(cell, keras_worst, direct, keras_worst_n=None):
    a = {"settings": {"apgd_steps": 100, "square_n": 1000, "square_queries": 5000, "eps": 0.1,
                      "eval_pgd_steps": 20, "eval_restarts": 5, "seed": 0},
         "n": 10000, "tflite": {"clean": 0.8, "twin pgd": direct}, "tflite_worst_case": direct,
         "twin_agreement": 0.99, "square": {"n": 1000, "acc": direct, "queries_mean": 900.0, "queries_max": 5000},
         "first_n": {"n": 1000, "tflite_direct": direct}, "seconds": 1.0}
    if keras_worst is not None:
        a.update(keras={"clean": 0.8, "pgd": cell["robust_acc"]}, keras_worst_case=keras_worst)
        a["first_n"]["keras_worst_case"] = keras_worst if keras_worst_n is None else keras_worst_n
    return {**cell, "attacks": a}


def test_targets_t7_t8_attacks():
    """T7: the worst case within 2 points below the cell's PGD figure; T8: the .tflite attacked directly within
    2 points of the Keras worst case on the same images (TFMOT: its own PGD figure); cells not attacked keep
    both NOT RUN YET."""
    res = _results(ratios=(0.01,), methods=("da", "ap"), **{
        "da": _attacked(_cell("da", None, 0.70), 0.69, 0.695),
        "ap@0.01": _attacked(_cell("ap", 0.01, 0.60), 0.585, 0.60, keras_worst_n=0.59),
        "tfmot@0.01": _attacked(_cell("tfmot", 0.01, 0.30), None, 0.29)})
    assert _status(res, "T7") == R.MET and _status(res, "T8") == R.MET
    res["cells"]["ap@0.01"]["attacks"]["keras_worst_case"] = 0.575  # 2.5 points below PGD: masking
    assert _status(res, "T7") == R.NOT_MET and _status(res, "T8") == R.MET
    res["cells"]["tfmot@0.01"]["attacks"]["first_n"]["tflite_direct"] = 0.27  # 3 points below its PGD figure
    assert _status(res, "T8") == R.NOT_MET
    res = _results(ratios=(0.01,), methods=("da",), da=_attacked(_cell("da", None, 0.7), 0.69, 0.69),
                   **{"da_more": _cell("da_more", None, 0.71)})
    assert _status(res, "T7") == R.NOT_RUN and _status(res, "T8") == R.NOT_RUN
    md = "\n".join(R._attack_lines(res))
    assert "Not attacked yet: da_more." in md and "| da | 70.0 | 70.0 | - | - | **69.0** | -1.0 pts |" in md


def test_target_t9_fast_training_attacks():
    """T9: some cheaper attack within 1 point of PGD's robust accuracy (the worst case once attacked) at <= 1/3
    of PGD's training time; ATMC-8's time includes its own DA's; absent without cheaper-attack cells."""
    def cell(method, ratio, robust, seconds, attack=None):
        return {**_cell(method, ratio, robust), "train_seconds": seconds,
                **({"train_attack": attack, "variant": attack} if attack else {})}
    res = _results(ratios=(0.01,), methods=("da", "atmc8"), **{
        "da": cell("da", None, 0.70, 3000), "atmc8@0.01": cell("atmc8", 0.01, 0.66, 1200)})
    assert "T9" not in [t["id"] for t in R.targets(res)]
    res["cells"]["da~free"] = cell("da", None, 0.695, 900, "free")
    res["cells"]["da~fgsm_rs"] = cell("da", None, 0.60, 500, "fgsm_rs")
    assert _status(res, "T9") == R.NOT_RUN  # ATMC-8's cheaper cells missing
    res["cells"]["atmc8@0.01~free"] = cell("atmc8", 0.01, 0.655, 300, "free")  # (900 + 300) / (3000 + 1200)
    assert _status(res, "T9") == R.MET
    row = next(r for r in R.fast_rows(res) if r["key"] == "atmc8@0.01~free")
    assert row["seconds"] == 1200 and abs(row["ratio"] - 1200 / 4200) < 1e-12
    res["cells"]["atmc8@0.01~free"] = _attacked(res["cells"]["atmc8@0.01~free"], 0.60, 0.60)  # the strongest counts
    assert _status(res, "T9") == R.NOT_MET
    assert "| ATMC-8 @ 0.01 | free |" in "\n".join(R._fast_lines(res))
    # none within 1 point: "best" names the closest in robust accuracy, not the fastest
    evidence = next(t for t in R.targets(res) if t["id"] == "T9")["evidence"]
    assert evidence[0].endswith("(best: free)") and evidence[1].endswith("(best: free)"), evidence
    res["cells"]["atmc8@0.01~fgsm_rs"] = cell("atmc8", 0.01, 0.50, 100, "fgsm_rs")  # faster, much weaker
    assert next(t for t in R.targets(res) if t["id"] == "T9")["evidence"][1].endswith("(best: free)")


def test_targets_t14_t15_structured():
    """T14: a structured ATMC cell at 0.25 within 2 points of DA's robust accuracy at <= 0.3x its raw bytes and
    <= 0.5x its latency; T15: the best structured ATMC >= 2 points above structured AP at every ratio."""
    def scell(method, ratio, robust, nbytes, lat):
        return {**_cell(method, ratio, robust), "tflite_bytes": nbytes,
                "structure": {"litert_latency_ms": {"dense": 1.0, "compressed": lat}, "layers": {"c": {"kept": 5,
                              "total": 20}}, "macs": {"dense": 100, "compressed": 25}}}
    res = _results(ratios=(0.01,), methods=("da",), **{
        "da": {**_cell("da", None, 0.70), "tflite_bytes": 1000},
        "sap@0.25": scell("sap", 0.25, 0.62, 250, 0.4), "satmc@0.25": scell("satmc", 0.25, 0.685, 280, 0.45),
        "satmc8@0.25": scell("satmc8", 0.25, 0.66, 280, 0.45)})
    assert _status(res, "T14") == R.MET and _status(res, "T15") == R.MET
    res["cells"]["satmc@0.25"]["structure"]["litert_latency_ms"]["compressed"] = 0.6
    assert _status(res, "T14") == R.NOT_MET
    # Issue 20's objective variant of satmc8@0.25 is not the plain structured cell (it would replace it)
    res["cells"]["satmc8@0.25~ard"] = {**scell("satmc8", 0.25, 0.40, 280, 0.45), "variant": "ard", "distill": "ard"}
    assert R._struct_cells(res)[0.25]["satmc8"]["robust_acc"] == 0.66
    res["cells"]["sap@0.5"] = scell("sap", 0.5, 0.66, 500, 0.7)  # its structured ATMC cells are missing
    assert _status(res, "T15") == R.NOT_RUN
    res["cells"]["sap@0.25"]["robust_acc"] = 0.67  # structured ATMC only 1.5 points above
    assert _status(res, "T15") == R.NOT_MET  # a failed ratio decides even with another missing
    md = "\n".join(R._structured_lines(res))
    assert "| 0.25 | structured ATMC | 80.0 | 68.5 | 68.5 | - | 280 (0.280) | 25 (0.250) | 0.600 (0.600) | 5 of 20 |" in md
    assert "| 0.5 | structured ATMC-8 | NOT RUN YET |" in md


def test_targets_t16_t17_device_bytes():
    """T16: the most robust ATMC cell (unstructured or structured) whose TFLM file fits 64 KB is within 3 points of
    DA (.tflite robust); T17: every AP / structured AP / TFMOT cell is beaten by >= 2 points by an ATMC cell of
    equal or fewer TFLM bytes."""
    def dev(method, ratio, robust, tflm):
        return {**_cell(method, ratio, robust), "tflm_bytes": tflm}
    res = _results(ratios=(0.01,), methods=("da",), **{
        "da": dev("da", None, 0.65, 1_275_224),
        "atmc8@0.01": dev("atmc8", 0.01, 0.66, 223_888),
        "satmc8@0.04": dev("satmc8", 0.04, 0.61, 60_000),  # fits; 4 points below DA
        "satmc4@0.08": dev("satmc4", 0.08, 0.63, 65_536),  # fits (exactly 64 KiB); 2 points below: the best that fits
        "satmc4@0.1": dev("satmc4", 0.1, 0.70, 70_000),  # more robust, but does not fit
        "ap@0.01": dev("ap", 0.01, 0.62, 223_888),  # equal bytes: atmc8@0.01 is 4 points above
        "sap@0.04": dev("sap", 0.04, 0.58, 61_000)})  # satmc8@0.04 (60,000 B) is 3 points above
    t = {x["id"]: x for x in R.targets(res)}
    assert t["T16"]["status"] == R.MET and "satmc4@0.08" in t["T16"]["evidence"][0], t["T16"]
    assert t["T17"]["status"] == R.MET and len(t["T17"]["evidence"]) == 2, t["T17"]
    res["cells"]["satmc4@0.08"]["tflm_bytes"] = 65_537  # one byte over: the best that fits is 4 points below DA
    assert _status(res, "T16") == R.NOT_MET
    res["cells"]["satmc8@0.04~ard"] = {**dev("satmc8", 0.04, 0.65, 60_000), "variant": "ard"}  # variants don't count
    assert _status(res, "T16") == R.NOT_MET
    res["cells"]["sap@0.04"]["tflite_robust_acc"] = 0.595  # satmc8@0.04 only 1.5 points above
    assert _status(res, "T17") == R.NOT_MET
    res["cells"]["sap@0.04"]["tflite_robust_acc"] = 0.58
    res["cells"]["tfmot@0.01"] = dev("tfmot", 0.01, 0.10, 40_000)  # smaller than every ATMC cell: not checkable
    t17 = next(x for x in R.targets(res) if x["id"] == "T17")
    assert t17["status"] == R.NOT_RUN and "tfmot@0.01" in t17["missing"][0], t17
    # a run without any device-bytes cell has no T16 / T17 rows
    assert not [x for x in R.targets(_results(da=_cell("da", None, 0.6))) if x["id"] in ("T16", "T17")]


def test_structured_atmc4_is_a_structured_method_shown_only_where_run():
    from benchmarks import benchmark as B
    assert B.STRUCTURED["satmc4"][0] == "atmc4" and B.FAMILY["atmc4"] == "atmc"
    assert B.STRUCTURED["satmc2"][0] == "atmc2" and "satmc2" in R.ATMC_FAMILY and "satmc2" in R.STRUCT_COLORS
    res = _results(ratios=(0.01,), methods=("da",), **{"sap@0.25": _cell("sap", 0.25, 0.6)})
    assert list(R._struct_cells(res)[0.25]) == ["sap", "satmc", "satmc8"]
    res["cells"]["satmc4@0.1"] = _cell("satmc4", 0.1, 0.6)
    rows = R._struct_cells(res)
    assert list(rows[0.25]) == ["sap", "satmc", "satmc8", "satmc4"] and rows[0.25]["satmc4"] is None
    assert rows[0.1]["satmc4"]["robust_acc"] == 0.6
    t14 = next(t for t in R.targets(res) if t["id"] == "T14")
    assert "satmc4@0.25" not in t14["missing"] and "satmc@0.25" in t14["missing"]  # ATMC-4 never ran at 0.25
    res["cells"]["satmc2@0.1"] = _cell("satmc2", 0.1, 0.5)  # a 2-bit cell: its own column where it ran
    assert list(R._struct_cells(res)[0.1]) == ["sap", "satmc", "satmc8", "satmc4", "satmc2"]


def test_target_t10_activation_sparsity():
    """T10: some WTA variant of ATMC-8 at <= 0.3x its effective MACs (adversarial inputs; a cell without the
    layers computes all of them) for at most 2 points of robust accuracy, the lowest of PGD and BPDA PGD."""
    act = lambda macs, plain, bpda: {"macs": {"dense": 1000, "effective_adversarial": macs},  # noqa: E731
                                     "pgd": {"plain": plain, "bpda": bpda},
                                     "litert_latency_ms": {"with": 0.2, "without": 0.1}}
    res = _results(ratios=(0.01,), methods=("da", "atmc8"), **{
        "da": _cell("da", None, 0.70), "atmc8@0.01": _cell("atmc8", 0.01, 0.66),
        "atmc8@0.01~wta25": {**_cell("atmc8", 0.01, 0.66), "variant": "wta25", "activation_sparsity": "wta",
                             "activation_density": 0.25, "activation": act(250, 0.66, 0.65)}})
    assert _status(res, "T10") == R.MET  # 0.25x the MACs, 1 point (BPDA) below
    res["cells"]["atmc8@0.01~wta25"]["activation"] = act(250, 0.66, 0.63)  # BPDA finds 3 points more
    assert _status(res, "T10") == R.NOT_MET
    res["cells"]["atmc8@0.01~wta25"]["activation"] = act(350, 0.66, 0.66)  # 0.35x
    assert _status(res, "T10") == R.NOT_MET
    md = "\n".join(R._wta_lines(res))
    assert "| ATMC-8 @ 0.01 | 0.25 | 80.0 | 66.0 | 66.0 | 350 | 0.350 | 0.200 / 0.100 | n/a | +0.0 pts |" in md
    assert "| DA | wta25 | NOT RUN YET |" in md


def test_structured_methods_get_their_family_learning_rate():
    """--structured_methods=sap with --methods=atmc8 needs AP's learning rate (a KeyError 'ap' before)."""
    from benchmarks import benchmark as B
    assert B.tuned_families(["atmc8"]) == ["atmc"]
    assert B.tuned_families(["atmc8"], ["sap", "satmc8"]) == ["ap", "atmc"]
    assert B.tuned_families(["da", "nap", "al0_lamp"], ["satmc"]) == ["nap", "al0", "atmc"]


def test_every_variant_is_a_mix_the_trainer_accepts():
    """A variant's overrides bypass the pipeline's flag checks (dataclasses.replace): each must still build a
    training config (the first "objectives" combined ard with class feedback and failed after its training)."""
    from atmc_tf.attacks import PGDConfig
    from atmc_tf.training import method_config
    from benchmarks import benchmark as B
    for name, v in B.VARIANTS.items():
        o = v.overrides
        kw = {k: o[k] for k in ("distill", "class_feedback") if k in o}
        if "clean_target_drop" in o:
            kw["clean_target"] = 0.15
        method_config("atmc", attack=PGDConfig(0.1, steps=2), nnz_budget=100, bits=8, **kw).components()


def test_targets_t11_t12_t13_objectives():
    """Issue 20's targets against the plain ATMC-8 cell at 0.003 (.tflite figures; the worst case once attacked)."""
    def _obj(results, tid):
        return next(t["status"] for t in R.objective_targets(results) if t["id"] == tid)

    def attacked(c, worst, per_class):
        return {**c, "attacks": {"tflite_worst_case": worst, "per_class": {"tflite_worst_case": per_class}}}
    base = attacked(_cell("atmc8", 0.003, 0.60), 0.58, [0.7, 0.3, 0.6])
    res = _results(ratios=(0.003,), methods=("da", "atmc8"), **{
        "atmc8@0.003": base,
        "atmc8@0.003~ard": {**attacked(_cell("atmc8", 0.003, 0.62), 0.605, [0.7, 0.3, 0.6]), "variant": "ard",
                            "distill": "ard"},
        "atmc8@0.003~feedback": {**attacked(_cell("atmc8", 0.003, 0.60), 0.575, [0.6, 0.36, 0.6]),
                                 "variant": "feedback", "class_feedback": "reweight"},
        "atmc8@0.003~clean_target": {**attacked(_cell("atmc8", 0.003, 0.60, t_clean=0.895), 0.58, [0.7, 0.3, 0.6]),
                                     "variant": "clean_target", "clean_target_drop": 0.02,
                                     "clean_target": {"kappa": 0.10, "form": "error"}}})
    assert _obj(res, "T11") == R.MET  # +2.5 points
    assert _obj(res, "T12") == R.MET  # worst class (1) +6, average -0.5
    assert _obj(res, "T13") == R.MET  # test error 10.5% vs 10% + 0.5, robust equal
    res["cells"]["atmc8@0.003~clean_target"]["tflite_clean_acc"] = 0.89
    res["cells"]["atmc8@0.003~feedback"]["attacks"]["tflite_worst_case"] = 0.565  # 1.5 points of average
    assert _obj(res, "T13") == R.NOT_MET and _obj(res, "T12") == R.NOT_MET
    md = "\n".join(R._objective_lines(res))
    assert "| ATMC-8 @ 0.003 | 0.5/0.5 mix | 80.0 | 58.0 | 1 (30.0) | - |" in md
    assert "| ATMC-8 @ 0.003 | clean_target | 89.0 | 58.0 | 1 (30.0) | <= 10.0%, test 11.0% |" in md
    assert "structured ATMC-8" not in md.split("\n", 1)[1]  # no row of a base without cells
    # structured ATMC-8 at 0.25: each variant against its own plain cell (satmc8@0.25), missing until it is done
    res["cells"]["satmc8@0.25~ard"] = {**attacked(_cell("satmc8", 0.25, 0.50), 0.50, [0.5, 0.5, 0.5]),
                                       "variant": "ard", "distill": "ard"}
    t11 = next(t for t in R.objective_targets(res) if t["id"] == "T11")
    assert t11["missing"] == ["satmc8@0.25"] and t11["status"] == R.NOT_RUN  # its reference is missing
    res["cells"]["satmc8@0.25"] = attacked(_cell("satmc8", 0.25, 0.50), 0.49, [0.5, 0.5, 0.5])
    assert _obj(res, "T11") == R.NOT_MET  # +1 point on the structured model
    res["cells"]["satmc8@0.25"]["attacks"]["tflite_worst_case"] = 0.47
    assert _obj(res, "T11") == R.MET
    md = "\n".join(R._objective_lines(res))
    assert "| structured ATMC-8 @ 0.25 | 0.5/0.5 mix | 80.0 | 47.0 |" in md
    assert "| structured ATMC-8 @ 0.25 | ard | 80.0 | 50.0 |" in md


def test_markdown_without_results_says_not_run_yet():
    md = R.markdown({})
    assert "NOT RUN YET" in md and "| T1 |" in md
    assert "**MET**" not in md and "**NOT MET**" not in md


def test_paper_order_table():
    cells = {}
    for r, rob in ((0.003, (0.1, 0.60, 0.62, 0.63, 0.68, 0.66)), (0.01, (0.1, 0.70, 0.69, 0.70, 0.71, 0.705))):
        for m, v in zip(R.ORDER_METHODS, rob, strict=True):
            cells[f"{m}@{r:g}"] = _cell(m, r, v)
    res = _results(**cells)
    rows = R.paper_order(res)
    assert [row["ratio"] for row in rows] == [0.003, 0.01]
    assert rows[0]["broken"] == [] and rows[1]["broken"] == ["AL0 < AP by 1.00"]
    assert abs(rows[0]["lead"]["atmc8"] - 0.06) < 1e-9 and abs(rows[1]["ap_minus_nap"] - 0.60) < 1e-9
    md = "\n".join(R._order_lines(res))  # hand-made cells lack the table's size fields: this section only
    assert "| 0.003 | 10.0 | 60.0 | 62.0 | 63.0 | 68.0 | 66.0 | holds |" in md
    assert "largest at ratio 0.003 (+6.0 pts); that is the highest compression run" in md
    del res["cells"]["atmc32@0.01"]  # a ratio without ATMC-32 is left out, not estimated
    assert [row["ratio"] for row in R.paper_order(res)] == [0.003]
    assert "NOT RUN YET: needs NAP" in R.markdown(_results())


def test_shipped_size_interpolates_ap_and_never_extrapolates():
    res = _results(**{"ap@0.003": _cell("ap", 0.003, 0.60, gz=1000), "ap@0.01": _cell("ap", 0.01, 0.70, gz=100000),
                      "atmc8@0.003": _cell("atmc8", 0.003, 0.66, gz=10000),
                      "atmc8@0.01": _cell("atmc8", 0.01, 0.72, gz=200000)})
    rows = {row["cell"]: row for row in R.shipped_size(res)}
    assert abs(rows["atmc8@0.003"]["base"] - 0.65) < 1e-9  # halfway in log(bytes)
    assert rows["atmc8@0.01"]["base"] is None
    text = "\n".join(R._shipped_lines(res))
    assert "| atmc8@0.003 | 10,000 | 66.0 | 65.0 (between ap@0.003 and ap@0.01) | +1.0 pts |" in text
    assert "| atmc8@0.01 | 200,000 | 72.0 | outside AP's finished sizes | - |" in text


# --- the methods added for issues 14 and 17, and the device bytes ---------------------------------

CELL_CFG_CHECK = """
import json
from absl import flags
from benchmarks import bench_report as R
from benchmarks.benchmark import FAMILY, METHOD_ORDER, PipelineConfig, cell_cfg
flags.FLAGS(["benchmark"])
cfg = PipelineConfig.from_flags()
out = {}
for m in R.COMPRESSED:
    c = cell_cfg(cfg, "/tmp/unused", m, 0.01, 0.003, 6)
    out[m] = {k: getattr(c, k) for k in ("method", "bits", "l0_scoring", "al0_epochs", "atmc32_epochs",
                                         "atmcb_epochs", "finetune_epochs", "lr", "size_ratio")}
out["_family"] = {m: FAMILY.get(m) for m in R.COMPRESSED}
out["_order"] = list(METHOD_ORDER)
print(json.dumps(out))
"""


def test_cell_configs_of_the_lamp_and_atmc2_methods():
    """al0_lamp / atmc8_lamp are al0 / atmc8 with l0_scoring='lamp' (the plain ones keep the default,
    magnitude); atmc2 is ATMC with 2-bit codes and ATMC-8's epoch split; every method has a config,
    a learning-rate family and a place in the run order."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", CELL_CFG_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["al0_lamp"] == {**out["al0"], "l0_scoring": "lamp"}
    assert out["atmc8_lamp"] == {**out["atmc8"], "l0_scoring": "lamp"}
    assert out["al0"]["l0_scoring"] == out["atmc8"]["l0_scoring"] == "magnitude"
    assert out["atmc2"] == {**out["atmc8"], "bits": 2}
    assert (out["atmc8"]["al0_epochs"], out["atmc8"]["atmc32_epochs"], out["atmc8"]["atmcb_epochs"]) == (2, 2, 2)
    assert out["_family"] == {"nap": "nap", "ap": "ap", "al0": "al0", "atmc32": "atmc", "atmc8": "atmc",
                              "atmc4": "atmc", "atmc2": "atmc", "al0_lamp": "al0", "atmc8_lamp": "atmc"}
    assert sorted(out["_order"]) == sorted(R.COMPRESSED)
    assert not set(R.ORDER_METHODS) & {"atmc2", "al0_lamp", "atmc8_lamp"}  # not in the paper's order check


DEVICE_BYTES_CHECK = """
import json, sys, numpy as np, keras
from benchmarks.benchmark import device_bytes
rng = np.random.default_rng(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, name="few"), keras.layers.Dense(10, name="out")])
k = rng.choice([-0.5, 0.0, 0.0, 0.25], size=(64, 256)).astype("float32")  # 3 values per channel: 2-bit LUT
model.get_layer("few").set_weights([k, np.zeros(256, "float32")])
out = device_bytes(model, rng.uniform(0, 1, (50, 64)).astype("float32"), sys.argv[1])
print(json.dumps(out))
"""


def test_device_bytes_of_a_few_valued_model_are_below_its_batch1_bytes(tmp_path):
    """device_bytes: the pipeline's batch-1 int8 export, LUT-compressed by compress_for_micro; a kernel
    with 3 values per channel takes 2-bit indices and the file shrinks below the uncompressed batch-1 one."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", DEVICE_BYTES_CHECK, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "tflm_error" not in out, out
    assert 0 < out["tflm_bytes"] < out["tflm_b1_bytes"] - 64 * 256 // 2, out  # 16 KiB kernel -> 4 KiB indices
    few = next(t for t in out["tflm_encoding"] if t["shape"] == [256, 64])
    assert few["encoding"] == "lut_per_channel" and few["index_bits"] == 2
    assert os.path.getsize(out["tflm_file"]) == out["tflm_bytes"]
    assert os.path.getsize(tmp_path / "model_int8_batch1.tflite") == out["tflm_b1_bytes"]


def _device(cell, tflm, b1, lite=1_276_112):
    return {**cell, "tflite_bytes": lite, "tflm_bytes": tflm, "tflm_b1_bytes": b1,
            "tflm_encoding": [{"op": "CONV_2D", "encoding": "lut_per_channel", "index_bits": 3},
                              {"op": "FULLY_CONNECTED", "encoding": "prune", "index_bits": None},
                              {"op": "FULLY_CONNECTED", "encoding": "dense_int8", "index_bits": None}]}


def _table_cell(method, ratio, robust, **kw):
    return {**_cell(method, ratio, robust, **kw), "paper_bits": 1000, "paper_ratio": 0.01, "nnz": 100,
            "tflite_bytes": 1_276_112, "train_seconds": 10, "lr": 0.01}


def test_lamp_comparison_block():
    res = _results(ratios=(0.01, 0.03), **{
        "al0@0.01": _table_cell("al0", 0.01, 0.60, t_robust=0.61, t_clean=0.80),
        "al0_lamp@0.01": _table_cell("al0_lamp", 0.01, 0.58, t_robust=0.57, t_clean=0.82),
        "atmc8@0.01": _table_cell("atmc8", 0.01, 0.65),
        "atmc8_lamp@0.03": _table_cell("atmc8_lamp", 0.03, 0.66)})
    rows = {(row["ratio"], row["base"]): row for row in R.lamp_comparison(res)}
    assert len(rows) == 4
    assert rows[(0.01, "al0")]["d_robust"] == pytest.approx(-0.04)  # .tflite accuracies, LAMP - magnitude
    assert rows[(0.01, "al0")]["d_clean"] == pytest.approx(0.02)
    assert rows[(0.01, "atmc8")]["d_robust"] is None and rows[(0.03, "atmc8")]["d_robust"] is None
    md = R.markdown(res)
    block = md.split("## Magnitude vs LAMP scoring")[1].split("\n## ")[0]
    assert "| 0.01 | AL0 | 61.0 | 57.0 | -4.0 pts | 80.0 | 82.0 | +2.0 pts |" in block
    assert f"| 0.01 | ATMC-8 | 65.0 | {R.NOT_RUN} | {R.NOT_RUN} |" in block
    assert f"| 0.03 | ATMC-8 | {R.NOT_RUN} | 66.0 | {R.NOT_RUN} |" in block
    assert "largest robust loss from LAMP: AL0 at ratio 0.01, -4.0 pts" in block
    # the LAMP cells are rows of the per-ratio tables too
    assert "| AL0 (LAMP) | 80.0 | 58.0 |" in md and "| ATMC-8 (LAMP) | not run yet |" in md
    assert "NOT RUN YET" in R.markdown(_results()).split("## Magnitude vs LAMP scoring")[1]


def test_device_bytes_column_and_section():
    res = _results(ratios=(0.01,), methods=("da", "ap", "atmc2"), **{
        "da": _device(_table_cell("da", None, 0.7), 1_275_224, 1_275_224),
        "ap@0.01": _table_cell("ap", 0.01, 0.5),  # recorded before device bytes existed
        "atmc2@0.01": {**_device(_table_cell("atmc2", 0.01, 0.6), 301_000, 1_275_224), "phone_bytes": 95_000,
                       "phone_file": "sparse"}})
    md = R.markdown(res)
    head, rule = R.TABLE_HEAD.split("\n")
    assert "| TFLM bytes |" in head and rule.count("|---") == head.count(" | ") + 1
    assert "| 1276112 | 1000 | 301,000 | 10 s | 0.01 |" in md  # the ATMC-2 row: raw, gzip, TFLM
    assert "| 1276112 | 1000 | n/a | 10 s | 0.01 |" in md  # AP: an old cell
    dev = md.split("## Device bytes")[1].split("\n## ")[0]
    assert ("| atmc2@0.01 | 60.0 | 1,276,112 | 95,000 (sparse) | 1,275,224 | 301,000 | 0.236 | conv lut 3b, fc prune, fc dense |"
            in dev)
    assert "| ap@0.01 | 50.0 | 1,276,112 | n/a | n/a | n/a | - | n/a |" in dev
    assert "--remeasure_device_bytes" in dev


def _plotted_grid(monkeypatch, res, tmp_path):
    """The axes grid plot_tradeoff drew for `res`."""
    seen = []
    real = R.plt.subplots

    def spy(*a, **kw):
        fig, grid = real(*a, **kw)
        seen.append(grid)
        return fig, grid
    monkeypatch.setattr(R.plt, "subplots", spy)
    R.plot_tradeoff(res, str(tmp_path / "p.png"))
    (grid,) = seen
    return grid


def lines_of(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_plot_has_a_device_bytes_panel(tmp_path, monkeypatch):
    res = _results(ratios=(0.01,), **{
        "da": _device(_table_cell("da", None, 0.7), 1_275_224, 1_275_224),
        "atmc2@0.01": _device(_table_cell("atmc2", 0.01, 0.6), 301_000, 1_275_224),
        "atmc8_lamp@0.01": _device(_table_cell("atmc8_lamp", 0.01, 0.62), 500_000, 1_275_224)})
    top = _plotted_grid(monkeypatch, res, tmp_path)[0][3]
    assert "TFLite Micro" in top.get_xlabel() and top.get_xscale() == "log"
    lines = lines_of(top)
    assert list(lines["ATMC-2"].get_xdata()) == [301_000]
    assert lines["ATMC-8 (LAMP)"].get_linestyle() == "--"


def test_plot_draws_the_structured_cells_not_the_variants(tmp_path, monkeypatch):
    sat = _device(_table_cell("satmc8", 0.25, 0.63), 320_000, 1_275_224)
    res = _results(ratios=(0.01,), **{
        "da": _device(_table_cell("da", None, 0.7), 1_275_224, 1_275_224),
        "atmc8@0.01": _device(_table_cell("atmc8", 0.01, 0.6), 230_000, 1_275_224),
        "satmc8@0.25": {**sat, "paper_ratio": 0.061},
        "satmc8@0.25~ard": {**sat, "variant": "ard", "paper_ratio": 0.061, "tflm_bytes": 999}})
    grid = _plotted_grid(monkeypatch, res, tmp_path)
    lines = lines_of(grid[0][3])
    assert list(lines["structured ATMC-8"].get_xdata()) == [320_000] and lines["structured ATMC-8"].get_marker() == "D"
    ratio_axis = grid[0][0]
    assert ratio_axis.get_xlim()[1] >= 0.061 and list(lines_of(ratio_axis)["structured ATMC-8"].get_xdata()) == [0.061]
