"""Keras 3 Functional classifiers returning logits (no softmax) for inputs in [0, 1].

Only Dense, Conv2D, DepthwiseConv2D, BatchNormalization and weight-free layers
appear, because those are what atmc_tf.layers.wrap_model can compress. ReLU
is a separate layer (not a fused `activation=`) so the pre-activation is
visible to anything that inspects the graph; TFLite fuses it back on export.
"""
import keras
import numpy as np

from atmc_tf.choices import MODELS as MODEL_NAMES

layers = keras.layers


class _Initializers:
    """Hands out one kernel initializer per layer.

    A seeded Keras initializer repeats the same values on every call, so each
    layer gets its own seed drawn from the model seed; seed=None keeps Keras'
    default (global RNG) so keras.utils.set_random_seed still governs it.
    """

    def __init__(self, seed):
        self._rng = None if seed is None else np.random.default_rng(seed)

    def __call__(self):
        if self._rng is None:
            return "glorot_uniform"
        return keras.initializers.GlorotUniform(seed=int(self._rng.integers(2**31 - 1)))


def lenet(input_shape, num_classes, seed=None):
    """Caffe LeNet (20/50 conv filters, 500 hidden), the ATMC paper's MNIST model family.

    padding='same' keeps it valid for inputs as small as 8x8 (8 -> 4 -> 2).
    """
    init = _Initializers(seed)
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Conv2D(20, 5, padding="same", kernel_initializer=init(), name="conv1")(inputs)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = layers.Conv2D(50, 5, padding="same", kernel_initializer=init(), name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(500, kernel_initializer=init(), name="fc1")(x)
    x = layers.ReLU(name="relu3")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=init(), name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet")


def small_cnn(input_shape, num_classes, seed=None):
    """MobileNet-style CNN of a few thousand weights, sized for 8x8 digits and TFLite Micro.

    Every op converts to an int8 TFLite builtin that TFLite Micro has: CONV_2D,
    DEPTHWISE_CONV_2D (BatchNormalization folds into these), RESHAPE, FULLY_CONNECTED.
    Conv biases are dropped where BatchNormalization's beta already supplies one.
    """
    init = _Initializers(seed)
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer=init(),
                      name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                               depthwise_initializer=init(), name="dwconv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.Conv2D(32, 1, use_bias=False, kernel_initializer=init(), name="pwconv2")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = layers.ReLU(name="relu3")(x)
    # Flatten, not global average pooling: on 8x8 digits it keeps the 4x4 layout and
    # scores ~98% against ~93% test accuracy, for ~5k more Dense weights.
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=init(), name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def mlp(input_shape, num_classes, seed=None, hidden=256):
    """One hidden layer perceptron: the smallest baseline, and the fastest to attack and train."""
    init = _Initializers(seed)
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(hidden, kernel_initializer=init(), name="fc1")(x)
    x = layers.ReLU(name="relu1")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=init(), name="logits")(x)
    return keras.Model(inputs, outputs, name="mlp")


# Each choice is built by the function of its name.
MODELS = {name: globals()[name] for name in MODEL_NAMES}


def build_model(name, input_shape, num_classes, seed=None):
    """Build MODELS[name]; the same seed gives the same initial weights."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_classes), seed=seed)


# --- checks on a user's own classifier ----------------------------------------------------------

# Layers that leave the values unchanged at inference (or only reshape them): a softmax before them
# still makes the model output probabilities, a Rescaling after the input still rescales it.
_SAME_VALUES = (layers.Dropout, layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout,
                layers.ActivityRegularization, layers.Reshape, layers.Flatten, layers.Identity)
_PROBABILITIES = ("softmax", "sigmoid", "hard_sigmoid")
MIN_INPUT_SCALE = 1 / 100  # a Rescaling at most this on inputs in [0, 1]: images divided by 255 twice


def _kind(layer):
    return f"'{layer.name}' ({type(layer).__name__})"


def _activation_name(layer):
    if isinstance(layer, layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _same_values(layer):
    return isinstance(layer, _SAME_VALUES) or (isinstance(layer, layers.Activation)
                                               and _activation_name(layer) == "linear")


def _single(tensors):
    """The one tensor of a layer's input / output, or None (several, or a layer called more than once)."""
    if isinstance(tensors, (list, tuple)):
        return tensors[0] if len(tensors) == 1 else None
    return tensors


def _tensor_of(layer, side):
    try:
        return _single(getattr(layer, side))
    except (AttributeError, ValueError):  # a layer used at several places has no single input / output
        return None


def _output_problem(model):
    t, after = model.outputs[0], []
    while True:
        layer = next((l for l in model.layers if _tensor_of(l, "output") is t), None)
        if layer is None or isinstance(layer, layers.InputLayer):
            return None
        activation = _activation_name(layer)
        if activation in _PROBABILITIES:
            where = f"the output layer {_kind(layer)}" if not after else (
                f"layer {_kind(layer)}" + f", followed only by {', '.join(map(_kind, after))} (same values at "
                "inference),")
            fix = (f"remove the layer '{layer.name}'" if isinstance(layer, (layers.Activation, layers.Softmax))
                   else f"remove its activation='{activation}' (e.g. Dense(units) without activation)")
            return (f"{where} applies {activation}, so the model outputs probabilities, but ATMC trains on "
                    f"logits; {fix} so the model outputs logits")
        if not _same_values(layer):
            return None
        after.insert(0, layer)
        t = _tensor_of(layer, "input")


def _input_problem(model):
    t = model.inputs[0]
    while True:
        readers = [l for l in model.layers if not isinstance(l, layers.InputLayer) and _tensor_of(l, "input") is t]
        if len(readers) != 1:
            return None
        layer = readers[0]
        if isinstance(layer, layers.Rescaling):
            scale = float(np.max(np.abs(np.asarray(layer.scale, dtype=np.float64))))
            if scale <= MIN_INPUT_SCALE:
                return (f"layer {_kind(layer)} multiplies the inputs by {scale:.3g}, but ATMC's inputs are images "
                        "already in [0, 1] (and the attack's eps is in those units), so the model would see "
                        "values near 0 and train at chance; remove the Rescaling layer")
            return None
        if not _same_values(layer):
            return None
        t = _tensor_of(layer, "output")


def classifier_problem(model):
    """Why `model` cannot be trained as ATMC's classifier of images in [0, 1], on one line; None if it can.

    Refused: an output of probabilities (softmax or sigmoid, in the last layer or before layers that
    leave the values unchanged at inference: Dropout, Reshape, Flatten, Identity, Activation('linear')),
    since ATMC's losses and attacks take logits; and a Rescaling of at most MIN_INPUT_SCALE right after
    the input (e.g. 1/255), since the inputs are already in [0, 1].
    """
    return _output_problem(model) or _input_problem(model)
