"""What compression left of a wrapped model's paths: layers emptied by the budget, and whether the
input still reaches the output. A global budget can empty a small layer (a depthwise kernel has a
handful of weights per channel); a layer whose kernel is all zero passes only its bias, a constant,
so every path through it is cut, and a model with no path left predicts one class for every input.
"""
import numpy as np
from keras import ops

from atmc_tf.layers import atmc_wrappers, kernel_channel_axes


def inbound_graph(model):
    """{layer name: names of the layers feeding it}, from the model's public config."""
    config = model.get_config()
    if "layers" not in config or not any("inbound_nodes" in l for l in config["layers"]):  # Sequential
        names = ["<input>"] + [l.name for l in model.layers]
        return {n: [names[i - 1]] for i, n in enumerate(names) if i}, names[:1], names[-1:]

    def sources(obj, out):
        if isinstance(obj, dict):
            history = obj.get("config", {}).get("keras_history") if obj.get("class_name") == "__keras_tensor__" \
                else None
            if history:
                out.append(history[0])
            else:
                for v in obj.values():
                    sources(v, out)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                sources(v, out)
        return out

    graph = {l["name"]: sources(l.get("inbound_nodes", []), []) for l in config["layers"]}
    firsts = [x[0] for x in config["input_layers"]] if isinstance(config["input_layers"][0], list) \
        else [config["input_layers"][0]]
    lasts = [x[0] for x in config["output_layers"]] if isinstance(config["output_layers"][0], list) \
        else [config["output_layers"][0]]
    return graph, firsts, lasts


def path_report(net):
    """{"cut": wrapped layers whose kernel is all zero, "empty_channels": {layer: (empty, total)} for
    layers with some all-zero output channels, "reaches_output": whether any input-to-output path
    avoids every cut layer}."""
    cut, empty = [], {}
    for w in atmc_wrappers(net):
        kernel = np.asarray(ops.convert_to_numpy(w.effective_kernel()))
        axes = tuple(a % kernel.ndim for a in kernel_channel_axes(w.layer))
        reduce = tuple(a for a in range(kernel.ndim) if a not in axes)
        alive = np.any(kernel != 0, axis=reduce)
        if not alive.any():
            cut.append(w.name)
        elif not alive.all():
            empty[w.name] = (int(alive.size - alive.sum()), int(alive.size))
    graph, inputs, outputs = inbound_graph(net)
    reached = set(inputs)
    changed = True
    while changed:  # a fixed point over the DAG: a layer is reached if one of its inputs is and it is not cut
        changed = False
        for name, srcs in graph.items():
            if name not in reached and name not in cut and any(s in reached for s in srcs):
                reached.add(name)
                changed = True
    return {"cut": cut, "empty_channels": empty, "reaches_output": any(o in reached for o in outputs)}


def collapse_problem(report, dense_acc, compressed_acc, num_classes, margin=0.1):
    """One line saying why a compressed model is destroyed, or None.

    Destroyed: no path from the input reaches the output (path_report), or its accuracy is at
    chance (within `margin` of 1/num_classes) while the dense model's was clearly above it.
    The line names the emptied layers and those with the most empty channels.
    """
    chance = 1.0 / num_classes
    reasons = []
    if not report["reaches_output"]:
        reasons.append("no path from the input reaches the output")
    if dense_acc > chance + 2 * margin and compressed_acc <= chance + margin:
        reasons.append(f"its accuracy {100 * compressed_acc:.1f}% is at chance ({100 * chance:.0f}%) while the dense "
                       f"model's was {100 * dense_acc:.1f}%")
    if not reasons:
        return None
    where = []
    if report["cut"]:
        where.append("layers left with no weight: " + ", ".join(report["cut"]))
    worst = sorted(report["empty_channels"].items(), key=lambda kv: -kv[1][0] / kv[1][1])[:3]
    if worst:
        where.append("most emptied: " + ", ".join(f"{n} ({e} of {t} channels empty)" for n, (e, t) in worst))
    return "the compressed model collapsed: " + "; ".join(reasons) + (" (" + "; ".join(where) + ")" if where else "")


class LayerCutWarning(UserWarning):
    """ATMCTrainer.fit left a layer with no weight at all: its kernel is all zero, so it passes only its bias."""


def cut_layers_line(report):
    """One line naming the layers a budget left with no weight (path_report), with the fix; None if none."""
    if not report["cut"]:
        return None
    return (f"the sparsity budget left {len(report['cut'])} layer(s) with no weight ({', '.join(report['cut'])}): "
            + ("no path from the input reaches the output, so the model predicts one class for every input"
               if not report["reaches_output"] else "every path through them is cut")
            + "; raise the budget (nnz_budget) or score it layer-adaptively (l0_scoring='lamp')")
