"""--compute_dtype=bfloat16: training stages under Keras' mixed_bfloat16 policy, the plain model handed on
(and evaluated, attacked, exported) in float32."""
import json

import keras
import numpy as np

from atmc_tf.models import build_model
from pipelines.stages import with_dtype_policy
from tests.pipeline_run import run_pipeline


def test_with_dtype_policy_keeps_the_weights_and_float32_logits():
    model = build_model("small_cnn", (8, 8, 1), 10, seed=0)
    bf = with_dtype_policy(model, "mixed_bfloat16")
    assert [l.dtype_policy.name for l in bf.layers[1:-1]] == ["mixed_bfloat16"] * (len(bf.layers) - 2)
    assert bf.layers[-1].dtype_policy.name == "float32" and bf.output.dtype == "float32"
    for a, b in zip(model.get_weights(), bf.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(bf.predict(x, verbose=0), ref, atol=0.05 * np.abs(ref).max())  # bfloat16: ~3 digits
    back = with_dtype_policy(bf, "float32")
    assert {l.dtype_policy.name for l in back.layers} == {"float32"}
    np.testing.assert_array_equal(back.predict(x, verbose=0), ref)  # the same float32 function again


def test_a_bfloat16_run_trains_in_bfloat16_and_hands_on_float32(tmp_path):
    wd = tmp_path / "wd"
    r = run_pipeline("--limit_train=200", "--limit_test=60", "--da_epochs=1", "--method=al0", "--al0_epochs=1",
                     "--size_ratio=0.3", "--pgd_steps=2", "--eval_pgd_steps=2", "--micro_samples=2", "--verbose=0",
                     "--compute_dtype=bfloat16", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert [s["compute_dtype"] for s in report["stage_results"]] == ["bfloat16", "bfloat16"]
    assert report["config"]["compute_dtype"] == "bfloat16" and report["micro"]["ok"]
    assert 0 <= report["summary"]["keras_robust"] <= 1
    assert "Training arithmetic: bfloat16" in (wd / "report.md").read_text()
    saved = keras.models.load_model(wd / "al0" / "model.keras")  # the trained (wrapped) net: bfloat16 compute
    assert "mixed_bfloat16" in {l.dtype_policy.name for l in saved.layers}


def test_bfloat16_is_refused_for_boosting_in_one_line(tmp_path):
    r = run_pipeline("--method=boost", "--compute_dtype=bfloat16", f"--workdir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--compute_dtype" in r.stderr, r.stderr
