"""benchmarks.gan_benchmark: the MAC-target budget, the stated target's status, bad flags and (slow) a
--quick run on digits (both methods, one MAC target) that a rerun resumes without retraining."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "benchmarks.gan_benchmark", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_pruned_copy_lands_at_or_under_the_mac_target_and_keeps_the_longest_prefix():
    import keras

    from atmc_tf import gan
    from atmc_tf.constraints import budget_masks
    from atmc_tf.export.surgery import count_macs
    from benchmarks.gan_benchmark import pruned_copy, reachable
    teacher = gan.generator("fashion_mnist", z_dim=4, width=4, seed=0)
    full = count_macs(teacher)
    for d in (4, 8):
        copy, k = pruned_copy(teacher, d)
        macs = gan.cut_generator(copy)[1]["macs_after"]
        assert macs * d <= full
        # one more channel of the same ranking goes over: the longest prefix that fits
        more = keras.models.clone_model(teacher)
        more.set_weights(teacher.get_weights())
        pairs = gan.prunable_bns(more)
        for (_, bn), m in zip(pairs, budget_masks([bn.gamma.value for _, bn in pairs], k + 1)):
            bn.gamma.assign(bn.gamma * m)
            bn.beta.assign(bn.beta * m)
        assert gan.cut_generator(more)[1]["macs_after"] * d > full
    assert reachable(teacher, 8) and not reachable(teacher, 10_000)


def _cell(fd, ratio=0.1):
    return {"fd": fd, "macs_ratio": ratio, "at_or_under_target": ratio <= 1 / 8}


def test_goal_status():
    from benchmarks.gan_benchmark import goal_status
    teacher = {"fd": 1.0}
    assert goal_status({"teacher": teacher, "cells": {"gs@1/8": _cell(1.05)}})[0] == "not yet measured"
    assert goal_status({"teacher": teacher, "cells": {"gs@1/8": _cell(1.05), "stacked@1/8": _cell(1.2)}})[0] == "met"
    assert goal_status({"teacher": teacher, "cells": {"gs@1/8": _cell(1.15), "stacked@1/8": _cell(1.2)}})[0] == "not met"
    assert goal_status({"teacher": teacher, "cells": {"gs@1/8": _cell(1.05), "stacked@1/8": _cell(1.0)}})[0] == "not met"
    assert goal_status({"teacher": teacher, "cells": {"gs@1/8": _cell(1.05, 0.2),
                                                      "stacked@1/8": _cell(1.2)}})[0] == "not met"


@pytest.mark.parametrize("flag", ["--mac_targets=1", "--mac_targets=x", "--methods=gs,foo", "--channel_budget=0.5",
                                  "--mac_budget=0.5", "--sparsity=group_l0", "--student_epochs=3 --finetune_epochs=3"])
def test_bad_flags_one_line_exit_2(flag, tmp_path):
    r = _run(*flag.split(), f"--workdir={tmp_path}")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


@pytest.mark.slow
def test_quick_digits_run_fields_page_and_resume(tmp_path):
    r = _run("--quick", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["quick"] and res["settings"]["dataset"] == "digits" and res["fd_name"] == "FD-digits"
    assert res["settings"]["finetune_epochs"] == 0  # a third of --quick's one student epoch
    t = res["teacher"]
    assert set(res["cells"]) == {"gs@1/8", "stacked@1/8"}
    for key, c in res["cells"].items():
        for field in ("fd", "cond_acc", "macs", "tflite_bytes", "litert_latency_ms"):
            assert isinstance(c[field], (int, float)), (key, field)
        assert c["device_bytes"]["phone"]["bytes"] > 0
        assert c["at_or_under_target"] == (c["macs"] * 8 <= t["macs"])
        assert c["tflite_bytes"] < t["tflite_bytes"]
    stacked = res["cells"]["stacked@1/8"]
    assert stacked["macs"] * 8 <= t["macs"] and res["cells"]["gs@1/8"]["at_or_under_target"]  # both by construction
    # each cell's own report says how its student was made (the stacked one is not GS's recipe)
    stacked_md, gs_md = ((tmp_path / "cells" / c / "report.md").read_text() for c in ("stacked_8", "gs_8"))
    assert "stacked baseline: the teacher's channels pruned once" in stacked_md and "(STE)" not in stacked_md
    assert "(STE)" in gs_md and "stacked baseline" not in gs_md
    page = (tmp_path / "gan_benchmark.md").read_text()
    assert "digits (8x8), NOT Fashion-MNIST" in page and "Smoke test" in page
    assert "| teacher | 1 |" in page and "| gs | 1/8 |" in page and "| stacked | 1/8 |" in page
    assert "**Target**" in page and any(f"**{s}**" in page for s in ("met", "not met"))
    assert "Versions: " in page and '"tensorflow"' in page and "Command: `python -m benchmarks.gan_benchmark" in page
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.keras")}
    again = _run("--quick", f"--workdir={tmp_path}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done (resumed)") == 3, again.stdout
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.keras")} == stamps  # nothing retrained
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == res["cells"]
    other = _run("--quick", f"--workdir={tmp_path}", "--bits=4")
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        f"error: --workdir={tmp_path} holds a benchmark of other settings (bits); use another --workdir"]
