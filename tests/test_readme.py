"""The README's library example is code that runs: extracted from README.md and run as written
(EPOCHS = 1 instead of 10), so the two cannot drift apart."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## The library in `model.fit`"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_library_example_runs_as_written(tmp_path):
    code = readme_example()
    assert "EPOCHS = 10\n" in code
    (tmp_path / "example.py").write_text(code.replace("EPOCHS = 10\n", "EPOCHS = 1\n"))
    env = {k: v for k, v in os.environ.items() if k != "ATMC_TF_LIGHT_IMPORT"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    accuracy = float(re.search(r"int8 \.tflite clean accuracy: ([0-9.]+)", r.stdout).group(1))
    assert accuracy > 0.3, r.stdout[-2000:]  # chance is 0.1: warm start, compression and export all worked
    assert (tmp_path / "atmc.keras").stat().st_size > 0 and (tmp_path / "atmc_int8.tflite").stat().st_size > 0
    # the saved wrapped model loads with plain Keras after `import atmc_tf`
    load = subprocess.run([sys.executable, "-c", "import atmc_tf, keras; keras.saving.load_model('atmc.keras')"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert load.returncode == 0, load.stderr[-2000:]


def test_the_readme_resumable_training_snippet_runs(tmp_path, monkeypatch, digits):
    """The 'Resumable training in your own script' snippet, run on a small trainer (2 epochs, not 30),
    twice: the second run finds the deleted checkpoint gone and starts afresh, as a new run would."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("Resumable training in your own script"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "epochs=30" in code
    import keras

    import atmc_tf
    from conftest import small_cnn
    x, y = digits[0][:128], digits[1][:128]
    net = atmc_tf.wrap_model(small_cnn())
    trainer = atmc_tf.ATMCTrainer(net, atmc_tf.method_config("al0", attack=atmc_tf.PGDConfig(eps=0.1, steps=1),
                                                             nnz_budget=3000))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    monkeypatch.chdir(tmp_path)
    exec(code.replace("epochs=30", "epochs=2"), {"x": x, "y": y, "trainer": trainer, "net": net})
    assert (tmp_path / "net.keras").exists() and not (tmp_path / "ckpt").exists()
