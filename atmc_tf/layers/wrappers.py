"""Keras 3 wrappers that carry a layer's ATMC constraint state.

ATMCWrapper wraps a Dense, Conv2D or DepthwiseConv2D layer and marks its kernel
(or the kernel's factors) as compressed tensors. The constraints' state (a fixed
support, ADMM's Z and U) belongs to the trainer, not to the model: a saved wrapped
model holds the weights and one flag, `constrained`, that ATMCTrainer sets when it
has enforced every constraint (finalize) and clears when a training run starts.

Guards, so that a wrapper never silently does nothing:
- calling a wrapper in training mode outside ATMCTrainer's step (plain
  `net.fit`, a custom loop) raises UnconstrainedTrainingError: nobody would
  project the weights; a custom loop runs inside `trainer.custom_step()`;
- strip_model refuses a model whose constraints were never enforced
  (UnconstrainedModelError), unless asked with allow_unconstrained=True.

Parametrisations of the kernel W (viewed as an (m, n) matrix, m = fan-in):
- "none":    W itself is the compressed tensor.
- "abc":     the reference code's full-rank W = B (A + I) + C, with
             B initialised to W and A = C = 0; compressed tensors A, B, C
             (A is r x r with r = min(m, n), on the smaller side).
- "lowrank": W = U V (+ C with sparse_correction), U: m x rank, V: rank x n,
             initialised by truncated SVD; compressed tensors U, V (, C).
Biases and every other weight are never compressed.
"""
import contextlib
import threading
import warnings

import keras
from keras import ops

from atmc_tf import compat
from atmc_tf.choices import FACTORIZATIONS
from atmc_tf.constraints import lowrank
from atmc_tf.layers.activation_sparsity import SPARSITY_LAYERS

SUPPORTED_LAYERS = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
PASS_THROUGH_LAYERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                       keras.layers.GroupNormalization)


class UnsupportedLayerError(ValueError):
    """A layer with weights that ATMC cannot wrap."""


class UnconstrainedTrainingError(RuntimeError):
    """A wrapped model trained where no constraint is enforced (outside ATMCTrainer)."""


class UnconstrainedModelError(ValueError):
    """A wrapped model whose constraints were never enforced, asked to be exported."""


_SCOPE = threading.local()


@contextlib.contextmanager
def constraint_scope():
    """Inside it, wrappers may run in training mode: the caller (ATMCTrainer's step, or a custom
    loop inside trainer.custom_step()) enforces the constraints after the optimizer step."""
    _SCOPE.depth = getattr(_SCOPE, "depth", 0) + 1
    try:
        yield
    finally:
        _SCOPE.depth -= 1


def _in_constraint_scope():
    return getattr(_SCOPE, "depth", 0) > 0


def _supported_names():
    return ", ".join(c.__name__ for c in SUPPORTED_LAYERS)


def kernel_channel_axes(layer):
    """Axes of a Dense / Conv2D / DepthwiseConv2D kernel that TFLite gives one int8 scale each:
    the output channels; for DepthwiseConv2D, in_channel x multiplier."""
    return (-2, -1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (-1,)


@keras.saving.register_keras_serializable(package="atmc_tf")
class ATMCWrapper(keras.layers.Wrapper):
    """Constraint state for one Dense / Conv2D / DepthwiseConv2D layer."""

    def __init__(self, layer, factorization="none", rank=None, sparse_correction=True, **kwargs):
        if "admm" in kwargs:  # ADMM's Z and U now belong to the trainer's Quantization constraint
            kwargs.pop("admm")
            warnings.warn("ATMCWrapper(admm=...) is ignored: the constraints' state lives in ATMCTrainer",
                          DeprecationWarning, stacklevel=2)
        if not isinstance(layer, SUPPORTED_LAYERS):
            raise UnsupportedLayerError(
                f"ATMC cannot wrap layer '{layer.name}' of type {type(layer).__name__}: "
                f"supported are {_supported_names()}")
        if factorization not in FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
        if factorization == "lowrank" and (rank is None or int(rank) < 1):
            raise ValueError(f"factorization='lowrank' needs rank >= 1, got {rank!r}")
        if getattr(layer, "lora_enabled", False):
            raise UnsupportedLayerError(f"layer '{layer.name}' has LoRA enabled; ATMC needs a plain kernel")
        kwargs.setdefault("name", f"atmc_{layer.name}")
        super().__init__(layer, **kwargs)
        self.factorization = factorization
        self.rank = None if rank is None else int(rank)
        self.sparse_correction = bool(sparse_correction)

    # --- construction -------------------------------------------------
    def build(self, input_shape=None):
        super().build(input_shape)
        kshape = tuple(self.layer.kernel.shape)
        m = 1
        for d in kshape[:-1]:
            m *= d
        n = kshape[-1]
        self._matrix_shape = (m, n)
        if self.factorization == "none":
            self._factors = []
        else:
            self.layer.kernel.trainable = False  # W is derived from the factors
            if self.factorization == "abc":
                r = min(m, n)
                shapes = {"a": (r, r), "b": (m, n), "c": (m, n)}
            else:
                r = min(self.rank, m, n)
                shapes = {"u": (m, r), "v": (r, n)}
                if self.sparse_correction:
                    shapes["c"] = (m, n)
            self._factors = [self.add_weight(name=f"factor_{k}", shape=s, initializer="zeros",
                                             trainable=True) for k, s in shapes.items()]
        # 1 once ATMCTrainer enforced every constraint (finalize), 0 while a training run is
        # under way; strip_model reads it.
        self.constrained = self.add_weight(name="constrained", shape=(), dtype="int32", initializer="zeros",
                                           trainable=False)
        self.init_factors_from_kernel()
        self.built = True

    def init_factors_from_kernel(self):
        """(Re)initialise the factors so that effective_kernel() == layer.kernel."""
        if self.factorization == "none":
            return
        w = lowrank.kernel_as_matrix(self.layer.kernel.value)
        m, n = self._matrix_shape
        if self.factorization == "abc":
            a, b, c = self._factors
            a.assign(ops.zeros(a.shape))
            b.assign(w)
            c.assign(ops.zeros(c.shape))
        else:
            u, v = lowrank.factorize(w, self.rank)
            self._factors[0].assign(u)
            self._factors[1].assign(v)
            if self.sparse_correction:
                self._factors[2].assign(ops.zeros((m, n)))

    # --- what the trainer sees -----------------------------------------
    @property
    def compressed_variables(self):
        return list(self._factors) if self.factorization != "none" else [self.layer.kernel]

    @property
    def channel_axes(self):
        """Axes of the output channels, for TFLite's per-channel int8 scales."""
        if self.factorization != "none":
            return (-1,)
        return kernel_channel_axes(self.layer)

    @property
    def dense_size(self):
        """Number of weights of the original kernel (the 32-bit baseline)."""
        m, n = self._matrix_shape
        return m * n

    def effective_kernel(self):
        """The kernel W the layer computes with, in the layer's own shape."""
        if self.factorization == "none":
            return self.layer.kernel.value
        m, n = self._matrix_shape
        f = [v.value for v in self._factors]
        if self.factorization == "abc":
            a, b, c = f
            if a.shape[0] == n:
                w = ops.matmul(b, a + ops.eye(n)) + c
            else:
                w = ops.matmul(a + ops.eye(m), b) + c
        else:
            w = ops.matmul(f[0], f[1])
            if self.sparse_correction:
                w = w + f[2]
        return ops.reshape(w, self.layer.kernel.shape)

    # --- forward ---------------------------------------------------------
    def call(self, inputs, training=None):
        if training and not _in_constraint_scope():
            raise UnconstrainedTrainingError(
                f"ATMC layer '{self.name}' is being trained outside ATMCTrainer, where no constraint is "
                "enforced; train the wrapped model with ATMCTrainer(net, config).fit(...) (or "
                "train_on_batch), or run a custom loop's step inside `with trainer.custom_step():`")
        if self.factorization == "none":
            return self.layer(inputs)
        return _forward(self.layer, inputs, self.effective_kernel())

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(factorization=self.factorization, rank=self.rank,
                      sparse_correction=self.sparse_correction)
        return config


def _forward(layer, inputs, kernel):
    """The wrapped layer's computation with an explicit kernel."""
    if isinstance(layer, keras.layers.Dense):
        x = ops.matmul(inputs, kernel)
        channels = layer.units
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        x = ops.depthwise_conv(inputs, kernel, strides=layer.strides, padding=layer.padding,
                               dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        channels = kernel.shape[-2] * kernel.shape[-1]
    else:
        x = layer.convolution_op(inputs, kernel)
        channels = layer.filters
    if layer.use_bias:
        if isinstance(layer, keras.layers.Dense) or layer.data_format == "channels_last":
            x = x + layer.bias
        else:
            x = x + ops.reshape(layer.bias, (1, channels) + (1,) * (len(x.shape) - 2))
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def atmc_wrappers(model):
    """Every ATMCWrapper of a model (nested models included), in layer order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, ATMCWrapper):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(atmc_wrappers(layer))
    return found


def _describe(layer):
    """"layer 'name' of type Cls", with the name Cls is registered under for a custom class."""
    cls = type(layer)
    registered = keras.saving.get_registered_name(cls)
    custom = "" if registered == cls.__name__ else f" (registered as '{registered}')"
    return f"layer '{layer.name}' of type {cls.__name__}{custom}"


def _check_factorizable(layer, factorization):
    """A subclass of a supported layer, from outside Keras, with a call() of its own: a factorized
    ATMCWrapper computes the plain Dense / Conv2D / DepthwiseConv2D instead (_forward), so refuse it."""
    if factorization == "none" or not isinstance(layer, SUPPORTED_LAYERS):
        return
    base = next(c for c in SUPPORTED_LAYERS if isinstance(layer, c))
    if type(layer).__module__.split(".")[0] != "keras" and type(layer).call is not base.call:
        raise UnsupportedLayerError(
            f"ATMC cannot factorize {_describe(layer)}: it subclasses {base.__name__} with a call() of its own, "
            f"which factorization='{factorization}' would bypass; use factorization='none' or {base.__name__} itself")


def _check_layer(layer):
    if isinstance(layer, (ATMCWrapper, keras.layers.InputLayer)):
        return
    if isinstance(layer, keras.Model):
        raise UnsupportedLayerError(
            f"layer '{layer.name}' is a nested model; build the model flat "
            f"(ATMC wraps {_supported_names()})")
    if isinstance(layer, SUPPORTED_LAYERS + PASS_THROUGH_LAYERS + SPARSITY_LAYERS) or not layer.weights:
        return
    raise UnsupportedLayerError(
        f"ATMC cannot wrap {_describe(layer)}: supported are "
        f"{_supported_names()} (weight-free layers and normalization layers pass through unchanged)")


def _rebuilt(layer):
    """A new layer from layer.get_config(); UnsupportedLayerError naming the layer if that fails."""
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as err:  # noqa: BLE001 -- a custom class's from_config may raise anything
        text = (str(err).strip().splitlines() or [""])[-1].removeprefix("Exception encountered: ")
        raise UnsupportedLayerError(
            f"ATMC cannot copy {_describe(layer)}: {type(layer).__name__}.from_config(layer.get_config()) fails "
            f"({type(err).__name__}: {text[:200]}); give the class a get_config() that returns every "
            "argument of its __init__") from None


def _clone(model, clone_function):
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("wrap_model/strip_model need a built Sequential or Functional model")
    if not compat.is_graph_model(model):
        raise UnsupportedLayerError(
            f"model '{model.name}' is a subclassed model; ATMC needs a Sequential or Functional model")
    return keras.models.clone_model(model, clone_function=clone_function)


def wrap_model(model, factorization="none", ranks=None, sparse_correction=True, **deprecated):
    """Copy of `model` with every Dense/Conv2D/DepthwiseConv2D wrapped, weights kept.

    ranks: int or {layer name: rank}, needed for factorization="lowrank".
    Raises UnsupportedLayerError naming the first layer that cannot be handled.
    """
    if set(deprecated) - {"admm"}:
        raise TypeError(f"wrap_model() got unexpected keyword arguments {sorted(set(deprecated) - {'admm'})}")
    if "admm" in deprecated:
        warnings.warn("wrap_model(admm=...) is ignored: the constraints' state lives in ATMCTrainer",
                      DeprecationWarning, stacklevel=2)
    for layer in model.layers:
        _check_layer(layer)
        _check_factorizable(layer, factorization)
        if isinstance(layer, ATMCWrapper):
            raise ValueError(f"model '{model.name}' is already wrapped; call strip_model first")
    pairs = {}

    def clone(layer):
        new = _rebuilt(layer)
        if isinstance(layer, SUPPORTED_LAYERS):
            rank = ranks.get(layer.name) if isinstance(ranks, dict) else ranks
            new = ATMCWrapper(new, factorization=factorization, rank=rank,
                              sparse_correction=sparse_correction)
        pairs[layer.name] = new
        return new

    wrapped = _clone(model, clone)
    for layer in model.layers:
        new = pairs.get(layer.name)
        if new is None:
            continue
        if isinstance(new, ATMCWrapper):
            new.layer.set_weights(layer.get_weights())
            new.init_factors_from_kernel()
        else:
            new.set_weights(layer.get_weights())
    return wrapped


def strip_model(model, allow_unconstrained=False):
    """Plain Keras copy of a wrapped model: each wrapper becomes its layer with W = effective kernel.

    Refuses (UnconstrainedModelError) a model whose constraints ATMCTrainer never enforced to the
    end (never trained, or a run that stopped before finalize()), unless allow_unconstrained.
    """
    loose = [w.name for w in atmc_wrappers(model) if int(ops.convert_to_numpy(w.constrained.value)) != 1]
    if loose and not allow_unconstrained:
        raise UnconstrainedModelError(
            f"model '{model.name}' has ATMC layers whose constraints were never enforced ({', '.join(loose[:5])}"
            f"{', ...' if len(loose) > 5 else ''}): train it with ATMCTrainer.fit (or call trainer.finalize()) "
            "before exporting, or pass allow_unconstrained=True to export the weights as they are")
    pairs = {}

    def clone(layer):
        if isinstance(layer, ATMCWrapper):
            inner = layer.layer
            new = inner.__class__.from_config(inner.get_config())
            kernel_path = inner.kernel.path
            weights = [layer.effective_kernel() if v.path == kernel_path else v.value
                       for v in inner.weights]
            pairs[layer.name] = (new, [ops.convert_to_numpy(w) for w in weights])
            return new
        new = layer.__class__.from_config(layer.get_config())
        pairs[layer.name] = (new, layer.get_weights())
        return new

    plain = _clone(model, clone)
    for new, weights in pairs.values():
        new.set_weights(weights)
    return plain
