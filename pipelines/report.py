"""report.json, report.md and the PNG plots, all written atomically. No TensorFlow here
(the benchmark's report saves its figure with save_png too)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from atmc_tf.export import atomic  # noqa: E402
from atmc_tf.export.micro import failure_reason  # noqa: E402


def _projection(p):
    """A quantization stage's last step, W <- Q_b(W), as validation accuracies before -> after; '' without one."""
    if not p:
        return ""
    text = f"clean {100 * p['val_clean_before']:.1f}% -> {100 * p['val_clean_after']:.1f}%"
    if p.get("val_adv_before") is not None:
        text += f", adversarial {100 * p['val_adv_before']:.1f}% -> {100 * p['val_adv_after']:.1f}%"
    return text


def projection_warnings(stages):
    """The warning lines of the stages whose final projection onto b bits cost too much (stages.projection_cost)."""
    return [st["projection"]["line"] for st in stages or [] if (st.get("projection") or {}).get("line")]


def save_png(fig, file):
    """Save a matplotlib figure as a PNG, atomically, and close it."""
    try:
        with atomic.atomic_path(file, ".tmp.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_accuracy_vs_eps(curves, train_eps, file, title, points=None):
    """curves: {label: {eps: accuracy}}; points: {label: {eps: accuracy}} drawn as markers only."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        eps = sorted(curve)
        ax.plot(eps, [curve[e] for e in eps], marker="o", label=label)
    for label, pts in (points or {}).items():
        eps = sorted(pts)
        ax.scatter(eps, [pts[e] for e in eps], marker="*", s=140, zorder=5, color="tab:red", label=label)
    ax.axvline(train_eps, color="grey", linestyle=":", label=f"training eps = {train_eps:g}")
    ax.set_xlabel("L_inf PGD radius eps (inputs in [0, 1])")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, file)


def plot_domain_weights(stages, file, title):
    """stages: [{"stage", "weights": {threat: [per-epoch value]}}] (stages.domain_weights): each threat's weight
    at the end of every epoch, the stages one after another, a dotted line where a stage starts."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    offset, series = 0, {}
    for st in stages:
        epochs = 0
        for name, values in st["weights"].items():
            series.setdefault(name, ([], []))
            series[name][0].extend(range(offset + 1, offset + len(values) + 1))
            series[name][1].extend(values)
            epochs = max(epochs, len(values))
        ax.axvline(offset + 0.5, color="grey", linestyle=":")
        ax.text(offset + 0.6, 1.0, st["stage"], fontsize=8, va="top")
        offset += epochs
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=f"w_{name}")
    ax.set_xlabel("epoch (stages in order)")
    ax.set_ylabel("domain weight")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, file)


def plot_layers(tensors, file, title, level_limit=None):
    """layers_figure, saved as a PNG."""
    save_png(layers_figure(tensors, title, level_limit), file)


def layers_figure(tensors, title, level_limit=None):
    """Per compressed tensor: density (nnz / size) and number of distinct nonzero levels, each bar
    labelled with its value, the tensor names on both panels, the codebook limit's legend outside the bars
    (2^b - 1 nonzero values when zero counts among the 2^b levels, else 2^b)."""
    names = [t["name"].split("/")[0].replace("atmc_", "") + "/" + t["name"].split("/")[-1]
             for t in tensors]
    density = [t["nnz"] / max(t["numel"], 1) for t in tensors]
    levels = [t["levels"] for t in tensors]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 1.6 + 0.45 * len(tensors)), constrained_layout=True)
    a.barh(names, density, color="tab:blue")
    a.set_xlabel("density (nonzeros / weights)")
    a.set_xlim(0, 1)
    for i, t in enumerate(tensors):
        text = f"{t['nnz']}/{t['numel']}"
        if density[i] > 0.7:  # a long bar: the label goes inside its end, in white
            a.text(density[i] - 0.01, i, text, va="center", ha="right", fontsize=8, color="white")
        else:
            a.text(density[i] + 0.01, i, text, va="center", ha="left", fontsize=8)
    b.barh(names, levels, color="tab:orange")
    top = max(levels + [level_limit or 0, 1])
    b.set_xlim(0, top * 1.25)
    for i, v in enumerate(levels):
        b.text(v + top * 0.02, i, str(v) if v else "fp32", va="center", fontsize=8)
    if level_limit:
        b.axvline(level_limit, color="black", linestyle="--", label=f"limit: {level_limit} nonzero values")
        b.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    b.set_xlabel("distinct nonzero values per tensor (0 = fp32, not quantized)")
    b.set_ylabel("compressed tensor")
    a.set_ylabel("compressed tensor")
    fig.suptitle(title)
    return fig


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def model_name(config):
    """--model, or the file name of --model_file (the user's own model)."""
    return os.path.basename(config["model_file"]) if config.get("model_file") else config["model"]


def markdown(r):
    """A short human report from the report dict."""
    s, ph, mc, sz = r["summary"], r["phone"], r["micro"], r["size"]
    lines = [
        f"# ATMC report: {r['config']['method']} on {r['config']['dataset']} ({model_name(r['config'])})",
        "",
        f"Attack: L_inf PGD eps={r['config']['eps']}, {r['config']['eval_pgd_steps']} steps, "
        f"{r['config']['eval_restarts']} restart(s). Test images: {r['data']['test']}.",
        "",
        "| model | clean acc | robust acc |",
        "|---|---|---|",
        f"| dense adversarial (Keras) | {_pct(s['dense_clean'])} | {_pct(s['dense_robust'])} |",
        f"| compressed (Keras) | {_pct(s['keras_clean'])} | {_pct(s['keras_robust'])} |",
        f"| compressed int8 .tflite (LiteRT) | {_pct(ph['clean_acc'])} | {_pct(ph['robust_acc_transfer'])} |",
        "",
        "The .tflite robust accuracy is measured on PGD examples crafted on the Keras float model and "
        "then fed to the int8 model (a transfer attack): the int8 graph itself is not differentiated.",
        "",
        f"Top-1 agreement .tflite vs Keras: {_pct(ph['top1_agreement'])} (clean), "
        f"{_pct(ph['top1_agreement_adv'])} (adversarial). Exported kernels equal the trained ones: "
        f"{ph['kernels_exact']} ({ph['kernel_code_mismatches']} mismatching int8 codes).",
        "",
    ]
    lines += _robustness_lines(r.get("robustness"))
    lines += _per_class_lines((r.get("robustness") or {}).get("per_class"), r.get("class_feedback"))
    lines += _threat_lines(r.get("threat_models"))
    lines += _activation_lines(r.get("activation_sparsity"))
    collapse = r.get("collapse") or {}
    if collapse.get("problem"):
        lines += [f"**Warning: {collapse['problem']}.**", ""]
    elif collapse.get("cut") or collapse.get("empty_channels"):
        emptied = [f"{n} ({e} of {t} channels empty)" for n, (e, t) in collapse.get("empty_channels", {}).items()]
        lines += ["Paths: the budget emptied " + ", ".join(collapse.get("cut", []) + emptied) + "; the input still "
                  "reaches the output.", ""]
    lines += [
        "## Size",
        "",
        f"Nonzeros {sz['nnz']} of {sz['dense_bits'] // 32} weights.",
        "",
        *_size_table(sz, r.get("device_bytes"), r.get("phone")),
        *_structure_lines(r.get("structure")),
        *_clean_target_lines(r.get("clean_target")),
        "## Microcontroller (TFLite Micro)",
        "",
        f"- passes: {mc['ok']}; ops: {', '.join(mc['ops'])}; unsupported: {mc['unsupported_ops'] or 'none'}",
        *([f"- **failed: {failure_reason(mc)}**"] if not mc["ok"] else []),
        f"- smallest working arena: {mc['arena_bytes']} bytes; max |TFLM - LiteRT| = "
        f"{mc['max_abs_diff_vs_litert']} int8 step(s) over {mc['samples_checked']} images",
        *_micro_compressed_lines(r.get("micro_compressed")),
        "",
        "## Stages",
        "",
        "| stage | epochs | seconds | final projection onto b bits (validation accuracy before -> after) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {st['stage']} | {st['epochs']} | {st['seconds']:.1f} | {_projection(st.get('projection'))} |"
              for st in r["stages"]]
    lines += [f"\n**Warning: {line}.**" for line in projection_warnings(r["stages"])]
    lines += _overfitting_lines(r.get("stage_results") or [])
    lines += ["", "Plots: " + ", ".join(f"[{os.path.basename(p)}]({os.path.basename(p)})"
                                       for p in r["files"]["plots"]), ""]
    return "\n".join(lines)


def _activation_lines(act):
    """--activation_sparsity: densities per layer (clean / PGD), effective MACs, plain vs BPDA PGD."""
    if not act:
        return []
    m, p = act["macs"], act["pgd"]
    wta = act.get("mode", "wta") == "wta"
    lines = [f"## Activation sparsity ({'winners-take-all' if wta else 'activation thresholds'})", "",
             (f"Target density {act['target_density']:g}: per sample that fraction of each layer's units (neurons, "
              "or whole channels of a conv map) kept, in training and in the .tflite." if wta else
              f"Target density {act['target_density']:g}: each threshold calibrated during training to keep about "
              "that fraction of its inputs (training batches), fixed in the .tflite.") + " Density: nonzero fraction of "
             "the layer's output; units: fraction of units with a nonzero value (test set" + ("; a winner that is "
             "all zero after its ReLU counts as not alive, so at most the target)." if wta else ")."), "",
             "| layer | target | density clean | density PGD | units clean | units PGD |", "|---|---|---|---|---|---|"]
    for name, v in act["layers"].items():
        lines.append(f"| {name} | {act['target_density'] if v['target'] is None else v['target']:g} | {_pct(v['clean']['density'])} | {_pct(v['adversarial']['density'])}"
                     f" | {_pct(v['clean']['unit_density'])} | {_pct(v['adversarial']['unit_density'])} |")
    lines += ["", f"Effective MACs per sample (each Conv2D / Dense layer's MACs times its input's density): "
              f"{m['effective_clean']:,.0f} clean, {m['effective_adversarial']:,.0f} on PGD inputs, of "
              f"{m['dense']:,} dense ({m['effective_clean'] / max(m['dense'], 1):.2f}x / "
              f"{m['effective_adversarial'] / max(m['dense'], 1):.2f}x).", "",
              f"Gradient masking: PGD on the model {_pct(p['plain'])}, PGD through the straight-through (BPDA) "
              f"surrogate of the sparsity layers {_pct(p['bpda'])}; robust accuracy (the lower) "
              f"{_pct(p['robust'])}, per-example worst case of both {_pct(p['worst_case'])}.", ""]
    lat = act.get("litert_latency_ms")
    if lat:
        lines += [f"LiteRT latency (int8, batch 1, 1 thread, median of 300, same run): {lat['with']:.3f} ms with the "
                  f"sparsity layers, {lat['without']:.3f} ms for the same weights without them. LiteRT skips no "
                  "zero: the effective MACs are what a zero-skipping kernel could save, not what this CPU saves.", ""]
    return lines


def _overfitting_lines(results):
    """One line per stage whose fast training attack overfit catastrophically (stages.overfitting_guard)."""
    events = [(st["stage"], st["catastrophic_overfitting"]) for st in results if st.get("catastrophic_overfitting")]
    attacks = sorted({st["train_attack"] for st in results if st.get("train_attack")})
    head = [f"", f"Training attack: {', '.join(attacks)}."] if attacks and attacks != ["pgd"] else []
    if any(st.get("compute_dtype") == "bfloat16" for st in results):
        head += ["", "Training arithmetic: bfloat16 (Keras' mixed_bfloat16 policy, float32 weights and logits); "
                 "evaluation, attacks and export ran the float32 model."]
    return head + [f"- **stage {name}: {e['line']}**" for name, e in events]


def _phone_file(phone):
    """Which file the phone stores, in words (a report from before the sparse file has only "int4")."""
    phone = phone or {}
    kind = phone.get("file") or ("int4" if (phone.get("int4") or {}).get("used") else "int8")
    if kind == "int4":
        return "model_int4.tflite: packed INT4 kernels"
    if kind == "sparse":
        expanded = (phone.get("sparse") or {}).get("densified_bytes") or 0
        return ("model_sparse.tflite: sparse kernels (TFLite sparse tensors"
                + (f"; DENSIFY expands {expanded:,} bytes of them in RAM at load)" if expanded else ")"))
    return "model_int8.tflite as stored"


def _size_table(sz, dev, phone=None):
    """The paper's accounting, the index overhead, and what each device really stores (flash)."""
    dense_bytes = sz["dense_bits"] / 8
    rows = [("paper-style (nonzeros x b bits + codebooks; the paper's ratio)", sz["paper_bits"] / 8),
            ("paper-style + index overhead + per-channel scales", sz["honest_bits"] / 8)]
    if dev:
        phone_file = _phone_file(phone)
        rows += [(f"**phone flash** (LiteRT: {phone_file})", dev["litert"]),
                 ("**microcontroller flash** (TFLite Micro: model_int8_micro.tflite, LUT / PRUNE-compressed kernels)",
                  dev["tflm"]),
                 ("microcontroller file before compression (model_int8_batch1.tflite)", dev["tflm_uncompressed"]),
                 ("download (the phone file gzipped; not what a device holds)", dev["gzip"])]
    lines = ["| what | bytes | / dense fp32 weights |", "|---|---|---|"]
    lines += [f"| {name} | {value:,.0f} | {value / dense_bytes:.4f} |" for name, value in rows]
    return lines + ["", f"Dense fp32 weights of the compressed layers: {dense_bytes:,.0f} bytes. Device bytes are "
                        "whole files (graph, biases, activations' quantization and all), the ratios only a scale.", ""]


def _robustness_lines(rb):
    """The worst-case table (Keras white box; the .tflite attacked directly) and the masking checks."""
    if not rb:
        return []
    k, t = rb["keras"], rb["tflite"]
    pa = k["per_attack"]
    lines = [
        f"## Robustness at eps {rb['eps']:g} (worst case per example, RobustBench's rule)",
        "",
        "| model | clean | PGD | APGD-CE | APGD-DLR | .tflite transfer | Square on .tflite | worst case |",
        "|---|---|---|---|---|---|---|---|",
        f"| compressed (Keras, white box; {k['steps']} steps) | {_pct(k['clean'])} | {_pct(pa['pgd'])} | "
        f"{_pct(pa['apgd-ce'])} | {_pct(pa['apgd-dlr'])} | | | **{_pct(k['worst_case'])}** |",
        f"| compressed int8 .tflite | {_pct(t['clean'])} | | | | {_pct(t['transfer'])} | {_pct(t['square'])} "
        f"({t['square_queries_mean']:.0f} queries mean, budget {t['square_query_budget']}) | **{_pct(t['worst_case'])}** |",
        "",
        "Gradient-masking checks: " + "; ".join(
            f"{c['rule']}: {'yes' if c['ok'] else '**NO**'}" for c in rb["masking_checks"].values()) + ".",
        "",
    ]
    return lines


def _per_class_lines(pc, feedback=None):
    """Per-class accuracy of the final model (Keras and the .tflite) and the worst class, always; with
    --class_feedback, the class weights each feedback stage ended with and its worst class per epoch."""
    if not pc:
        return []
    cols = [("keras_clean", "Keras clean"), ("keras_robust", "Keras robust (worst case)"),
            ("tflite_clean", ".tflite clean"), ("tflite_transfer", ".tflite PGD transfer"),
            ("tflite_robust", ".tflite robust (worst case)")]
    cols = [(k, n) for k, n in cols if k in pc]
    final_weights = feedback["stages"][-1]["final_weights"] if feedback and feedback.get("stages") else None
    head = ["class", "test images"] + [n for _, n in cols] + (["class weight"] if final_weights else [])
    lines = ["## Per class (test split)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in pc["classes"]:
        row = [str(c), str(pc["count"][c])] + [_pct(pc[k][c]) for k, _ in cols]
        if final_weights:
            row.append(f"{final_weights[c]:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    worst = pc.get("worst_class", {})
    lines += [""] + [f"- worst class on {'the Keras model' if m == 'keras' else 'the int8 .tflite'}: **{w['class']}** "
                     f"({_pct(w['robust_acc'])} robust, worst case)" for m, w in worst.items()]
    if feedback:
        lines.append(f"- class feedback: {feedback['mode']}, rate {feedback['rate']:g}; weights after the last "
                     "epoch of each stage, and the validation split's worst class per epoch (robust accuracy under "
                     "the training PGD):")
        for st in feedback["stages"]:
            worst_epochs = ", ".join(f"{c} ({_pct(a)})" for c, a in zip(st["worst_class"], st["worst_robust_acc"]))
            lines.append(f"  - {st['stage']}: weights [{', '.join(f'{w:.2f}' for w in st['final_weights'])}]; "
                         f"worst class per epoch: {worst_epochs}")
    return lines + [""]


def _threat_lines(tm):
    """--threats: accuracy per threat model and under their union, Keras and .tflite, and the domain weights."""
    if not tm:
        return []
    names = tm["names"]  # the --threats order (report.json's keys are sorted)
    spec = ", ".join(f"{n} eps {tm['threats'][n]['eps']:g}" for n in names)
    first = tm["threats"][names[0]]
    lines = [
        f"## Threat models (--threats, trained with --domain_weighting={tm['domain_weighting']})",
        "",
        f"PGD in each ball ({spec}; {first['steps']} steps, {first['restarts']} restart(s)); union: correct clean "
        "and under every attack. The .tflite row runs the examples crafted on Keras (transfer).",
        "",
        "| model | clean | " + " | ".join(names) + " | union |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for label, key in (("compressed (Keras, white box)", "keras"), ("compressed int8 .tflite (transfer)", "tflite")):
        acc = tm[key]
        lines.append(f"| {label} | {_pct(acc['clean'])} | " + " | ".join(_pct(acc["per_attack"][n]) for n in names)
                     + f" | **{_pct(acc['worst_case'])}** |")
    lines.append("")
    if tm.get("domain_weights"):
        lines += ["Domain weights at the end of each stage (per-epoch values in report.json and domain_weights.png):",
                  "", "| stage | " + " | ".join(f"w_{n}" for n in names) + " |", "|---|" + "---|" * len(names)]
        for st in tm["domain_weights"]:
            lines.append(f"| {st['stage']} | " + " | ".join(
                f"{st['weights'][n][-1]:.3f}" if st["weights"].get(n) else "n/a" for n in names) + " |")
        lines.append("")
    return lines


def _micro_compressed_lines(m):
    """The flash file with TFLM's compressed kernels (LUT or PRUNE): bytes, arena, equality, encoding per kernel."""
    if not m:
        return []
    plan = m["plan"]
    kernels = "; ".join(f"{t['name'].split('/')[-2] if t['name'].count('/') > 1 else t['name']}: {t['encoding']}"
                        + (f" {t['index_bits']}-bit" if t.get("index_bits") else "")
                        for t in plan.get("tensors", []))
    growth = m.get("arena_growth_bytes")
    return [
        f"- flash (model_int8_micro.tflite, in model_data.cc): {m['flash_bytes']} bytes, uncompressed "
        f"{m['uncompressed_bytes']} ({m['flash_bytes'] / m['uncompressed_bytes']:.3f}x); outputs bit-identical to "
        f"the uncompressed model on TFLM: {m['ok']} ({m['samples_checked']} images)"
        + (f"; arena {m['arena_bytes_original']} -> {m['arena_bytes_compressed']} bytes (+{growth}: DECODE "
           "writes the decoded kernels there)" if growth is not None else ""),
        f"- kernels: {kernels}" + (f"; tensor names stripped ({plan['names_stripped_bytes']} bytes)"
                                   if plan.get("names_stripped_bytes") else ""),
    ]


def _clean_target_lines(ct):
    """--clean_target: the target, whether the final model meets it on the validation split, and the
    multiplier lambda and the constraint (moving average of the clean batches' value) per epoch."""
    if not ct:
        return []
    unit = (lambda v: f"{100 * v:.2f}% error") if ct["form"] == "error" else (lambda v: f"{v:.4f} nats")
    source = (f"the dense model's {unit(ct['dense_val'])} + {ct['drop']:g}" if ct["source"] == "dense"
              else "absolute")
    lines = [
        "## Clean target (GECO)",
        "",
        f"- target ({ct['flag']}; {source}): clean {ct['form']} <= {unit(ct['kappa'])}",
        f"- final model on the validation split: {unit(ct['final_val'])}: "
        + ("**met**" if ct["met"] else "**not met**") + f" (dense model: {unit(ct['dense_val'])})",
        "",
        "| stage | epoch | lambda | constraint (moving average) |",
        "|---|---|---|---|",
    ]
    for st in ct["stages"]:
        lines += [f"| {st['stage']} | {i + 1} | {lam:.4g} | {c:.4f} |"
                  for i, (lam, c) in enumerate(zip(st["lambda"], st["constraint"]))]
    return lines + [""]


def _structure_lines(st):
    """--structure=channel: what surgery cut, and dense vs compressed on the device, side by side."""
    if not st:
        return []
    cut = st["surgery"]
    kept = ", ".join(f"{n} {v['kept']}/{v['total']}" for n, v in cut["layers"].items())
    return [
        "## Channels (--structure=channel)",
        "",
        f"- kept output channels per layer: {kept}",
        *([f"- budget --{b['flag']}={b['ratio']:g} of the dense {b['unit']}: achieved {b['achieved']:.3f}x"]
          if (b := st.get("budget")) else []),
        f"- parameters {cut['params_before']} -> {cut['params_after']} "
        f"({cut['params_after'] / cut['params_before']:.3f}x); MACs {cut['macs_before']} -> {cut['macs_after']} "
        f"({cut['macs_after'] / max(cut['macs_before'], 1):.3f}x)",
        f"- batch-1 int8 .tflite: {st['tflite_b1_bytes']['dense']} -> {st['tflite_b1_bytes']['compressed']} bytes "
        f"({st['bytes_ratio']:.3f}x)" + (f"; without tensor names {sb['dense']} -> {sb['compressed']} bytes "
                                         f"({sb['compressed'] / sb['dense']:.3f}x)"
                                         if (sb := st.get("tflite_b1_bytes_stripped")) else "")
        + f"; TFLM arena {st['arena_bytes']['dense']} -> {st['arena_bytes']['compressed']} bytes",
        f"- LiteRT latency {1000 * st['litert_latency_ms']['dense']:.1f} -> "
        f"{1000 * st['litert_latency_ms']['compressed']:.1f} microseconds "
        f"({st['latency_ratio']:.2f}x; {st['latency_note']})",
        "",
    ]


def write_report(workdir, report):
    atomic.write_json_atomic(os.path.join(workdir, "report.json"), report)
    atomic.write_text_atomic(os.path.join(workdir, "report.md"), markdown(report))
