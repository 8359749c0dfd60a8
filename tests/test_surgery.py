"""Channel surgery (atmc_tf.export.surgery): smaller models with the same outputs.

No training: channels are zeroed directly in randomly initialised models whose BatchNorm
layers get random, non-trivial statistics; the smaller model must give the same outputs
(max |diff| <= 1e-5) with strictly fewer parameters, and unsafe graphs are refused in one line.
"""
import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from atmc_tf.export import surgery, to_int8_tflite
from atmc_tf.export.surgery import SurgeryError, count_macs, shrink_model
from atmc_tf.models import build_model
from conftest import mobilenet_v2_style, small_cnn

L = keras.layers
TOL = 1e-5


def _randomize_bn(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c), rng.normal(0, 1, c),
                               rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)])


def _zero_outputs(layer, channels):
    """Zero output channels of a Conv2D / Dense (kernel slice and bias)."""
    weights = layer.get_weights()
    weights[0][..., list(channels)] = 0.0
    if layer.use_bias:
        weights[1][list(channels)] = 0.0
    layer.set_weights(weights)


def _zero_depthwise(layer, in_channels):
    weights = layer.get_weights()
    weights[0][:, :, list(in_channels), :] = 0.0
    if layer.use_bias:
        mult = weights[0].shape[3]
        for i in in_channels:
            weights[1][i * mult:(i + 1) * mult] = 0.0
    layer.set_weights(weights)


def _nth(model, cls, n=0):
    """The n-th layer of exactly this class (small_cnn's layers have Keras' auto names)."""
    return [layer for layer in model.layers if type(layer) is cls][n]


def _small_cnn_layers(model):
    return _nth(model, L.Conv2D), _nth(model, L.DepthwiseConv2D), _nth(model, L.Dense), _nth(model, L.Dense, 1)


def _max_diff(a, b, x):
    return float(np.max(np.abs(np.asarray(a(x, training=False)) - np.asarray(b(x, training=False)))))


def _inputs(model, n=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n,) + tuple(model.inputs[0].shape[1:])).astype(np.float32)


def _check(model, small, report, x=None):
    x = _inputs(model) if x is None else x
    assert _max_diff(model, small, x) <= TOL
    assert report["params_after"] == small.count_params() < report["params_before"] == model.count_params()
    assert report["macs_after"] < report["macs_before"]


def test_small_cnn_shrinks_with_equal_outputs(digits):
    model = small_cnn()
    _randomize_bn(model)
    conv, dw, fc, logits = _small_cnn_layers(model)
    # dw slices of input channels 1 and 4 are zero: those conv channels feed nothing, so they go
    # too although the conv itself is intact; Dense neurons 3, 7, 8 are zero, and ReLU keeps them zero.
    _zero_depthwise(dw, [1, 4])
    _zero_outputs(fc, [3, 7, 8])
    small, report = shrink_model(model)
    _check(model, small, report, digits[2])
    _check(model, small, report)
    assert report["layers"][conv.name] == {"class": "Conv2D", "kept": 14, "total": 16}
    assert report["layers"][dw.name]["kept"] == 28
    assert report["layers"][fc.name]["kept"] == 29
    assert report["layers"][logits.name]["kept"] == 10  # logits: a model output, always kept
    assert small.get_layer(fc.name).kernel.shape == (4 * 4 * 28, 29)
    assert conv.kernel.shape[-1] == 16  # the original is untouched


_SMALL_CNN = {}


def _small_cnn_weights():
    if not _SMALL_CNN:
        model = small_cnn()
        _SMALL_CNN["model"], _SMALL_CNN["weights"] = model, model.get_weights()
    model = _SMALL_CNN["model"]
    model.set_weights(_SMALL_CNN["weights"])
    return model


@settings(max_examples=12, deadline=None)
@given(conv_zero=st.sets(st.integers(0, 15), max_size=8), dw_zero=st.sets(st.integers(0, 15), max_size=8),
       fc_zero=st.sets(st.integers(0, 31), max_size=16), bn_seed=st.integers(0, 1000))
def test_small_cnn_any_zeroed_channels(conv_zero, dw_zero, fc_zero, bn_seed):
    model = _small_cnn_weights()
    _randomize_bn(model, bn_seed)
    conv, dw, fc, _ = _small_cnn_layers(model)
    _zero_outputs(conv, sorted(conv_zero))
    _zero_depthwise(dw, sorted(dw_zero))
    _zero_outputs(fc, sorted(fc_zero))
    small, report = shrink_model(model, verify=False)
    assert _max_diff(model, small, _inputs(model, seed=bn_seed)) <= TOL
    assert report["params_after"] <= report["params_before"]
    assert report["layers"][fc.name]["kept"] == 32 - len(fc_zero)
    # Exactly the conv channels whose constant reaches the dense layer as zero, or that feed only zero
    # depthwise slices, go: recompute which from BN by hand.
    bn = _nth(model, L.BatchNormalization)
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    const = np.maximum(beta - gamma * mean / np.sqrt(var + bn.epsilon), 0.0)
    gone = {c for c in range(16) if c in dw_zero or (c in conv_zero and const[c] == 0.0)}
    assert report["layers"][conv.name]["kept"] == 16 - len(gone)
    if dw_zero or fc_zero:
        assert report["params_after"] < report["params_before"]


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (8, 8, 1)])
def test_lenet(input_shape, digits):
    model = build_model("lenet", input_shape, 10, seed=0)
    _zero_outputs(model.get_layer("conv1"), [0, 7, 19])     # ReLU(0) = 0 reaches conv2 ('same'): folds
    _zero_outputs(model.get_layer("conv2"), [3, 4, 49])     # Flatten: every position's fc1 rows go
    _zero_outputs(model.get_layer("fc1"), range(0, 500, 5))
    small, report = shrink_model(model)
    _check(model, small, report, digits[2] if input_shape == (8, 8, 1) else None)
    assert [report["layers"][n]["kept"] for n in ("conv1", "conv2", "fc1", "logits")] == [17, 47, 400, 10]
    h, w = _pooled(input_shape)
    assert small.get_layer("fc1").kernel.shape == (h * w * 47, 400)
    assert report["folded"] == []


def _pooled(input_shape):
    h, w = input_shape[:2]
    for _ in range(2):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def test_count_macs_lenet():
    model = build_model("lenet", (28, 28, 1), 10, seed=0)
    expected = 28 * 28 * 20 * 25 + 14 * 14 * 50 * 25 * 20 + 7 * 7 * 50 * 500 + 500 * 10
    assert count_macs(model) == expected


def test_mobilenet_v2_style_residual_and_depthwise(digits):
    model = mobilenet_v2_style()
    _randomize_bn(model)
    # Channel 5 of the residual stream is zero in the stem and both projections: after BN it is a
    # nonzero constant in every branch of the Adds, which the 1x1 expands and the logits fold.
    for name in ("stem", "b1_project", "b2_project"):
        _zero_outputs(model.get_layer(name), [5])
    # Channel 9 is zero in the stem only: the projections still write it, so the Adds keep it.
    _zero_outputs(model.get_layer("stem"), [9])
    # Expand channels 2, 3 with zero depthwise slices: their constant BN/ReLU6 output folds into
    # the 1x1 projection.
    for block in ("b1", "b2"):
        _zero_outputs(model.get_layer(f"{block}_expand"), [2, 3])
        _zero_depthwise(model.get_layer(f"{block}_dw"), [2, 3])
    small, report = shrink_model(model)
    _check(model, small, report, digits[2])
    _check(model, small, report)
    kept = {n: v["kept"] for n, v in report["layers"].items()}
    assert kept == {"stem": 15, "b1_expand": 62, "b1_dw": 62, "b1_project": 15, "b2_expand": 62, "b2_dw": 62,
                    "b2_project": 15, "logits": 10}
    assert {"b1_expand", "b2_expand", "logits", "b1_project", "b2_project"} <= set(report["folded"])
    assert small.get_layer("b1_bn1").gamma.shape == (62,)
    assert small.get_layer("b1_dw").kernel.shape == (3, 3, 62, 1)


def _concat_model():
    keras.utils.set_random_seed(3)
    i = keras.Input((8, 8, 1))
    a = L.ReLU()(L.Conv2D(6, 3, padding="same", name="a")(i))
    b = L.ReLU()(L.Conv2D(5, 3, padding="same", name="b")(i))
    h = L.Concatenate(name="cat")([a, b])
    h = L.Conv2D(8, 3, padding="same", name="c")(h)
    h = L.GlobalMaxPooling2D()(L.ReLU()(h))
    return keras.Model(i, L.Dense(4, name="out")(h))


def test_concatenate_maps_channel_offsets(digits):
    model = _concat_model()
    _zero_outputs(model.get_layer("a"), [1])
    _zero_outputs(model.get_layer("b"), [0, 3])
    small, report = shrink_model(model)
    _check(model, small, report, digits[2])
    assert report["layers"]["a"]["kept"] == 5 and report["layers"]["b"]["kept"] == 3
    w = model.get_layer("c").kernel.numpy()
    keep = [0, 2, 3, 4, 5, 7, 8, 10]  # concatenated indices 1 (a's 1), 6 and 9 (b's 0 and 3) go
    np.testing.assert_array_equal(small.get_layer("c").kernel.numpy(), w[:, :, keep, :])


def _bn_model(padding, relu):
    keras.utils.set_random_seed(4)
    i = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(i)
    h = L.BatchNormalization(name="bn")(h)
    if relu:
        h = L.ReLU()(h)
    h = L.Conv2D(3, 3, padding=padding, name="conv2")(h)
    return keras.Model(i, L.Dense(2, name="out")(L.Flatten()(h)))


@pytest.mark.parametrize("padding,relu,beta,kept,folded", [
    ("valid", False, 0.7, 3, ["conv2"]),  # zero conv + BN = constant beta: folds into a 'valid' conv's bias
    ("same", False, 0.7, 4, []),          # ... but not into a 'same' conv (its borders see padding): kept
    ("same", True, -0.7, 3, []),          # ReLU makes the negative constant zero: nothing to fold
    ("same", True, 0.7, 4, []),
])
def test_zero_channel_then_batchnorm(padding, relu, beta, kept, folded):
    model = _bn_model(padding, relu)
    _zero_outputs(model.get_layer("conv1"), [2])
    bn = model.get_layer("bn")
    bn.set_weights([np.array([1.0, 1.5, 2.0, 0.5]), np.array([0.1, -0.2, beta, 0.3]), np.zeros(4), np.ones(4)])
    small, report = shrink_model(model)
    assert _max_diff(model, small, _inputs(model)) <= TOL
    assert report["layers"]["conv1"]["kept"] == kept
    assert report["folded"] == folded
    if kept == 3:
        assert report["params_after"] < report["params_before"]
    else:
        assert report["params_after"] == report["params_before"]


@pytest.mark.parametrize("between,kept", [
    (lambda h: L.AveragePooling2D(3, strides=1, padding="same")(h), 3),  # 'same' pooling ignores its padding
    (lambda h: L.MaxPooling2D(3, strides=1, padding="same")(h), 3),
    (lambda h: L.Dropout(0.5)(L.Activation("tanh")(h)), 3),
    (lambda h: L.ZeroPadding2D(1)(h), 4),  # the constant meets zero borders: no longer constant, kept
])
def test_constant_through_per_channel_layers(between, kept):
    keras.utils.set_random_seed(7)
    i = keras.Input((6, 6, 1))
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="conv1")(i))
    h = L.Conv2D(3, 1, padding="same", name="conv2")(between(h))  # 1x1: no padding read, constants fold
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    _zero_outputs(model.get_layer("conv1"), [1])
    model.get_layer("bn").set_weights([np.ones(4), np.full(4, 0.8), np.zeros(4), np.ones(4)])
    small, report = shrink_model(model)
    assert _max_diff(model, small, _inputs(model)) <= TOL
    assert report["layers"]["conv1"]["kept"] == kept
    assert report["folded"] == (["conv2"] if kept == 3 else [])


def test_dense_constant_neuron_folds_into_the_next_dense():
    model = build_model("mlp", (8, 8, 1), 10, seed=0)
    fc1 = model.get_layer("fc1")
    w, b = fc1.get_weights()
    w[:, [4, 9]] = 0.0
    b[[4, 9]] = [0.5, -0.5]  # ReLU: 0.5 folds into the logits' bias, -0.5 becomes 0
    fc1.set_weights([w, b])
    small, report = shrink_model(model)
    _check(model, small, report)
    assert report["layers"]["fc1"]["kept"] == 254 and report["folded"] == ["logits"]


def test_reshape_of_a_flat_vector_into_channels_and_back():
    """A generator's head (Dense -> Reshape into a feature map -> BN -> ReLU -> Conv2D) loses channel c with the
    Dense units j = p*C + c at every position p; a Reshape to a flat vector cuts like a Flatten. A zero channel
    through BN is the constant beta - gamma*mean/sqrt(var+eps), which the 'same' 3x3 conv cannot fold, so the BN
    of the zeroed channels is zeroed too (as GAN Slimming's prox leaves it); channel 5 keeps a nonzero constant
    and stays."""
    keras.utils.set_random_seed(3)
    i = keras.Input((6,))
    x = L.Dense(4 * 4 * 8, use_bias=False, name="project")(i)
    x = L.Reshape((4, 4, 8), name="unflat")(x)
    x = L.BatchNormalization(name="project_bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(6, 3, padding="same", name="conv")(x)
    x = L.Reshape((-1,), name="flat")(x)
    model = keras.Model(i, L.Dense(3, name="out")(x))
    _randomize_bn(model)
    project, bn = model.get_layer("project"), model.get_layer("project_bn")
    dead = [1, 4, 5, 6]
    w = project.get_weights()[0]
    w[:, np.isin(np.arange(128) % 8, dead)] = 0.0
    project.set_weights([w])
    gamma, beta, mean, var = bn.get_weights()
    gamma[[1, 4, 6]], beta[[1, 4, 6]] = 0.0, 0.0
    bn.set_weights([gamma, beta, mean, var])
    _zero_outputs(model.get_layer("conv"), [0, 3])
    small, report = shrink_model(model)
    _check(model, small, report, x=np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32))
    assert report["layers"]["project"]["kept"] == 16 * 5 and report["layers"]["conv"]["kept"] == 4
    assert small.get_layer("unflat").output.shape[1:] == (4, 4, 5) and small.get_layer("project_bn").gamma.shape == (5,)
    assert small.get_layer("flat").output.shape[1:] == (4 * 4 * 4,)
    # the kept units are the kept channels at every position, in order
    np.testing.assert_array_equal(small.get_layer("project").get_weights()[0],
                                  w[:, ~np.isin(np.arange(128) % 8, [1, 4, 6])])


def test_sequential_and_multiple_outputs():
    keras.utils.set_random_seed(5)
    seq = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(4, 3, name="c1"), L.ReLU(), L.Flatten(),
                            L.Dense(3, name="d")])
    _zero_outputs(seq.get_layer("c1"), [0])
    small, report = shrink_model(seq)
    _check(seq, small, report)
    i = keras.Input((6, 6, 1))
    h = L.ReLU()(L.Conv2D(4, 3, name="c1")(i))
    two = keras.Model(i, [L.Dense(3, name="d1")(L.Flatten()(h)), L.GlobalAveragePooling2D()(h)])
    _zero_outputs(two.get_layer("c1"), [0])
    small, report = shrink_model(two)
    # The pooled features are an output: their channel stays, though it is zero.
    assert report["layers"]["c1"]["kept"] == 4
    x = _inputs(two)
    for a, b in zip(two(x), small(x)):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= TOL


class Doubler(keras.layers.Layer):
    """A weight-free custom layer: surgery cannot know that it is per-channel."""

    def call(self, x):
        return 2.0 * x


def _conv_then(between):
    keras.utils.set_random_seed(6)
    i = keras.Input((6, 6, 1))
    h = L.ReLU()(L.Conv2D(4, 3, padding="same", name="c1")(i))
    h = between(h)
    return keras.Model(i, L.Dense(2, name="d")(L.Flatten()(h)))


@pytest.mark.parametrize("between,name,cls", [
    (lambda h: L.Reshape((36, 4), name="mix")(h), "mix", "Reshape"),
    (lambda h: Doubler(name="doubler")(h), "doubler", "Doubler"),
    (lambda h: L.Activation("softmax", name="soft")(h), "soft", "Activation"),
])
def test_unsafe_layer_between_is_refused_in_one_line(between, name, cls):
    model = _conv_then(between)
    small, _ = shrink_model(model)  # nothing to cut: the layer is simply kept
    assert _max_diff(model, small, _inputs(model)) <= TOL
    _zero_outputs(model.get_layer("c1"), [2])
    with pytest.raises(SurgeryError) as err:
        shrink_model(model)
    message = str(err.value)
    assert "\n" not in message and f"'{name}'" in message and f"({cls})" in message
    small, report = shrink_model(model, strict=False)  # or kept, on request
    assert report["layers"]["c1"]["kept"] == 4 and _max_diff(model, small, _inputs(model)) <= TOL


def test_subclassed_and_shared_layers_refused():
    from conftest import subclassed_model
    with pytest.raises(SurgeryError, match="subclassed"):
        shrink_model(subclassed_model())
    i = keras.Input((4,))
    dense = L.Dense(4, name="twice")
    model = keras.Model(i, dense(dense(i)))
    with pytest.raises(SurgeryError, match="'twice'.*more than once"):
        shrink_model(model)


def test_saves_loads_and_exports_int8(tmp_path, digits):
    from atmc_tf.export import parse_check
    model = small_cnn()
    _randomize_bn(model)
    _, dw, fc, _ = _small_cnn_layers(model)
    _zero_depthwise(dw, [0, 6])
    _zero_outputs(fc, [1, 2])
    small, _ = shrink_model(model)
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path)
    assert _max_diff(small, loaded, digits[2][:64]) == 0.0
    blob = to_int8_tflite(loaded, digits[0][:64])
    parse_check(blob)
    assert surgery.count_macs(loaded) < surgery.count_macs(model)


def test_wrapped_model_goes_through_strip_model():
    from atmc_tf.layers import UnconstrainedModelError, atmc_wrappers, wrap_model
    plain = small_cnn()
    _zero_outputs(_nth(plain, L.Dense), [0, 5])
    net = wrap_model(plain)
    with pytest.raises(UnconstrainedModelError):
        shrink_model(net)
    for wrapper in atmc_wrappers(net):
        wrapper.constrained.assign(1)  # as ATMCTrainer.finalize() leaves it
    small, report = shrink_model(net)
    assert report["layers"][_nth(plain, L.Dense).name]["kept"] == 30
    assert _max_diff(plain, small, _inputs(plain)) <= TOL
