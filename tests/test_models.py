"""Model builders: shapes, logits, allowed layers, seeded init, ATMC wrapping, int8 TFLite ops."""
import keras
import numpy as np
import pytest

from atmc_tf.models import MODELS, build_model

SHAPES = [(8, 8, 1), (28, 28, 1)]
WEIGHTED = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
            keras.layers.BatchNormalization)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_is_logits_of_the_right_shape(name, shape):
    model = build_model(name, shape, 7, seed=0)
    out = keras.ops.convert_to_numpy(model(np.random.default_rng(0).random((3, *shape), np.float32)))
    assert out.shape == (3, 7) and model.output_shape == (None, 7)
    assert model.layers[-1].activation is keras.activations.linear
    assert not np.allclose(out.sum(-1), 1.0)  # raw logits, not probabilities


@pytest.mark.parametrize("name", sorted(MODELS))
def test_only_layers_atmc_can_handle(name):
    model = build_model(name, (8, 8, 1), 10)
    for layer in model.layers:
        assert isinstance(layer, WEIGHTED) or not layer.weights, f"{layer.name}: {type(layer).__name__}"
    assert any(isinstance(layer, keras.layers.Dense) for layer in model.layers)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_wrap_model_accepts_every_builder(name):
    from atmc_tf.layers import atmc_wrappers, wrap_model
    model = build_model(name, (8, 8, 1), 10, seed=0)
    wrapped = wrap_model(model)
    compressible = [l for l in model.layers if isinstance(l, WEIGHTED[:3])]
    assert len(atmc_wrappers(wrapped)) == len(compressible) >= 2
    x = np.random.default_rng(1).random((2, 8, 8, 1), np.float32)
    np.testing.assert_allclose(wrapped(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seed_makes_initial_weights_deterministic(name):
    a, b = build_model(name, (8, 8, 1), 10, seed=1), build_model(name, (8, 8, 1), 10, seed=1)
    c = build_model(name, (8, 8, 1), 10, seed=2)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernels = lambda m: [w for w in m.get_weights() if w.ndim >= 2]  # noqa: E731
    assert all(not np.array_equal(wa, wc) for wa, wc in zip(kernels(a), kernels(c)))
    # Each layer draws its own seed: kernels must not share one random stream.
    flat = [np.sign(k.ravel()[:32]) for k in kernels(a)]  # signs: a shared seed differs only in scale
    assert len({f.tobytes() for f in flat}) == len(flat)


def test_small_cnn_is_small_and_lenet_is_lenet_class():
    assert 2_000 <= build_model("small_cnn", (8, 8, 1), 10).count_params() <= 10_000
    conv = [l for l in build_model("lenet", (28, 28, 1), 10).layers if isinstance(l, keras.layers.Conv2D)]
    assert [l.kernel_size for l in conv] == [(5, 5), (5, 5)]


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="small_cnn, lenet, mlp"):
        build_model("resnet50", (8, 8, 1), 10)


# Both warnings are TFLite's own, benign here: int8 I/O without float stats, and the
# interpreter's move to ai_edge_litert (used only to list the ops).
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_small_cnn_converts_to_int8_tflite_micro_ops():
    tf = pytest.importorskip("tensorflow")
    model = build_model("small_cnn", (8, 8, 1), 10, seed=0)
    # A fixed batch of 1, as a microcontroller runs it, keeps the Flatten a single static RESHAPE.
    inputs = keras.Input((8, 8, 1), batch_size=1)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, model(inputs)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    calib = np.random.default_rng(0).random((8, 1, 8, 8, 1), np.float32)
    converter.representative_dataset = lambda: ([x] for x in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops <= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "RESHAPE", "MEAN",
                   "AVERAGE_POOL_2D", "MAX_POOL_2D"}, ops
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= ops


# --- classifier_problem: what a user's model must not do (issue 15) ------------------------------

L = keras.layers


def _functional(*layer_list):
    i = keras.Input((8, 8, 1))
    h = i
    for layer in layer_list:
        h = layer(h)
    return keras.Model(i, h)


PROBABILITY_OUTPUTS = {  # name: (model, what the line names)
    "softmax_then_dropout": (lambda: _functional(L.Flatten(), L.Dense(10, activation="softmax", name="logits"),
                                                 L.Dropout(0.2, name="drop")),
                             ["'logits' (Dense)", "'drop' (Dropout)", "softmax", "activation='softmax'"]),
    "softmax_then_identity_reshape_linear": (
        lambda: _functional(L.Flatten(), L.Dense(10, activation="softmax", name="logits"), L.Identity(),
                            L.Reshape((10,)), L.Activation("linear")),
        ["'logits' (Dense)", "Identity", "Reshape", "Activation", "softmax"]),
    "sigmoid": (lambda: _functional(L.Flatten(), L.Dense(10, activation="sigmoid", name="logits")),
                ["the output layer 'logits' (Dense)", "sigmoid", "activation='sigmoid'"]),
    "activation_softmax_layer": (lambda: _functional(L.Flatten(), L.Dense(10), L.Activation("softmax", name="probs")),
                                 ["'probs' (Activation)", "softmax", "remove the layer 'probs'"]),
    "activation_sigmoid_then_flatten": (
        lambda: _functional(L.Flatten(), L.Dense(10), L.Activation("sigmoid", name="probs"), L.Flatten()),
        ["'probs' (Activation)", "sigmoid", "remove the layer 'probs'"]),
    "softmax_layer_sequential": (lambda: keras.Sequential([keras.Input((8, 8, 1)), L.Flatten(), L.Dense(10),
                                                           L.Softmax(name="sm"), L.Dropout(0.5)]),
                                 ["'sm' (Softmax)", "softmax", "remove the layer 'sm'"]),
    "rescaling_1_255": (lambda: _functional(L.Rescaling(1 / 255, name="scale"), L.Flatten(), L.Dense(10)),
                        ["'scale' (Rescaling)", "0.00392", "[0, 1]", "remove the Rescaling layer"]),
    "rescaling_after_reshape_sequential": (
        lambda: keras.Sequential([keras.Input((8, 8, 1)), L.Reshape((64,)), L.Rescaling(1 / 255, name="scale"),
                                  L.Dense(10)]),
        ["'scale' (Rescaling)", "remove the Rescaling layer"]),
}


@pytest.mark.parametrize("case", list(PROBABILITY_OUTPUTS))
def test_classifier_problem_refuses_probabilities_and_a_second_rescaling(case):
    from atmc_tf.models import classifier_problem
    build, mentions = PROBABILITY_OUTPUTS[case]
    problem = classifier_problem(build())
    assert problem and "\n" not in problem, problem
    for word in mentions + ["logits" if "rescaling" not in case else "train at chance"]:
        assert word in problem, (word, problem)


@pytest.mark.parametrize("build", [
    lambda: _functional(L.Flatten(), L.Dense(10)),
    lambda: _functional(L.Rescaling(2.0, offset=-1.0), L.Flatten(), L.Dense(10)),  # [0, 1] -> [-1, 1]: fine
    lambda: _functional(L.Flatten(), L.Dense(10, activation="softmax"), L.Dense(10)),  # softmax is not last
    lambda: _functional(L.Flatten(), L.Dense(10), L.Dropout(0.1)),
    *[lambda name=name: build_model(name, (8, 8, 1), 10) for name in sorted(MODELS)],
], ids=["dense", "rescaling_2x", "hidden_softmax", "dropout_last", *sorted(MODELS)])
def test_classifier_problem_accepts_logits_models(build):
    from atmc_tf.models import classifier_problem
    assert classifier_problem(build()) is None
