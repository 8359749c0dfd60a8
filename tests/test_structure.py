"""--structure=channel's accounting (atmc_tf.training.structure) and configuration: every weight (and
every MAC) is paid once, a budget on the kept channels' costs bounds the parameters (MACs) the cut model
keeps, the classifier is never pruned, and the recipe round-trips."""
import keras
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from atmc_tf.export import count_macs, layer_macs, shrink_model
from atmc_tf.models import build_model
from atmc_tf.training import ATMCConfig, dense_weight_count, output_layers
from atmc_tf.training.structure import channel_costs
from conftest import mobilenet_v2_style, small_cnn


def _channels(layer):
    k = layer.kernel.shape
    return int(k[2]) * int(k[3]) if isinstance(layer, keras.layers.DepthwiseConv2D) else int(k[-1])


def test_every_weight_is_paid_once():
    for model in (small_cnn(), mobilenet_v2_style(), build_model("lenet", (28, 28, 1), 10)):
        keep = output_layers(model)
        assert keep == ["logits"] or keep == [model.layers[-1].name], keep
        costs, constant = channel_costs(model, keep)
        layers = {l.name: l for l in model.layers}
        assert keep[0] not in costs
        total = sum(c * _channels(layers[n]) for n, c in costs.items()) + constant
        assert abs(total - dense_weight_count(model)) < 1e-6, (model.name, total, dense_weight_count(model))


def test_every_mac_is_paid_once():
    for model in (small_cnn(), mobilenet_v2_style(), build_model("lenet", (28, 28, 1), 10)):
        keep = output_layers(model)
        costs, constant = channel_costs(model, keep, unit="macs")
        layers = {l.name: l for l in model.layers}
        total = sum(c * _channels(layers[n]) for n, c in costs.items()) + constant
        assert sum(layer_macs(model).values()) == count_macs(model)
        assert abs(total - count_macs(model)) < 1e-6 * count_macs(model), (model.name, total, count_macs(model))
        params, _ = channel_costs(model, keep)
        # A conv channel's MACs are its parameters times the positions it is applied at (more than 1).
        assert all(costs[n] > params[n] for n in costs if isinstance(layers[n], keras.layers.Conv2D))


def _plain_chain(seed=0):
    """Conv -> ReLU -> Conv -> ReLU -> Flatten -> Dense -> Dense: every zeroed channel is removable."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(i)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(12, activation="relu", name="d1")(h)
    return keras.Model(i, keras.layers.Dense(4, name="logits")(h))


def _zero_random_channels(model, costs, constant, data):
    """Zero a drawn nonempty-kept subset of c1, c2 and d1's channels; returns what the kept ones cost."""
    paid = constant
    for name in ("c1", "c2", "d1"):
        layer = model.get_layer(name)
        n = _channels(layer)
        kept = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any), label=name)
        kernel, bias = (np.array(w) for w in layer.get_weights())
        kernel[..., ~np.array(kept)] = 0
        bias[~np.array(kept)] = 0
        layer.set_weights([kernel, bias])
        paid += costs[name] * sum(kept)
    return paid


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_the_costs_of_the_kept_channels_bound_what_the_cut_model_keeps(data):
    model = _plain_chain()
    costs, constant = channel_costs(model, ["logits"])
    paid = _zero_random_channels(model, costs, constant, data)
    small, _ = shrink_model(model)
    kept_weights = sum(int(np.prod(l.kernel.shape)) for l in small.layers if hasattr(l, "kernel"))
    assert kept_weights <= paid + 1e-6, (kept_weights, paid)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_the_mac_costs_of_the_kept_channels_bound_the_cut_models_macs(data):
    model = _plain_chain()
    costs, constant = channel_costs(model, ["logits"], unit="macs")
    paid = _zero_random_channels(model, costs, constant, data)
    small, report = shrink_model(model)
    assert report["macs_after"] == count_macs(small) <= paid + 1e-6, (count_macs(small), paid)


def test_bad_cost_unit_is_refused():
    import pytest
    with pytest.raises(ValueError, match="unit must be one of"):
        channel_costs(small_cnn(), ["logits"], unit="bytes")


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
    costs, _ = channel_costs(model, ["logits"])
    total = sum(c * (6 if k == "conv" else 12) for k, c in costs.items())  # every channel of conv and fc
    config = ATMCConfig(structure="channel", group_budget=int(0.6 * total), group_budget_unit="costs",
                        group_costs={k: float(v) for k, v in costs.items()}, keep_layers=("logits",), bits=4,
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
