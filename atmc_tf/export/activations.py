"""What activation sparsity buys and whether it only hides gradients.

- `activation_densities`: per WinnersTakeAll / ActivationThreshold layer, on a batch of inputs
  (clean or adversarial: an attack may densify activations), the fraction of nonzero entries
  and the fraction of units (neurons, or whole channels of a conv map) with any nonzero entry.
- `effective_macs`: the dense multiply-accumulates of each Conv2D / DepthwiseConv2D / Dense
  layer (surgery.layer_macs) scaled by the nonzero fraction of that layer's input, i.e. the work
  left if a zero input is skipped; summed, and per layer.
- `masking_aware_robustness`: top-k and thresholds zero the gradient of every dropped unit, a
  classic source of gradient masking. PGD on the model as it is (plain) and PGD through its BPDA
  surrogate (layers.straight_through_copy: the same forward, identity backward through the
  sparsity layers; Athalye et al. 2018), both evaluated on the real model; the robust accuracy
  to report is the lower of the two.

Give these the plain (stripped) Keras model: layer_macs counts Dense / Conv2D layers, not the
ATMCWrapper around them.
"""
import numpy as np


def _keras():
    import keras
    return keras


def _probe(model, layers, which):
    keras = _keras()
    tensors = [getattr(layer, which) for layer in layers]
    return keras.Model(model.inputs, tensors)


def _batches(probe, x, batch_size):
    """Each probed tensor's NumPy values over x, batch by batch (a generator of lists)."""
    for i in range(0, len(x), batch_size):
        outs = probe(x[i:i + batch_size], training=False)
        yield [np.asarray(_keras().ops.convert_to_numpy(o)) for o in (outs if isinstance(outs, (list, tuple))
                                                                       else [outs])]


def activation_densities(model, x, batch_size=256):
    """{layer name: {"density": nonzero fraction, "unit_density": fraction of units with a nonzero
    entry, "target": the layer's target (WTA density, or None for a threshold)}} over x."""
    from atmc_tf.layers.activation_sparsity import WinnersTakeAll, sparsity_layers
    layers = sparsity_layers(model)
    if not layers:
        return {}
    nonzero, units, total, unit_total = [0] * len(layers), [0] * len(layers), [0] * len(layers), [0] * len(layers)
    for outs in _batches(_probe(model, layers, "output"), np.asarray(x), batch_size):
        for j, out in enumerate(outs):
            nonzero[j] += int(np.count_nonzero(out))
            total[j] += out.size
            alive = (out != 0).any(axis=tuple(range(1, out.ndim - 1))) if out.ndim > 2 else out != 0
            units[j] += int(alive.sum())
            unit_total[j] += alive.size
    return {layer.name: {"density": nonzero[j] / max(total[j], 1), "unit_density": units[j] / max(unit_total[j], 1),
                         "target": layer.target_density if isinstance(layer, WinnersTakeAll) else None}
            for j, layer in enumerate(layers)}


def effective_macs(model, x, batch_size=256):
    """(total, {layer name: {"macs": dense MACs per sample, "input_density": nonzero fraction of its
    input over x, "effective": macs * input_density}}) for the model's Conv2D / DepthwiseConv2D /
    Dense layers."""
    from atmc_tf.export.surgery import layer_macs
    dense = layer_macs(model)
    layers = [model.get_layer(name) for name in dense]
    nonzero, total = [0] * len(layers), [0] * len(layers)
    for ins in _batches(_probe(model, layers, "input"), np.asarray(x), batch_size):
        for j, t in enumerate(ins):
            nonzero[j] += int(np.count_nonzero(t))
            total[j] += t.size
    per_layer = {}
    for j, layer in enumerate(layers):
        density = nonzero[j] / max(total[j], 1)
        per_layer[layer.name] = {"macs": dense[layer.name], "input_density": density,
                                 "effective": dense[layer.name] * density}
    return float(sum(v["effective"] for v in per_layer.values())), per_layer


def masking_aware_robustness(model, x, y, attack, batch_size=256):
    """{"plain": accuracy under `attack` (a PGDConfig or any registered attack) crafted on the model,
    "bpda": under the same attack crafted on its straight-through surrogate, "robust": the lower,
    "worst_case": per example, correct under both}; every figure is the REAL model's accuracy."""
    from atmc_tf.attacks import adversarial_examples
    from atmc_tf.layers.activation_sparsity import straight_through_copy
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    surrogate = straight_through_copy(model)

    def correct(x_adv):
        logits = model.predict(x_adv, batch_size=batch_size, verbose=0)
        return np.argmax(logits, axis=-1) == y

    plain = correct(adversarial_examples(model, x, y, attack, batch_size))
    bpda = correct(adversarial_examples(surrogate, x, y, attack, batch_size))
    return {"plain": float(plain.mean()), "bpda": float(bpda.mean()),
            "robust": float(min(plain.mean(), bpda.mean())), "worst_case": float((plain & bpda).mean())}
