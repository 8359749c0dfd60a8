"""Bad input, as users give it: each case is one clear `error:` line on stderr, exit code 2, and
nothing in the workdir (or next to the input) written, overwritten or deleted.

Covers every invalid flag value test_pipeline.py does not, --model_file (missing, not a .keras zip,
truncated, layers ATMC cannot wrap, a Lambda layer that Keras' safe_mode refuses, shapes that do not
fit the data set), corrupt or truncated files in a finished workdir on resume, data sets with the
wrong shape or labels, and .tflite files that do not parse (pipelines.check_tflite).

Cases marked PRE_TF must fail before TensorFlow is imported: their stderr is exactly the one line
(importing TensorFlow prints C++ start-up logs, so it would show). Cases that need Keras to load a
model may also carry those start-up lines; everything else on stderr must still be the one line.
"""
import gzip
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pipeline_run import ROOT, run_pipeline, snapshot

TINY = ["--da_epochs=1", "--al0_epochs=1", "--atmc32_epochs=1", "--atmcb_epochs=1", "--limit_train=200",
        "--limit_test=60", "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2", "--size_ratio=0.1",
        "--verbose=0", "--batch_size=64"]
STAGES = ["da", "al0", "atmc32", "atmc4"]

# TensorFlow's C++ start-up logs ("I0000 00:00:... port.cc:153] oneDNN ...") and absl's preamble.
_TF_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] |WARNING: All log messages before "
                       r"absl::InitializeLog\(\) is called are written to STDERR$)")


def the_error_line(result, pre_tf=True):
    """The single `error:` line of a failed run; asserts exit code 2 and nothing else on stderr."""
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr[-3000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if not pre_tf:
        lines = [line for line in lines if not _TF_NOISE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    return lines[0]


def assert_mentions(line, *words):
    for w in words:
        assert str(w) in line, f"{w!r} not in {line!r}"


def run_check_tflite(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("ATMC_FAULT", None)
    return subprocess.run([sys.executable, "-m", "pipelines.check_tflite", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def used_workdir(tmp_path):
    """A workdir that already holds results: a bad invocation must not touch it."""
    wd = tmp_path / "wd"
    (wd / "export").mkdir(parents=True)
    (wd / "report.json").write_text('{"keep": true}')
    (wd / "export" / "model_int8.tflite").write_bytes(b"previous model")
    return wd


def refused(args, workdir, mentions, pre_tf=True, also_unchanged=()):
    """Run the pipeline with args on workdir; assert the one-line refusal and untouched files."""
    watched = [pathlib.Path(workdir), *map(pathlib.Path, also_unchanged)]
    before = [snapshot(p) for p in watched]
    r = run_pipeline(*args, f"--workdir={workdir}", timeout=300)
    line = the_error_line(r, pre_tf)
    assert_mentions(line, *mentions)
    assert [snapshot(p) for p in watched] == before, "a refused run changed files"
    return line


# --- 1. every invalid flag value test_pipeline.BAD_FLAGS does not cover ---------------------------

BAD_FLAGS = [
    ("--eval_pgd_steps=0", "--eval_pgd_steps"), ("--eval_restarts=0", "--eval_restarts"),
    ("--clean_weight=1", "--clean_weight"), ("--clean_weight=-0.5", "--clean_weight"),
    ("--da_epochs=-1", "--da_epochs"), ("--al0_epochs=-1", "--al0_epochs"),
    ("--atmc32_epochs=-1", "--atmc32_epochs"), ("--atmcb_epochs=-1", "--atmcb_epochs"),
    ("--finetune_epochs=-1", "--finetune_epochs"), ("--da_lr=-0.1", "--da_lr"), ("--lr=nan", "--lr"),
    ("--limit_train=0", "--limit_train"), ("--limit_test=0", "--limit_test"),
    ("--micro_samples=0", "--micro_samples"), ("--verbose=4", "--verbose"), ("--pgd_step_size=0", "--pgd_step_size"),
    ("--pgd_step_size=inf", "--pgd_step_size"), ("--rank=0", "--rank"), ("--eps=inf", "--eps"),
    ("--plot_eps=0.1,2", "--plot_eps"), ("--seed=1.5", "seed"), ("--batch_size=x", "batch_size"),
    ("--quant_scheme=kmeans", "quant_scheme"), ("--factorization=svd", "factorization"),
    ("--bits_enabled=maybe", "bits_enabled"), ("--optimizer=rmsprop", "optimizer"), ("--momentum=1", "--momentum"),
    ("--momentum=-0.1", "--momentum"), ("--weight_decay=-1e-4", "--weight_decay"),
    ("--threats=linf,l3", "--threats"), ("--threats=l2,l2", "--threats"), ("--eps_l2=0", "--eps_l2"),
    ("--eps_l1=nan", "--eps_l1"), ("--eps_linf=2", "--eps_linf"), ("--domain_weighting=worst", "domain_weighting"),
    ("--minmax_gamma=-1", "--minmax_gamma"), ("--minmax_step=0", "--minmax_step"),
    ("--train_attack=fgsm", "train_attack"), ("--free_replays=0", "--free_replays"),
    ("--free_replays=2", "--train_attack=free"),
    ("--rounds=0", "--rounds"), ("--boost_epochs=0", "--boost_epochs"), ("--rounds=2", "--method=boost"),
    ("--activation_sparsity=topk", "activation_sparsity"), ("--activation_density=0", "--activation_density"),
    ("--activation_density=0.3", "--activation_sparsity=wta or threshold"),
    ("--compute_dtype=float16", "compute_dtype"),
]


# Each case is a child process (~3 s). pytest runs them all; Bazel's fast pass (-m "not slow") only the
# first few, enough to exercise the target's runfiles (its test_bad_input took 244 s in CI otherwise).
BAZEL_FAST_CASES = 5


@pytest.mark.parametrize("flag,mentions", [pytest.param(f, m, marks=[pytest.mark.slow] if i >= BAZEL_FAST_CASES else [])
                                           for i, (f, m) in enumerate(BAD_FLAGS)],
                         ids=[f for f, _ in BAD_FLAGS])
def test_bad_flag(used_workdir, flag, mentions):
    refused([flag], used_workdir, [mentions])


def test_boost_refuses_what_its_learners_do_not_take(used_workdir):
    refused(["--method=boost", "--nnz_budget=100", "--train_attack=free"], used_workdir,
            ["--method=boost", "--nnz_budget", "--train_attack=free"])


# Channel budgets below one channel per layer: refused at start-up (after TensorFlow starts: the budget
# depends on the architecture), before anything is trained or written.
TOO_SMALL_CHANNEL_BUDGETS = [
    ("--mac_ratio=0.01", "--mac_ratio=0.01 with --structure=channel is below one channel per layer", "MACs"),
    ("--method=ap --size_ratio=0.01", "--size_ratio=0.01 with --structure=channel is below one", "parameters"),
]


@pytest.mark.parametrize("flags,says,unit", TOO_SMALL_CHANNEL_BUDGETS, ids=[f for f, _, _ in TOO_SMALL_CHANNEL_BUDGETS])
def test_channel_budget_too_small(used_workdir, flags, says, unit):
    refused(["--structure=channel", *flags.split(), "--verbose=0"], used_workdir, [says, unit], pre_tf=False)


# --- 2. --model_file ---------------------------------------------------------------------------

def _model(kind):
    import keras
    from conftest import small_cnn
    if kind == "good":
        return small_cnn(seed=0)
    i = keras.Input((16, 16, 1) if kind == "input16" else (8, 8, 1))
    h = i
    if kind == "separable":
        h = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep_conv")(h)
    if kind == "rescaling":  # a second division by 255 of images the pipeline feeds in [0, 1]
        h = keras.layers.Rescaling(1 / 255, name="scale")(h)
    h = keras.layers.Flatten()(h)
    if kind == "flatten_custom":
        h = keras.layers.Dense(16, name="hidden")(h)
    if kind == "registered_custom":  # a user's registered layer: the pipeline never imports the user's code
        @keras.saving.register_keras_serializable(package="my_package")
        class Halve(keras.layers.Layer):
            def call(self, x):
                return x * 0.5

        h = Halve(name="halve")(h)
    units = 5 if kind == "units5" else 10
    activation = {"softmax": "softmax", "softmax_dropout": "softmax", "sigmoid": "sigmoid"}.get(kind)
    o = keras.layers.Dense(units, activation=activation, name="logits")(h)
    if kind == "softmax_dropout":
        o = keras.layers.Dropout(0.2, name="drop")(o)
    return keras.Model(i, o)


def _lambda_model(marker):
    """Its Lambda creates `marker` whenever it runs: loading with safe_mode off would run it."""
    import keras
    fn = eval(f"lambda z: (open({str(marker)!r}, 'a').close(), z)[1]")  # noqa: S307 -- a test fixture
    i = keras.Input((8, 8, 1))
    h = keras.layers.Lambda(fn, name="code_in_file")(i)
    o = keras.layers.Dense(10)(keras.layers.Flatten()(h))
    return keras.Model(i, o)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model files made by Keras (in this process), plus broken variants made without it."""
    d = tmp_path_factory.mktemp("models")
    paths = {}
    for kind in ("good", "separable", "input16", "units5", "softmax", "flatten_custom", "softmax_dropout", "sigmoid",
                 "rescaling", "registered_custom"):
        paths[kind] = d / f"{kind}.keras"
        _model(kind).save(paths[kind])
    marker = d / "lambda_ran"
    _lambda_model(marker).save(d / "lambda.keras")
    marker.unlink()  # building the model ran the lambda once; loading it must not
    paths["lambda"], paths["lambda_marker"] = d / "lambda.keras", marker
    good = paths["good"].read_bytes()
    # A layer class Keras does not know (what a custom layer in a user's code looks like).
    with zipfile.ZipFile(paths["flatten_custom"]) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["config.json"] = members["config.json"].replace(b'"Flatten"', b'"MyFlatten"')
    paths["custom_class"] = d / "custom_class.keras"
    with zipfile.ZipFile(paths["custom_class"], "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    broken = {"truncated": good[: len(good) // 2], "random": np.random.default_rng(0).bytes(4096), "empty": b""}
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # inside model.weights.h5: only the zip CRC can tell
    broken["bitflip"] = bytes(flipped)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("weights.bin", b"not a keras model")
    broken["no_config"] = buf.getvalue()
    for name, data in broken.items():
        paths[name] = d / f"{name}.keras"
        paths[name].write_bytes(data)
    paths["h5_suffix"] = d / "model.h5"
    paths["h5_suffix"].write_bytes(good)
    paths["dir"] = d / "folder.keras"
    paths["dir"].mkdir()
    paths["missing"] = d / "missing.keras"
    return paths


MODEL_FILE_CASES = [  # (model, extra flags, needs Keras to find the problem, what the line names)
    ("missing", [], False, ["missing.keras", "no such file"]),
    ("dir", [], False, ["folder.keras", "directory"]),
    ("h5_suffix", [], False, ["model.h5", "not a .keras file"]),
    ("empty", [], False, ["empty.keras", "empty file"]),
    ("random", [], False, ["random.keras", "not a zip archive"]),
    ("truncated", [], False, ["truncated.keras", "truncated or corrupt"]),
    ("bitflip", [], False, ["bitflip.keras", "model.weights.h5 fails its CRC check"]),
    ("no_config", [], False, ["no_config.keras", "no config.json"]),
    ("good", ["--model=lenet"], False, ["--model_file", "--model=lenet", "only one"]),
    ("separable", [], True, ["separable.keras", "'sep_conv'", "SeparableConv2D", "Dense, Conv2D, DepthwiseConv2D"]),
    ("custom_class", [], True, ["custom_class.keras", "MyFlatten", "cannot be loaded"]),
    ("input16", [], True, ["input16.keras", "(16, 16, 1)", "(8, 8, 1)"]),
    ("units5", [], True, ["units5.keras", "(5,)", "10 classes"]),
    ("softmax", [], True, ["softmax.keras", "'logits'", "softmax", "logits"]),
    ("softmax_dropout", [], True, ["softmax_dropout.keras", "'logits' (Dense)", "'drop' (Dropout)", "softmax",
                                   "outputs logits"]),
    ("sigmoid", [], True, ["sigmoid.keras", "'logits' (Dense)", "sigmoid", "outputs logits"]),
    ("rescaling", [], True, ["rescaling.keras", "'scale' (Rescaling)", "[0, 1]", "remove the Rescaling layer"]),
    ("registered_custom", [], False, ["registered_custom.keras", "'halve'", "Halve", "'my_package>Halve'",
                                      "built-in layers"]),
]


@pytest.mark.parametrize("case", MODEL_FILE_CASES, ids=[c[0] + ("+" + c[1][0] if c[1] else "")
                                                       for c in MODEL_FILE_CASES])
def test_bad_model_file(models, used_workdir, case):
    kind, extra, needs_keras, mentions = case
    refused([f"--model_file={models[kind]}", *extra], used_workdir, mentions, pre_tf=not needs_keras,
            also_unchanged=[models["good"].parent])


def test_lambda_layer_refused_by_safe_mode(models, used_workdir):
    line = refused([f"--model_file={models['lambda']}"], used_workdir, ["lambda.keras", "Lambda", "safe_mode"],
                   pre_tf=False, also_unchanged=[models["good"].parent])
    assert "safe_mode=False" not in line  # the advice is to rebuild the model, never to switch it off
    assert not models["lambda_marker"].exists(), "code from the model file ran"


def test_safe_mode_is_never_disabled_in_the_source():
    unsafe = re.compile(r"safe_mode\s*=\s*(False|0)\b|enable_unsafe_deserialization")
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for top in ("atmc_tf", "pipelines") for p in sorted(pathlib.Path(ROOT, top).rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not hits, hits
    stages = pathlib.Path(ROOT, "pipelines", "stages.py").read_text()
    calls = re.findall(r"load_model\(([^)]*)\)", stages)
    assert calls and all("safe_mode=True" in c for c in calls), calls


# --- 3. corrupt or truncated files in a finished workdir, on resume --------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, models):
    """A finished tiny run of a user's model (--model_file): the resume cases corrupt copies of it."""
    wd = tmp_path_factory.mktemp("bad_input_run") / "run"
    args = [*TINY, f"--model_file={models['good']}"]
    r = run_pipeline(*args, f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-4000:]
    for stage in STAGES:
        assert (wd / stage / "model.keras").is_file() and (wd / stage / "result.json").is_file()
    return wd, args


@pytest.mark.slow
def test_stage_names_match_the_run(tiny_run):
    import dataclasses
    from pipelines.flags_def import PipelineConfig
    cfg = PipelineConfig(**{f.name: None for f in dataclasses.fields(PipelineConfig)} | {"method": "atmc", "bits": 4})
    wd, _ = tiny_run
    assert cfg.stage_names() == STAGES == sorted((p.parent.name for p in wd.glob("*/model.keras")), key=STAGES.index)
    config = json.loads((wd / "config.json").read_text())
    assert config["model_file_sha256"] and config["model_file"].endswith("good.keras")


def _weights_h5(wd):
    with zipfile.ZipFile(wd / "da" / "model.keras") as zf:
        return zf.read("model.weights.h5")


def _unfinished_atmc4(wd, weights=None, metadata=None):
    """atmc4 as a killed run leaves it (no result.json, an epoch checkpoint whose metadata names the
    SHA-256 of the intact weights), then damaged: `weights` / `metadata` replace the files' bytes."""
    import hashlib
    (wd / "atmc4" / "result.json").unlink()
    backup = wd / "atmc4" / "backup"
    backup.mkdir()
    intact = _weights_h5(wd)
    good_meta = json.dumps({"epoch": 1, "batch": 0, "weights_sha256": hashlib.sha256(intact).hexdigest()})
    (backup / "latest.weights.h5").write_bytes(intact if weights is None else weights)
    (backup / "training_metadata.json").write_text(good_meta if metadata is None else metadata)


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


RESUME_CASES = {
    "da_model_truncated": (lambda wd: (wd / "da/model.keras").write_bytes((wd / "da/model.keras").read_bytes()[:5000]),
                           ["da/model.keras", "truncated or corrupt", "delete", "retrain stage da"]),
    "al0_model_garbage": (lambda wd: (wd / "al0/model.keras").write_bytes(b"\x00garbage" * 100),
                          ["al0/model.keras", "not a zip archive", "retrain stage al0"]),
    "atmc32_model_empty": (lambda wd: (wd / "atmc32/model.keras").write_bytes(b""),
                           ["atmc32/model.keras", "empty file", "retrain stage atmc32"]),
    "atmc4_model_bitflip": (lambda wd: _flip_middle(wd / "atmc4/model.keras"),
                            ["atmc4/model.keras", "CRC", "retrain stage atmc4"]),
    "atmc32_result_invalid_json": (lambda wd: (wd / "atmc32/result.json").write_text('{"stage": "atmc32", '),
                                   ["atmc32/result.json", "corrupt", "retrain stage atmc32"]),
    "da_result_not_an_object": (lambda wd: (wd / "da/result.json").write_text("[]\n"),
                                ["da/result.json", "JSON list", "retrain stage da"]),
    "al0_result_missing_keys": (lambda wd: (wd / "al0/result.json").write_text('{"stage": "al0"}'),
                                ["al0/result.json", "missing keys", "epochs"]),
    "config_json_corrupt": (lambda wd: (wd / "config.json").write_text("{not json"),
                            ["config.json", "unreadable or corrupt", "delete it"]),
    "backup_weights_truncated": (lambda wd: _unfinished_atmc4(wd, weights=_weights_h5(wd)[:3000]),
                                 ["atmc4/backup/latest.weights.h5", "3000 bytes", "truncated or damaged",
                                  "no intact epoch checkpoint", "restart stage atmc4"]),
    "backup_weights_empty": (lambda wd: _unfinished_atmc4(wd, weights=b""),
                             ["atmc4/backup/latest.weights.h5", "an empty file"]),
    "backup_metadata_garbage": (lambda wd: _unfinished_atmc4(wd, metadata='{"epoch": 1, "ba'),
                                ["atmc4/backup/training_metadata.json", "corrupt", "restart stage atmc4"]),
    "backup_metadata_bad_epoch": (lambda wd: _unfinished_atmc4(wd, metadata='{"epoch": -3}'),
                                  ["atmc4/backup/training_metadata.json", "epoch is -3"]),
}


@pytest.mark.slow  # needs the tiny run (about 45 s): run once by pytest, not again by Bazel
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_corrupt_workdir_file_on_resume(tiny_run, tmp_path, case):
    src, args = tiny_run
    wd = tmp_path / "run"
    shutil.copytree(src, wd)
    corrupt, mentions = RESUME_CASES[case]
    corrupt(wd)
    refused(args, wd, mentions)


@pytest.mark.slow  # needs the tiny run (about 45 s): run once by pytest, not again by Bazel
def test_resume_with_another_model_file(tiny_run, models, tmp_path):
    """The workdir records the model file's hash: another model (same flags otherwise) is refused."""
    src, args = tiny_run
    wd = tmp_path / "run"
    shutil.copytree(src, wd)
    other = [a if not a.startswith("--model_file=") else f"--model_file={models['units5']}" for a in args]
    refused(other, wd, ["--workdir", "other flags", "model_file (another model)"])


# --- 4. data sets with the wrong shape or labels ---------------------------------------------------

def _idx(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.tobytes()


def _fashion_arrays():
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (40, 28, 28)),
            "train-labels-idx1-ubyte.gz": np.arange(40) % 10,
            "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
            "t10k-labels-idx1-ubyte.gz": np.arange(20) % 10}


def write_fashion(d, **replace):
    """The four Fashion-MNIST IDX files (tiny, valid) in d; replace={file stem: array or raw gz bytes}."""
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in _fashion_arrays().items():
        stem = name.split("-idx")[0].replace("-", "_")
        value = replace.get(stem, arr)
        data = value if isinstance(value, bytes) else gzip.compress(_idx(value), mtime=0)
        (d / name).write_bytes(data)
    return d


def write_npz(d, drop=(), **replace):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 28, 28)).astype(np.uint8), "y_train": np.arange(40) % 10,
              "x_test": rng.integers(0, 256, (20, 28, 28)).astype(np.uint8), "y_test": np.arange(20) % 10}
    arrays.update(replace)
    np.savez(d / "mnist.npz", **{k: v for k, v in arrays.items() if k not in drop})
    return d


def test_tiny_data_sets_are_valid(tmp_path):
    """The bad cases below differ from these by one defect each."""
    from atmc_tf.data import load_dataset
    assert load_dataset("fashion_mnist", data_dir=str(write_fashion(tmp_path / "fm"))).input_shape == (28, 28, 1)
    assert load_dataset("mnist_npz", data_dir=str(write_npz(tmp_path / "npz"))).num_classes == 10


_GOOD_GZ = gzip.compress(_idx(np.zeros((40, 28, 28))), mtime=0)
DATA_CASES = {  # name: (dataset, writer, what the line names)
    "fm_images_2d": ("fashion_mnist", lambda d: write_fashion(d, train_images=np.zeros((40, 784))),
                     ["train-images-idx3-ubyte.gz", "3-D"]),
    "fm_test_images_other_size": ("fashion_mnist", lambda d: write_fashion(d, t10k_images=np.zeros((20, 20, 20))),
                                  ["differ in shape", "(20, 20, 1)", "(28, 28, 1)"]),
    "fm_label_out_of_range": ("fashion_mnist", lambda d: write_fashion(d, train_labels=np.arange(40) % 12),
                              ["labels must lie in [0, 10)", "11"]),
    "fm_label_count": ("fashion_mnist", lambda d: write_fashion(d, t10k_labels=np.arange(19) % 10),
                       ["20 images but 19 labels"]),
    "fm_labels_swapped_with_images": ("fashion_mnist", lambda d: write_fashion(d, train_labels=np.zeros((40, 28, 28))),
                                      ["train-labels-idx1-ubyte.gz", "1-D"]),
    "fm_truncated_gz": ("fashion_mnist", lambda d: write_fashion(d, train_images=_GOOD_GZ[: len(_GOOD_GZ) // 2]),
                        ["train-images-idx3-ubyte.gz", "truncated or corrupt"]),
    "fm_idx_short": ("fashion_mnist",
                     lambda d: write_fashion(d, t10k_images=gzip.compress(_idx(np.zeros((20, 28, 28)))[:-100])),
                     ["t10k-images-idx3-ubyte.gz", "IDX dims (20, 28, 28)"]),
    "fm_not_idx": ("fashion_mnist", lambda d: write_fashion(d, t10k_labels=gzip.compress(b"<html>not found</html>")),
                   ["t10k-labels-idx1-ubyte.gz", "not an IDX file"]),
    "npz_missing_key": ("mnist_npz", lambda d: write_npz(d, drop=("y_test",)), ["mnist.npz", "y_test"]),
    "npz_float_labels": ("mnist_npz", lambda d: write_npz(d, y_train=np.arange(40, dtype=np.float32) % 10),
                         ["labels must have an integer dtype", "float32"]),
    "npz_rgb_images": ("mnist_npz", lambda d: write_npz(d, x_train=np.zeros((40, 28, 28, 3), np.uint8)),
                       ["x_train must be uint8 pixels shaped (N, H, W)", "(40, 28, 28, 3)"]),
    "npz_not_a_zip": ("mnist_npz", lambda d: (d.mkdir(), (d / "mnist.npz").write_bytes(b"\x93NUMPY garbage")),
                      ["mnist.npz", "replace it with a fresh copy"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_set(used_workdir, tmp_path, case):
    dataset, write, mentions = DATA_CASES[case]
    data_dir = tmp_path / "data"
    write(data_dir)
    refused([f"--dataset={dataset}", f"--data_dir={data_dir}", "--verbose=0"], used_workdir,
            [*mentions, data_dir], also_unchanged=[data_dir])


# --- 5. pipelines.check_tflite on a .tflite that does not parse or fit ------------------------------

@pytest.mark.slow  # needs the tiny run (about 45 s): run once by pytest, not again by Bazel
def test_check_tflite_on_the_exported_model(tiny_run, tmp_path):
    wd, _ = tiny_run
    out = tmp_path / "check.json"
    r = run_check_tflite(f"--tflite={wd / 'export' / 'model_int8_batch1.tflite'}", "--limit_test=50",
                         "--micro_samples=3", f"--json_out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary == json.loads(out.read_text())
    assert summary["ok"] and summary["micro"]["ok"] and summary["micro"]["samples_checked"] == 3
    assert summary["micro"]["arena_bytes"] > 0 and summary["micro"]["max_abs_diff_vs_litert"] <= 1
    assert summary["phone"]["samples"] == 50 and 0 <= summary["phone"]["clean_acc"] <= 1
    assert "FULLY_CONNECTED" in summary["phone"]["ops"] and summary["input"]["dtype"] == "int8"


TFLITE_CASES = {  # name: (write the file or None, extra flags, what the line names)
    "missing": (None, [], ["missing.tflite", "no such file"]),
    "empty": (lambda real: b"", [], ["bad.tflite", "empty"]),
    "truncated": (lambda real: real[: len(real) // 2], [], ["bad.tflite", "not a valid .tflite", "truncated"]),
    "random_bytes": (lambda real: np.random.default_rng(1).bytes(2048), [], ["bad.tflite", "file identifier"]),
    "keras_file_renamed": (lambda real: b"PK\x03\x04" + b"\x00" * 200, [], ["bad.tflite", "not a valid .tflite"]),
    "wrong_input_shape": (lambda real: real, ["--dataset=fashion_mnist", "DATA_DIR"],
                          ["bad.tflite", "(8, 8, 1)", "(28, 28, 1)", "fashion_mnist"]),
    "directory": ("dir", [], ["bad.tflite", "directory"]),
    "no_tflite_flag": (lambda real: real, ["NO_TFLITE"], ["--tflite=PATH is required"]),
    "micro_samples_0": (lambda real: real, ["--micro_samples=0"], ["--micro_samples"]),
    "limit_test_0": (lambda real: real, ["--limit_test=0"], ["--limit_test"]),
    "json_out_in_missing_dir": (lambda real: real, ["--json_out=MISSING/summary.json"], ["--json_out", "cannot write"]),
}


@pytest.mark.slow  # needs the tiny run (about 45 s): run once by pytest, not again by Bazel
@pytest.mark.parametrize("case", list(TFLITE_CASES))
def test_bad_tflite(tiny_run, tmp_path, case):
    wd, _ = tiny_run
    write, extra, mentions = TFLITE_CASES[case]
    real = (wd / "export" / "model_int8_batch1.tflite").read_bytes()
    d = tmp_path / "ship"
    d.mkdir()
    path = d / ("missing.tflite" if write is None else "bad.tflite")
    if write == "dir":
        path.mkdir()
    elif write is not None:
        path.write_bytes(write(real))
    args = [f"--tflite={path}", f"--json_out={d / 'summary.json'}"]
    for flag in extra:
        if flag == "DATA_DIR":
            flag = f"--data_dir={write_fashion(tmp_path / 'fm')}"
        elif flag == "NO_TFLITE":
            args.pop(0)
            continue
        elif flag.startswith("--json_out="):
            args.pop()
            flag = flag.replace("MISSING", str(tmp_path / "missing"))
        args.append(flag)
    before = snapshot(d)
    r = run_check_tflite(*args)
    assert_mentions(the_error_line(r), *mentions)
    assert snapshot(d) == before, "a refused check wrote files"
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("flags_,words", [
    (["--norm=1"], ["--norm", "inf|2"]), (["--norm=linf"], ["--norm"]),
    (["--eps=1.5"], ["--eps=1.5", "--norm=inf", "<= 1"]), (["--norm=2", "--eps=nan"], ["--eps=nan", "finite"]),
    (["--norm=2", "--eps=-1"], ["--eps"])])
def test_check_tflite_bad_attack_flags(tmp_path, flags_, words):
    """--attack=square's --norm and --eps are refused in one line before the file is read (none exists here);
    an L2 radius above 1 is fine (it gets as far as the missing file)."""
    r = run_check_tflite(f"--tflite={tmp_path / 'none.tflite'}", "--attack=square", *flags_)
    assert_mentions(the_error_line(r), *words)
    r = run_check_tflite(f"--tflite={tmp_path / 'none.tflite'}", "--attack=square", "--norm=2", "--eps=1.5")
    assert_mentions(the_error_line(r), "none.tflite", "no such file")


def _not_full_int8_tflite(kind):
    """A tiny .tflite that TFLite Micro's int8 check does not apply to: float, or dynamic range."""
    import keras
    import tensorflow as tf
    i = keras.Input((8, 8, 1))
    o = keras.layers.Dense(10)(keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(i)))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(i, o))
    if kind == "dynamic_range":  # int8 weights, float activations: no representative data set
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


@pytest.mark.parametrize("kind,words", [("float", ["a float model", "float32 activations"]),
                                        ("dynamic_range", ["a dynamic-range quantized model", "int8 weights"])])
def test_check_tflite_refuses_a_model_that_is_not_full_int8(tmp_path, kind, words):
    """Not a TFLite Micro failure (exit 1) but bad input (exit 2): the line says what the file is and how to
    convert it."""
    d = tmp_path / "ship"
    d.mkdir()
    path = d / f"{kind}.tflite"
    path.write_bytes(_not_full_int8_tflite(kind))
    before = snapshot(d)
    r = run_check_tflite(f"--tflite={path}", f"--json_out={d / 'summary.json'}")
    assert_mentions(the_error_line(r), str(path), *words, "full-integer int8", "representative_dataset",
                    "TFLITE_BUILTINS_INT8")
    assert snapshot(d) == before, "a refused check wrote files"
