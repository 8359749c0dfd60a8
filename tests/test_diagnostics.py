"""What a budget left of a model's paths (atmc_tf.training.diagnostics.path_report)."""
import keras
import numpy as np

from atmc_tf.layers import atmc_wrappers, wrap_model
from atmc_tf.training.diagnostics import path_report
from conftest import mobilenet_v2_style


def _zero(net, suffix, channels=None):
    for w in atmc_wrappers(net):
        if w.name.endswith(suffix):
            k = w.layer.kernel.numpy()
            if channels is None:
                k[:] = 0
            else:
                k[..., channels, :] = 0
            w.layer.kernel.assign(k)


def test_a_residual_skip_keeps_the_path_an_emptied_stem_cuts_it():
    net = wrap_model(mobilenet_v2_style())
    assert path_report(net) == {"cut": [], "empty_channels": {}, "reaches_output": True}
    _zero(net, "b1_dw")  # the block's branch is cut, its Add skip still carries the input
    _zero(net, "b2_dw", channels=slice(0, 5))
    r = path_report(net)
    assert r["cut"] == ["atmc_b1_dw"] and r["empty_channels"] == {"atmc_b2_dw": (5, 64)}
    assert r["reaches_output"]
    _zero(net, "stem")  # nothing reaches the blocks any more
    r = path_report(net)
    assert r["cut"] == ["atmc_stem", "atmc_b1_dw"] and not r["reaches_output"]


def test_sequential_chain():
    net = wrap_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)]))
    assert path_report(net)["reaches_output"]
    w = atmc_wrappers(net)[0]
    w.layer.kernel.assign(np.zeros(w.layer.kernel.shape, "float32"))
    assert not path_report(net)["reaches_output"]


def test_collapse_is_named_in_one_line():
    from atmc_tf.training.diagnostics import collapse_problem
    net = wrap_model(mobilenet_v2_style())
    assert collapse_problem(path_report(net), 0.99, 0.95, 10) is None
    _zero(net, "b2_dw", channels=slice(0, 60))
    line = collapse_problem(path_report(net), 0.99, 0.12, 10)
    assert "at chance" in line and "atmc_b2_dw (60 of 64 channels empty)" in line and "\n" not in line
    _zero(net, "stem")
    line = collapse_problem(path_report(net), 0.99, 0.5, 10)
    assert "no path" in line and "atmc_stem" in line
    assert collapse_problem(path_report(net), 0.15, 0.1, 10).startswith("the compressed model collapsed")
