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


def test_fit_warns_in_one_line_when_the_budget_empties_a_layer():
    """ATMCTrainer.fit names the layers a global budget left with no weight and the fix (a library user gets
    no pipeline collapse check); LAMP scoring at the same budget keeps every layer and stays silent."""
    import warnings

    from atmc_tf.attacks import PGDConfig
    from atmc_tf.training import ATMCTrainer, method_config
    from atmc_tf.training.diagnostics import LayerCutWarning

    def run(scoring):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="small"),
                                  keras.layers.Dense(3, name="big")])
        model.get_layer("small").kernel.assign(np.full((6, 8), 0.01, "float32"))  # |w| far below the next layer's
        model.get_layer("big").kernel.assign(np.ones((8, 3), "float32"))
        net = wrap_model(model)
        trainer = ATMCTrainer(net, method_config("al0", attack=PGDConfig(eps=0.0, steps=1), nnz_budget=10,
                                                 l0_scoring=scoring))
        trainer.compile(optimizer=keras.optimizers.SGD(0.0))
        x, y = np.random.default_rng(0).random((8, 6), dtype=np.float32), np.zeros(8, "int64")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(x, y, epochs=1, batch_size=8, verbose=0)
        return [str(w.message) for w in caught if issubclass(w.category, LayerCutWarning)]

    (line,) = run("magnitude")
    assert "atmc_small" in line and "no path from the input reaches the output" in line and "l0_scoring='lamp'" in line
    assert "\n" not in line
    assert run("lamp") == []
