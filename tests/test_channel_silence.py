"""What the channel budget counts as removed is what the export removes.

A channel GroupL0 prunes has a zero kernel slice, but it would still output its bias and the
BatchNorm constant beta - gamma * mean / sqrt(var + eps), which a 'same'-padded KxK consumer (small_cnn's
depthwise layer) cannot fold: surgery would keep it, and the exported model would exceed the budget
(measured: 0.561x the dense MACs for --mac_ratio=0.5). ATMCTrainer zeroes such a channel's bias and BN
with it (atmc_tf.training.structure.ChannelSilencer), so it outputs exactly 0 and shrink_model cuts it.
"""
import keras
import numpy as np
import pytest

from atmc_tf.constraints import GroupL0
from atmc_tf.export import count_macs, shrink_model
from atmc_tf.layers import atmc_wrappers, kernel_channel_axes, strip_model, wrap_model
from atmc_tf.models import build_model
from atmc_tf.training import ATMCTrainer, CleanLoss, dense_weight_count
from atmc_tf.training.structure import ChannelSilencer, channel_cost_model
from conftest import small_cnn


def _trained_like(model, seed=0):
    """BatchNorm statistics and offsets as a trained model has them (nonzero), not Keras' zeros."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.beta.shape[0]
            layer.beta.assign(rng.uniform(0.05, 0.5, c).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
        elif getattr(layer, "use_bias", False) and hasattr(layer, "bias"):
            layer.bias.assign(rng.uniform(0.05, 0.5, layer.bias.shape[0]).astype("float32"))
    return model


def _alive(net):
    """{inner layer name: bool per output channel, its effective kernel slice nonzero}."""
    out = {}
    for w in atmc_wrappers(net):
        k = np.asarray(keras.ops.convert_to_numpy(w.effective_kernel()))
        axes = tuple(a % k.ndim for a in kernel_channel_axes(w.layer))
        out[w.layer.name] = np.any(k != 0, axis=tuple(a for a in range(k.ndim) if a not in axes)).reshape(-1)
    return out


def _group(dense, keep, unit, ratio):
    """GroupL0 holding the exact cost of the cut model (channel_cost_model) to `ratio` of the dense one's."""
    prunable = [l.name for l in dense.layers if hasattr(l, "kernel") and l.name not in keep]
    linear, pairs, constant = channel_cost_model(dense, prunable, unit)
    total = count_macs(dense) if unit == "macs" else dense_weight_count(dense)
    return GroupL0(int(ratio * total - constant), scoring="lamp", budget_unit="costs", group_costs=linear,
                   group_pairs=[(p, c, w) for (p, c), w in pairs.items()], keep_layers=keep)


def _train(dense, unit, ratio, digits, steps=3):
    keep = ["logits"] if "logits" in [l.name for l in dense.layers] else [dense.layers[-1].name]
    group = _group(dense, keep, unit, ratio)
    net = wrap_model(dense)
    trainer = ATMCTrainer(net, terms=[CleanLoss()], constraints=[group])
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y, _, _ = digits
    trainer.fit(x[:32 * steps], y[:32 * steps], epochs=1, batch_size=32, verbose=0)
    return net


@pytest.mark.parametrize("model,unit,ratio", [("small_cnn", "macs", 0.5), ("small_cnn", "params", 0.25),
                                              ("lenet", "macs", 0.5), ("lenet", "params", 0.25)])
def test_shrink_cuts_every_channel_the_budget_pruned(digits, model, unit, ratio):
    dense = _trained_like(build_model(model, (8, 8, 1), 10, seed=0))
    net = _train(dense, unit, ratio, digits)
    alive = _alive(net)
    small, report = shrink_model(strip_model(net))
    if model == "small_cnn":
        if unit == "macs":  # the budget pruned conv1 channels, read by the 'same'-padded 3x3 depthwise layer
            assert not alive["conv1"].all()
        # conv1 channel i and depthwise channel i are one channel of the cut model: pruned together.
        np.testing.assert_array_equal(alive["conv1"], alive["dwconv2"])
    expected = alive
    got = {name: r["kept"] for name, r in report["layers"].items()}
    assert got == {name: int(v.sum()) for name, v in expected.items()}, (got, alive)
    if unit == "macs":
        assert report["macs_after"] <= ratio * report["macs_before"], report
    else:
        assert dense_weight_count(small) <= ratio * dense_weight_count(dense), report


def test_a_pruned_channel_outputs_exactly_zero_in_both_modes(digits):
    """Conv (with bias) -> BN -> ReLU -> 'same' depthwise (multiplier 2, bias) -> ... : after the
    projection a pruned conv channel and the depthwise channels it feeds output exactly 0."""
    dense = _trained_like(small_cnn())
    group = _group(dense, [dense.layers[-1].name], "macs", 0.4)
    net = wrap_model(dense)
    names = {w.layer.name: w for w in atmc_wrappers(net)}
    conv = next(n for n in names if n.startswith("conv2d"))
    dw = next(n for n in names if n.startswith("depthwise"))
    trainer = ATMCTrainer(net, terms=[CleanLoss()], constraints=[group])
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y, _, _ = digits
    trainer.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    dead = ~_alive(net)[conv]
    assert dead.any()
    probe = keras.Model(net.inputs, [net.get_layer(names[conv].name).output, net.get_layer(names[dw].name).output])
    with trainer.custom_step():  # wrappers may run in training mode (BN batch statistics) only in a step
        for training in (False, True):
            a, b = (np.asarray(keras.ops.convert_to_numpy(t)) for t in probe(x[:16], training=training))
            bn = net.layers[net.layers.index(net.get_layer(names[conv].name)) + 1]
            after_bn = np.asarray(keras.ops.convert_to_numpy(bn(a, training=training)))
            assert np.all(after_bn[..., dead] == 0), training
            assert np.all(b[..., np.repeat(dead, 2)] == 0), training
    small, report = shrink_model(strip_model(net))
    assert report["layers"][conv]["kept"] <= int((~dead).sum())


def test_the_silencer_finds_the_companions():
    net = wrap_model(build_model("small_cnn", (8, 8, 1), 10))
    plan = {w.layer.name: (own, source, [v.path for v in comp], exclusive)
            for w, own, source, comp, exclusive in ChannelSilencer(net, ["conv1", "dwconv2", "pwconv2"]).plan}
    # conv1's channels are read by the depthwise layer alone: the two are pruned together
    assert plan["conv1"] == (True, None, ["bn1/gamma", "bn1/beta", "bn1/moving_mean"], "atmc_dwconv2")
    assert plan["dwconv2"] == (True, "atmc_conv1", ["bn2/gamma", "bn2/beta", "bn2/moving_mean"], None)
    assert plan["pwconv2"] == (True, None, ["bn3/gamma", "bn3/beta", "bn3/moving_mean"], None)
    assert "logits" not in plan  # the classifier is never pruned: its bias stays
    lenet = wrap_model(build_model("lenet", (8, 8, 1), 10))
    plan = {w.layer.name: [v.path for v in comp] for w, _, _, comp, _ in ChannelSilencer(lenet, ["conv1", "conv2"]).plan}
    assert plan == {"conv1": ["atmc_conv1/conv1/bias"], "conv2": ["atmc_conv2/conv2/bias"]}


def test_tied_groups_are_kept_or_dropped_together():
    """select_groups(leaders=...): a depthwise channel follows the channel it reads; the pair is one
    group of summed score and cost (GroupL0 builds the leaders from TensorInfo.reads)."""
    import tensorflow as tf

    from atmc_tf.constraints import TensorInfo
    from atmc_tf.constraints.group_sparsity import select_groups
    # conv: 3 groups, dw (multiplier 2): 6 groups following conv's 0,0,1,1,2,2.
    scores = [tf.constant([1.0, 0.1, 0.5]), tf.constant([0.0, 0.0, 0.9, 0.9, 0.2, 0.2])]
    leaders = [0, 1, 2, 0, 0, 1, 1, 2, 2]
    keep = [k.numpy().tolist() for k in select_groups(scores, 4, leaders=leaders)]
    # pair sums: group 0 -> 1.0 / 3, group 1 -> 1.9 / 3, group 2 -> 0.9 / 3: the best pair is 1, then 0
    assert keep == [[False, True, False], [False, False, True, True, False, False]], keep
    keep = [k.numpy().tolist() for k in select_groups(scores, 6, leaders=leaders)]
    assert keep == [[True, True, False], [True, True, True, True, False, False]], keep
    infos = [TensorInfo("c", (3, 3, 1, 3), (-1,), "conv", "Conv2D"),
             TensorInfo("d", (3, 3, 3, 2), (-2, -1), "dw", "DepthwiseConv2D", reads="conv"),
             TensorInfo("f", (6, 4), (-1,), "fc", "Dense")]
    group = GroupL0(3)
    group.build(infos, lambda name, shape, dtype, init: tf.Variable(tf.zeros(shape, dtype)))
    assert group.leaders.tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2, 9, 10, 11, 12]
    rng = np.random.default_rng(0)
    values = [tf.constant(rng.normal(size=t.shape), tf.float32) for t in infos]
    out = group.finalize(values, lambda var, value: var.assign(value))
    conv = np.any(out[0].numpy() != 0, axis=(0, 1, 2))
    dw = np.any(out[1].numpy() != 0, axis=(0, 1)).reshape(-1)
    np.testing.assert_array_equal(np.repeat(conv, 2), dw)
