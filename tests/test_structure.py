"""--structure=channel's accounting (atmc_tf.training.structure) and configuration: the cost model counts
every weight (and every MAC) of the dense model once and gives exactly what a cut model keeps, a budget on
it holds the size asked for, the classifier is never pruned, and the recipe round-trips."""
import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atmc_tf.export import count_macs, layer_macs, shrink_model
from atmc_tf.models import build_model
from atmc_tf.training import ATMCConfig, dense_weight_count, output_layers
from atmc_tf.training.structure import channel_cost_model
from conftest import mobilenet_v2_style, small_cnn


def _channels(layer):
    k = layer.kernel.shape
    return int(k[2]) * int(k[3]) if isinstance(layer, keras.layers.DepthwiseConv2D) else int(k[-1])


def _model_cost(model, keep, unit, counts=None):
    """channel_cost_model's cost with counts[name] channels kept (default: all)."""
    layers = {l.name: l for l in model.layers}
    prunable = [l.name for l in model.layers if hasattr(l, "kernel") and l.name not in keep]
    linear, pairs, constant = channel_cost_model(model, prunable, unit)
    k = {n: _channels(layers[n]) if counts is None else counts[n] for n in prunable}
    return constant + sum(v * k[n] for n, v in linear.items()) + sum(w * k[p] * k[c] for (p, c), w in pairs.items())


def test_every_weight_and_every_mac_is_counted_once():
    for model in (small_cnn(), mobilenet_v2_style(), build_model("lenet", (28, 28, 1), 10)):
        keep = output_layers(model)
        assert keep == ["logits"] or keep == [model.layers[-1].name], keep
        assert abs(_model_cost(model, keep, "params") - dense_weight_count(model)) < 1e-6, model.name
        assert sum(layer_macs(model).values()) == count_macs(model)
        assert abs(_model_cost(model, keep, "macs") - count_macs(model)) < 1e-6 * count_macs(model), model.name


def _chain(seed=0, depthwise=False):
    """Conv -> ReLU [-> DepthwiseConv (multiplier 2) -> ReLU] -> Conv -> ReLU -> Flatten -> Dense -> Dense:
    every zeroed channel is removable."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((7, 7, 1))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(i)
    if depthwise:
        h = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu", name="dw")(h)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(12, activation="relu", name="d1")(h)
    return keras.Model(i, keras.layers.Dense(4, name="logits")(h))


def _zero_random_channels(model, data):
    """Zero a drawn nonempty-kept subset of every hidden layer's channels (a depthwise channel with the
    channel it reads); returns the kept counts."""
    counts, c1 = {}, None
    for layer in model.layers:
        if not hasattr(layer, "kernel") or layer.name == "logits":
            continue
        n = _channels(layer)
        if layer.name == "dw":  # channel c * 2 + m reads c1's channel c: cut with it
            kept = np.repeat(c1, 2)
        else:
            kept = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any), label=layer.name))
        c1 = kept if layer.name == "c1" else c1
        kernel, bias = (np.array(w) for w in layer.get_weights())
        if layer.name == "dw":
            kernel[..., ~kept.reshape(-1, 2)] = 0
        else:
            kernel[..., ~kept] = 0
        bias[~kept] = 0
        layer.set_weights([kernel, bias])
        counts[layer.name] = int(kept.sum())
    return counts


@settings(max_examples=25, deadline=None)
@given(st.data(), st.booleans())
def test_the_cost_model_is_exactly_what_the_cut_model_keeps(data, depthwise):
    model = _chain(depthwise=depthwise)
    counts = _zero_random_channels(model, data)
    small, report = shrink_model(model)
    kept_weights = sum(int(np.prod(l.kernel.shape)) for l in small.layers if hasattr(l, "kernel"))
    assert abs(kept_weights - _model_cost(model, ["logits"], "params", counts)) < 1e-6, counts
    assert report["macs_after"] == count_macs(small)
    assert abs(count_macs(small) - _model_cost(model, ["logits"], "macs", counts)) < 1e-6 * count_macs(small), counts


def test_bad_cost_unit_is_refused():
    import pytest
    with pytest.raises(ValueError, match="unit must be one of"):
        channel_cost_model(small_cnn(), ["conv1"], unit="bytes")


def test_residual_stream_layers_are_kept_whole():
    """A channel reaching an Add is cut only where every branch drops it: the stem and the projections feeding
    the skips (and the classifier, an output) are uncuttable; the expansions and depthwise layers are not."""
    from atmc_tf.training.structure import uncuttable_layers
    assert sorted(uncuttable_layers(mobilenet_v2_style())) == ["b1_project", "b2_project", "logits", "stem"]
    assert uncuttable_layers(build_model("lenet", (28, 28, 1), 10)) == [output_layers(build_model("lenet", (28, 28, 1),
                                                                                                   10))[0]]


def test_an_infeasible_channel_budget_names_what_is_kept_whole():
    import types

    from pipelines.flags_def import UsageError
    from pipelines.stages import channel_budget
    with pytest.raises(UsageError, match=r"--size_ratio=0.05 .* \(the classifier logits; stem, b1_project, b2_project, "
                                         r"whose channels feed a residual Add or another merge\); raise --size_ratio"):
        channel_budget(types.SimpleNamespace(size_ratio=0.05, mac_ratio=None), mobilenet_v2_style())


@pytest.mark.parametrize("model,ratio", [("small_cnn", 0.5), ("small_cnn", 0.25), ("lenet", 0.5), ("lenet", 0.25),
                                         ("lenet", 0.1), ("mobilenet_v2_style", 0.5), ("mobilenet_v2_style", 0.25),
                                         ("mobilenet_v2_style", 0.1)])
def test_size_ratio_keeps_about_that_share_of_the_weights(model, ratio):
    """--structure=channel --size_ratio: the cut model keeps at most `ratio` of the dense compressible weights,
    and not much less (an additive budget, which counted a weight between two kept channels twice, kept
    0.063 of LeNet's at 0.25; on a MobileNetV2-style model, pruning the channels of its residual stream, which
    surgery cannot cut unless every branch agrees, kept 0.33 at 0.25)."""
    import types

    from atmc_tf.export import shrink_model
    from atmc_tf.layers import strip_model, wrap_model
    from atmc_tf.training import ATMCTrainer
    from pipelines.stages import channel_budget
    dense = mobilenet_v2_style(seed=1) if model == "mobilenet_v2_style" else \
        build_model(model, (28, 28, 1) if model == "lenet" else (8, 8, 1), 10, seed=1)
    settings_ = channel_budget(types.SimpleNamespace(size_ratio=ratio, mac_ratio=None), dense)
    copy = keras.models.clone_model(dense)
    copy.set_weights(dense.get_weights())
    net = wrap_model(copy)
    trainer = ATMCTrainer(net, ATMCConfig(**settings_))
    trainer.prepare_constraints()
    trainer.finalize()
    small, _ = shrink_model(strip_model(net))
    achieved = dense_weight_count(small) / dense_weight_count(dense)
    assert 0.8 * ratio <= achieved <= ratio, achieved


def test_the_classifier_is_kept_and_the_recipe_round_trips():
    config = ATMCConfig(structure="channel", group_budget=1000, group_budget_unit="costs",
                        group_costs={"conv1": 13.5, "dwconv2": 20.5, "pwconv2": 168.0}, keep_layers=("logits",))
    again = ATMCConfig.from_dict(config.to_dict())
    assert again == config
    group = config.components()[1][0]
    assert group.kind == "group_l0" and group.keep_layers == ("logits",)
    from atmc_tf.layers import wrap_model
    from atmc_tf.training import ATMCTrainer
    net = wrap_model(build_model("small_cnn", (8, 8, 1), 10))
    logits = net.get_layer("atmc_logits").layer.kernel.numpy().copy()
    trainer = ATMCTrainer(net, config)
    trainer.prepare_constraints()
    trainer.finalize()
    pw = net.get_layer("atmc_pwconv2").layer.kernel.numpy()
    alive = np.abs(pw).sum(axis=(0, 1, 2)) > 0
    assert 0 < int(alive.sum()) < 32  # channels were cut, not all
    # The classifier is kept whole: its rows reading live channels (through Flatten, row r reads channel
    # r % 32) are untouched; its rows reading pruned channels multiply zeros and are zeroed, as the cut removes them.
    after = net.get_layer("atmc_logits").layer.kernel.numpy()
    rows = np.tile(alive, after.shape[0] // 32)
    np.testing.assert_array_equal(after[rows], logits[rows])
    assert not after[~rows].any()


def test_structured_codebook_codes_survive_the_cut():
    """Channels pruned under a budget with the 4-bit int8-lattice codebook, then cut: the cut model's .tflite
    stores exactly the trained codes. The next layer's slice of a pruned channel (a Dense reading it through
    Flatten at every position) is zeroed before the codebook is fitted; otherwise an output channel whose
    largest |w| sat in that slice gets another int8 scale once the slice is cut, and other codes."""
    from atmc_tf.export import kernel_codes_match, shrink_model, to_int8_tflite
    from atmc_tf.layers import wrap_model
    from atmc_tf.training import ATMCTrainer
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
                              keras.layers.MaxPooling2D(2, name="pool"), keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(12, activation="relu", name="fc"), keras.layers.Dense(4, name="logits")])
    conv = model.get_layer("conv").kernel.numpy()
    conv[..., :3] *= 0.01  # channels 0-2 score lowest: the budget prunes them
    model.get_layer("conv").kernel.assign(conv)
    fc = model.get_layer("fc").kernel.numpy()
    fc[0::6] *= 50.0  # rows reading channel 0 (at every position) hold every fc output's largest |w|
    model.get_layer("fc").kernel.assign(fc)
    linear, pairs, constant = channel_cost_model(model, ["conv", "fc"])
    total = dense_weight_count(model) - constant  # every channel of conv and fc
    config = ATMCConfig(structure="channel", group_budget=int(0.6 * total), group_budget_unit="costs",
                        group_costs=linear, group_pairs=[(p, c, w) for (p, c), w in pairs.items()],
                        keep_layers=("logits",), bits=4,
                        quant_scheme="codebook_int8", sparsity="none")
    net = wrap_model(model)
    trainer = ATMCTrainer(net, config)
    trainer.prepare_constraints()
    trainer.finalize()
    from atmc_tf.layers import strip_model
    plain = strip_model(net)
    conv_alive = np.abs(plain.get_layer("conv").kernel.numpy()).sum(axis=(0, 1, 2)) > 0
    assert not conv_alive[0] and conv_alive.sum() < 6, conv_alive  # channel 0 (and its big fc rows) pruned
    deployed, cut = shrink_model(plain, strict=False)
    assert cut["layers"]["conv"]["kept"] == int(conv_alive.sum())
    for name in ("conv", "fc"):  # every cut kernel lies on the int8 lattice of its own per-channel scale
        k = deployed.get_layer(name).kernel.numpy().reshape(-1, deployed.get_layer(name).kernel.shape[-1])
        scale = np.abs(k).max(axis=0) / 127.0
        codes = k / np.where(scale > 0, scale, 1.0)
        assert np.abs(codes - np.round(codes)).max() < 1e-3, name
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    result = kernel_codes_match(deployed, to_int8_tflite(deployed, x))
    assert result["mismatches"] == 0, result


def test_a_channel_through_a_concatenate_is_cut_unless_it_reaches_an_add():
    i = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 1, name="a")(i)
    b = keras.layers.Conv2D(4, 1, name="b")(i)
    c = keras.layers.Conv2D(8, 1, name="c")(i)
    cat = keras.layers.Concatenate()([a, b])
    head = keras.layers.Conv2D(8, 1, name="head")(cat)
    merged = keras.layers.Add()([keras.layers.Concatenate()([a, b]), c])
    out = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Concatenate()([head, merged])))
    from atmc_tf.training.structure import uncuttable_layers
    assert sorted(uncuttable_layers(keras.Model(i, out))) == ["a", "b", "c", "logits"]
    solo = keras.Model(i, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(head)))
    assert uncuttable_layers(solo) == ["logits"]
