"""The paper's methods as presets of one trainer (ATMC.md, "Baselines").

method      attack   support                   factors        quantization
natural     none     dense                     none           none
da          PGD      dense                     none           none
nap         none     fixed (one-shot top-k)    none           none
ap          PGD      fixed (one-shot top-k)    none           none
al0         PGD      global top-k every step   none           none
alr         PGD      dense                     low rank (*)   none
atmc        PGD      global top-k every step   as asked       b-bit via ADMM (bits=None: ATMC-32)
(*) ranks from one global parameter budget over all layers' singular values.
structure="channel" prunes whole channels too: chosen once for nap / ap (FixedGroupSupport),
re-selected every step for al0 / atmc (GroupL0).
"""

from atmc_tf.choices import METHODS
from atmc_tf.constraints import allocate_ranks, kernel_as_matrix
from atmc_tf.layers import SUPPORTED_LAYERS, wrap_model
from atmc_tf.training.config import ATMCConfig



def method_config(method, attack=None, nnz_budget=None, bits=None, **overrides):
    """ATMCConfig for a method name (recorded in it); overrides go to ATMCConfig (rho, quant_scheme, ...)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    adversarial = method not in ("natural", "nap")
    if adversarial and attack is None and overrides.get("threats") is None:
        raise ValueError(f"method {method!r} is adversarial and needs a PGDConfig attack (or threats)")
    if not adversarial:
        overrides["threats"] = None
    sparsity = {"nap": "fixed", "ap": "fixed", "al0": "dynamic", "atmc": "dynamic"}.get(method, "none")
    if overrides.get("structure", "none") != "none":
        if sparsity == "fixed":  # AP / NAP: the channels too are chosen once, when training starts
            overrides.setdefault("group_support", "fixed")
        if nnz_budget is None:
            # Structured only: the channel constraint (group_budget) prunes; no unstructured budget.
            sparsity = "none"
    return ATMCConfig(attack=attack if adversarial else None,
                      sparsity=sparsity,
                      nnz_budget=nnz_budget if sparsity != "none" else None,
                      bits=bits if method == "atmc" else None,
                      method=method,
                      **overrides)


def compressible_layers(model):
    return [l for l in model.layers if isinstance(l, SUPPORTED_LAYERS)]


def output_layers(model):
    """Names of the compressible layers whose output channels are the model's outputs (the classifier):
    from each output back through single-input layers (activations, Dropout, Reshape, ...) to the first
    Dense / Conv2D / DepthwiseConv2D."""
    from atmc_tf.training.diagnostics import inbound_graph
    graph, _, lasts = inbound_graph(model)
    layers = {l.name: l for l in model.layers}
    names = []
    for name in lasts:
        while name in layers and not isinstance(layers[name], SUPPORTED_LAYERS) and len(graph.get(name, [])) == 1:
            name = graph[name][0]
        if isinstance(layers.get(name), SUPPORTED_LAYERS) and name not in names:
            names.append(name)
    return names


def dense_weight_count(model):
    """Weights of every compressible kernel of a plain model (the 32-bit baseline)."""
    return sum(int(l.kernel.shape.num_elements()) for l in compressible_layers(model))


def wrap_for_method(model, config, factorization="none", param_budget=None):
    """Wrap a plain model the way config.method needs (ALR: factors of global truncated SVD ranks)."""
    if config.method == "alr":
        layers = compressible_layers(model)
        budget = param_budget or config.nnz_budget
        if budget is None:
            raise ValueError("method 'alr' needs a parameter budget (param_budget or nnz_budget)")
        ranks = allocate_ranks([kernel_as_matrix(l.kernel.value).numpy() for l in layers], budget)
        return wrap_model(model, factorization="lowrank", sparse_correction=False,
                          ranks={l.name: r for l, r in zip(layers, ranks)})
    return wrap_model(model, factorization=factorization)
