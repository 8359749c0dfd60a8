"""The int8 .tflite form of wide WinnersTakeAll layers: O(n) per sample instead of O(n^2).

In Keras a WinnersTakeAll ranks its n units by an n x n pairwise comparison (exactly k kept, ties to the
lower index). Converted as it is, the .tflite stores the comparison's tie-break matrix (an n x n BOOL
constant: 250,000 bytes for n = 500), computes an (n, n) float intermediate per sample, and counts the ranks
with an int8 SUM that rounds them for n > 127 (exact-k is lost anyway). TFLite Micro has no TOPK_V2.

`to_int8_tflite` therefore converts each WinnersTakeAll with more than PAIRWISE_MAX_UNITS units in its
deployed form, `atmc_tf.layers.activation_sparsity.grid_winners_mask`: keep every unit whose int8 score is
>= the k-th largest int8 score of its row, found by a radix-16 search over a 256-entry table of the values the
scores' int8 tensor can hold. Narrower layers keep the pairwise form (exact k, a small constant).

What differs from Keras: int8 scores tie more often than float ones; every unit tied with the k-th largest
score is kept (>= k units; the Keras model keeps exactly k by index).

Alignment. The comparisons are exact only when the table carries the scores' scale and zero point exactly
(GREATER_EQUAL between int8 tensors of different scales rescales both in fixed point). The converter picks
the scores' quantization from its own calibration, so the export converts twice: first with each table
spanning the range the Keras model's layer input takes on the calibration samples, then with each table
rebuilt from the scale and zero point the first file gave its scores, and checks every table in the second
file, and that every counting FULLY_CONNECTED has its clip fused (else the count is quantized at the range of
n and the sign of count - k is lost for n > 255). A layer that fails is converted in the pairwise form (a
third conversion, a warning).
"""
import contextlib
import logging

import numpy as np

from atmc_tf.export.tflite import _op_name, is_winners_count, parse_check

TABLE_SIZE = 256
# Ops between a table's GATHER and the comparison it feeds, or between the scores and that comparison.
_PASS_THROUGH = ("STRIDED_SLICE", "RESHAPE", "EXPAND_DIMS")


def wide_winners(model):
    """The model's WinnersTakeAll layers that convert in the deployed (threshold search) form."""
    from atmc_tf.layers.activation_sparsity import PAIRWISE_MAX_UNITS, WinnersTakeAll
    return [layer for layer in model.layers if isinstance(layer, WinnersTakeAll) and layer.units > PAIRWISE_MAX_UNITS]


def _nudge_scale(lo, hi):
    """The (scale, zero point) TFLite's converter gives a tensor whose float range is [lo, hi] (min/max
    quantization to int8, 0 always in range)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    zp = int(np.clip(np.round(-128.0 - lo / scale), -128, 127)) if scale > 0 else 0
    return np.float32(scale), zp


def table_for_range(lo, hi):
    """(256,) float32: the int8 grid of a tensor calibrated to [lo, hi] (0 included)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        hi = lo + 1e-6
    return np.linspace(lo, hi, TABLE_SIZE).astype(np.float32)


def table_for_quant(scale, zero_point):
    """(256,) float32: the 256 values scale * (q - zero_point), q = -128..127, with the end points nudged by a
    few float32 steps where needed so that min/max quantization of the table gives back exactly `scale` and
    `zero_point` (the first and last entries decide the table's own quantization)."""
    scale, zp = np.float32(scale), int(zero_point)
    q = np.arange(-128, 128, dtype=np.float64)
    table = (np.float64(scale) * (q - zp)).astype(np.float32)
    lo0, hi0 = table[0], table[-1]
    for dlo in (0, 1, -1, 2, -2):
        for dhi in (0, 1, -1, 2, -2, 3, -3):
            lo = np.float32(lo0) if dlo == 0 or lo0 == 0 else _ulps(lo0, dlo)
            hi = np.float32(hi0) if dhi == 0 or hi0 == 0 else _ulps(hi0, dhi)
            if _nudge_scale(lo, hi) == (scale, zp):
                table[0], table[-1] = lo, hi
                return table
    return table  # no nudge reproduces it: the check after conversion reports the layer


def _ulps(v, n):
    v = np.float32(v)
    for _ in range(abs(n)):
        v = np.nextafter(v, np.float32(np.inf if n > 0 else -np.inf), dtype=np.float32)
    return v


def _quant(tensor):
    q = tensor.quantization
    if q is None or q.scale is None or not len(q.scale):
        return None
    zp = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
    return np.float32(q.scale[0]), zp


def grid_tables(tflite_bytes):
    """Each deployed WinnersTakeAll in the file, in operator order: {"scores": (scale, zp) of the scores the
    tables are compared with, "tables": [(scale, zp) of each GATHER table], "aligned": all equal}. A group is
    the GATHERs of a (256,) constant table whose thresholds reach a GREATER_EQUAL against scores derived from
    the same tensor."""
    model = parse_check(bytes(tflite_bytes))
    graph = model.subgraphs[0]
    producer = {int(o): op for op in graph.operators for o in op.outputs}
    readers = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(op)

    def is_table(i):
        t = graph.tensors[i]
        buffer = model.buffers[t.buffer]
        has_data = (buffer.data is not None and len(buffer.data)) or buffer.offset > 1
        return has_data and list(t.shape) == [TABLE_SIZE]

    def root(i):  # the tensor the scores were sliced / reshaped from
        while i in producer and _op_name(model, producer[i]) in _PASS_THROUGH:
            i = int(producer[i].inputs[0])
        return i

    groups = {}
    for op in graph.operators:
        if _op_name(model, op) != "GATHER" or not is_table(int(op.inputs[0])):
            continue
        frontier, compare = [int(op.outputs[0])], None
        while frontier and compare is None:
            nxt = []
            for i in frontier:
                for r in readers.get(i, []):
                    name = _op_name(model, r)
                    if name == "GREATER_EQUAL" and int(r.inputs[1]) == i:
                        compare = r
                    elif name in _PASS_THROUGH:
                        nxt.append(int(r.outputs[0]))
            frontier = nxt
        if compare is None:
            continue
        scores = int(compare.inputs[0])
        g = groups.setdefault(root(scores), {"scores": _quant(graph.tensors[scores]), "tables": []})
        g["tables"].append(_quant(graph.tensors[int(op.inputs[0])]))
    out = list(groups.values())
    for g in out:
        g["aligned"] = all(t == g["scores"] for t in g["tables"])
    return out


@contextlib.contextmanager
def _deployed(model, tables):
    """Every WinnersTakeAll of the model in its export form while converting: the threshold search where
    `tables` has its table, else the pairwise form (never the top_k form Keras computes with)."""
    from atmc_tf.layers.activation_sparsity import PAIRWISE, WinnersTakeAll, winners_count

    def walk(m):  # nested models' layers too: those convert pairwise whatever their width
        for layer in getattr(m, "layers", []):
            yield layer
            yield from walk(layer)
    layers = [layer for layer in walk(model) if isinstance(layer, WinnersTakeAll)]
    try:
        for layer in layers:
            layer._deployed = PAIRWISE
            if layer.name in tables:
                density = float(np.asarray(layer.density))
                layer._deployed = (winners_count(density, layer.units), tables[layer.name])
        yield
    finally:
        for layer in layers:
            layer._deployed = None


def _input_ranges(model, layers, calibration):
    """{layer name: (lo, hi)} of each layer's input over the calibration samples."""
    import keras
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    outs = probe.predict(calibration, batch_size=64, verbose=0)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return {layer.name: (float(np.min(o)), float(np.max(o))) for layer, o in zip(layers, outs)}


def exact_counts(tflite_bytes):
    """The number of counting FULLY_CONNECTED ops whose clip to [-1, 1] is fused (tflite.is_winners_count): only
    then is the sign of count - k exact in int8 (unfused, the count itself is quantized at the range of n)."""
    data = bytes(tflite_bytes)
    model = parse_check(data)
    return sum(is_winners_count(model, graph, op, data) for graph in model.subgraphs for op in graph.operators)


def _span(quant):
    """The float range [lo, hi] of an int8 tensor with this (scale, zero point)."""
    scale, zp = quant
    return float(scale) * (-128 - zp), float(scale) * (127 - zp)


def _match(groups, layers, tables):
    """{group index: layer name}: each table group of a file to the layer whose table (the one converted)
    spans the closest range; a wrong match cannot pass the alignment check."""
    out = {}
    for gi, g in enumerate(groups):
        free = [layer.name for layer in layers if layer.name not in out.values()]
        if not free:
            break
        lo, hi = _span(g["tables"][0])
        out[gi] = min(free, key=lambda n: abs(float(tables[n][0]) - lo) + abs(float(tables[n][-1]) - hi))
    return out


def convert_with_deployed_winners(model, calibration, convert):
    """convert() -> .tflite bytes, run with the model's wide WinnersTakeAll layers in their deployed form and
    each threshold table aligned with its scores (see the module). Returns (bytes, forms): forms is
    {layer name: "deployed" | "pairwise"} for the wide layers ({} without any; "pairwise" where the table
    could not be aligned, with a warning)."""
    from atmc_tf.layers.activation_sparsity import LEVELS
    layers = wide_winners(model)
    if not layers:
        with _deployed(model, {}):
            return convert(), {}
    tables = {name: table_for_range(*r) for name, r in _input_ranges(model, layers, calibration).items()}
    with _deployed(model, tables):
        tflite = convert()
    groups = grid_tables(tflite)
    if len(groups) == len(layers) and not all(g["aligned"] for g in groups):
        for gi, name in _match(groups, layers, tables).items():
            tables[name] = table_for_quant(*groups[gi]["scores"])
        with _deployed(model, tables):
            tflite = convert()
        groups = grid_tables(tflite)
    if len(groups) != len(layers) or exact_counts(tflite) != LEVELS * len(layers):
        bad = [layer.name for layer in layers]
    else:
        bad = [name for gi, name in _match(groups, layers, tables).items() if not groups[gi]["aligned"]]
    if not bad:
        return tflite, {layer.name: "deployed" for layer in layers}
    logging.warning("WinnersTakeAll layer(s) %s: the O(n) form did not convert exactly (a threshold table off the "
                    "scores' int8 grid, or a counting op without its fused clip); exported in the pairwise form "
                    "(exact, O(n^2) per sample)", ", ".join(bad))
    for name in bad:
        tables.pop(name)
    with _deployed(model, tables):
        tflite = convert()
    return tflite, {layer.name: "pairwise" if layer.name in bad else "deployed" for layer in layers}
