"""The benchmark's results.json -> docs/BENCHMARKS.md + docs/benchmark_tradeoff.png, and its targets.

No TensorFlow here: `python -m benchmarks.benchmark --render_only` re-renders the
documents from <workdir>/results.json in a second. Every number in the
documents comes from results.json; a target whose cells are missing is
NOT RUN YET, never estimated.
"""
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from atmc_tf.export import atomic  # noqa: E402
from pipelines.report import save_png  # noqa: E402

METHODS = ("da", "nap", "ap", "al0", "atmc32", "atmc8", "atmc4", "atmc2", "al0_lamp", "atmc8_lamp")
COMPRESSED = METHODS[1:]
# The paper's methods: every run's T5 covers them; a method added since counts only where the run chose it.
PAPER_COMPRESSED = ("nap", "ap", "al0", "atmc32", "atmc8", "atmc4")
QUANTIZED_ATMC = ("atmc8", "atmc4")  # T3, the paper's claim
SHIPPED_ATMC = ("atmc8", "atmc4", "atmc2")  # compared with AP at equal gzipped size
# Issue 14: the same cell with the one global L0 budget scored by LAMP instead of |w| (--l0_scoring).
LAMP_PAIRS = (("al0", "al0_lamp"), ("atmc8", "atmc8_lamp"))
LABELS = {"da": "DA (dense)", "nap": "NAP", "ap": "AP", "al0": "AL0", "atmc32": "ATMC-32",
          "atmc8": "ATMC-8", "atmc4": "ATMC-4", "atmc2": "ATMC-2", "al0_lamp": "AL0 (LAMP)",
          "atmc8_lamp": "ATMC-8 (LAMP)", "tfmot": "TFMOT prune+QAT",
          "da_more": "DA + compression epochs (dense)"}
BITS = {"atmc8": 8, "atmc4": 4, "atmc2": 2, "atmc8_lamp": 8}
COLORS = {"da": "black", "nap": "tab:gray", "ap": "tab:blue", "al0": "tab:green", "atmc32": "tab:purple",
          "atmc8": "tab:red", "atmc4": "tab:orange", "atmc2": "tab:pink", "al0_lamp": "tab:green",
          "atmc8_lamp": "tab:red", "tfmot": "tab:brown"}
HEADLINE_RATIO = 0.01
ISSUE_RATIOS = (0.003, 0.01, 0.03, 0.1)
# Device bytes (issue 17): LiteRT stores the raw int8 .tflite (tflite_bytes); a TFLite Micro device
# stores the batch-1 int8 model with its few-valued kernels as LUT indices, sparse ones PRUNE (compress_for_micro).
DEVICE_FIELDS = ("tflm_bytes", "tflm_b1_bytes", "tflm_encoding")
# What the results JSON must hold for every finished cell (tests/test_benchmark.py checks them).
CELL_FIELDS = ("method", "ratio", "status", "clean_acc", "robust_acc", "tflite_clean_acc", "tflite_robust_acc",
               "paper_bits", "paper_ratio", "honest_bits", "nnz", "tflite_bytes", "tflite_gzip_bytes",
               "train_seconds", "eval_seconds", "lr") + DEVICE_FIELDS
TFMOT_FIELDS = CELL_FIELDS + ("sparsity", "target_gzip_bytes", "gzip_mismatch")
MET, NOT_MET, NOT_RUN = "MET", "NOT MET", "NOT RUN YET"
# The copy of the results that every rendering writes beside the page (committed with it), and the
# folder of the docs pages the page links to.
RESULTS_COPY = "benchmark_results.json"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def accuracy_fields(ev):
    """A cell's accuracy fields from an atmc_tf.export.DeploymentEval: Keras (the float or QAT model)
    and .tflite, clean and robust."""
    return {"clean_acc": ev.keras_clean_acc, "robust_acc": ev.keras_robust_acc,
            "tflite_clean_acc": ev.tflite_clean_acc, "tflite_robust_acc": ev.tflite_robust_acc}


def _same_model(a, b):
    keys = ("clean_acc", "robust_acc", "tflite_clean_acc", "tflite_robust_acc", "tflite_bytes", "tflite_gzip_bytes")
    return bool(a and b and a.get("status") == b.get("status") == "done" and all(a[k] == b[k] for k in keys))


def _optimizer(s):
    """The optimizer of every atmc_tf stage, from the run's settings (runs before --optimizer: Adam)."""
    name = s.get("optimizer", "adam")
    wd = s.get("weight_decay", 0.0) or 0.0
    text = f"SGD momentum {s.get('momentum', 0.9)}" if name == "sgd" else "Adam"
    return text + (f", decoupled weight decay {wd:g}" if wd else "")

def cell_key(method, ratio=None):
    return method if ratio is None else f"{method}@{float(ratio):g}"


def _ratios(results):
    """The size ratios the run was set up with (the issue's four for results without settings)."""
    return [float(r) for r in results.get("meta", {}).get("settings", {}).get("ratios", ISSUE_RATIOS)]


def _methods(results):
    """The methods the run was set up with (all of METHODS for results without settings)."""
    return list(results.get("meta", {}).get("settings", {}).get("methods", METHODS))


def _pgd_trained(results):
    """The benchmark's plain cells (not the variants of issues 20-22: other attacks, objectives, activations)."""
    return [c for c in results.get("cells", {}).values() if not c.get("variant")]


def _variants(results, fields, prefix=""):
    """The variant names of the cells (keys starting with `prefix`) that set any of `fields` (e.g. train_attack)."""
    return list(dict.fromkeys(c["variant"] for k, c in results.get("cells", {}).items()
                              if c.get("variant") and k.startswith(prefix)
                              and any(c.get(f) not in (None, "off") for f in fields)))


def _done(results, key):
    c = results.get("cells", {}).get(key)
    return c if c and c.get("status") == "done" else None


def _pct(v, digits=1, sign=""):
    """v in % with `digits` decimals ('-' for None); + 0.0 makes a value that rounds to zero print 0.0, not -0.0."""
    return "-" if v is None else f"{round(100 * v, digits) + 0.0:{sign}.{digits}f}"


def _pts(v):
    return f"{_pct(v, sign='+')} pts"


# --- targets ------------------------------------------------------------------------------

def _verdict(checks, missing):
    """checks: [(ok, text)]; a failed check decides NOT MET even when other cells are missing."""
    if any(not ok for ok, _ in checks):
        return NOT_MET
    if missing or not checks:
        return NOT_RUN
    return MET


def targets(results):
    """[{id, target, status, evidence}] evaluated on the finished cells of results."""
    ratios = _ratios(results)
    out = []
    da = _done(results, "da")

    # T1, T2: ATMC-8 at the headline ratio vs DA and AP.
    a8 = _done(results, cell_key("atmc8", HEADLINE_RATIO))
    ap = _done(results, cell_key("ap", HEADLINE_RATIO))
    checks, missing = [], []
    if da and a8:
        gap = da["robust_acc"] - a8["robust_acc"]
        checks.append((gap <= 0.03 + 1e-9, f"DA {_pct(da['robust_acc'])}% vs ATMC-8 {_pct(a8['robust_acc'])}%: "
                                    f"DA - ATMC-8 = {_pct(gap)} pts (allowed <= 3.0)"))
    else:
        missing.append("da" if not da else cell_key("atmc8", HEADLINE_RATIO))
    more = _done(results, "da_more")  # the fair dense ceiling: DA + the compressed cells' extra epochs
    context = []
    if more and a8:
        gap = more["robust_acc"] - a8["robust_acc"]
        context.append(f"against the dense ceiling da_more ({_pct(more['robust_acc'])}%, DA trained on for the "
                       f"compressed cells' epochs): da_more - ATMC-8 = {_pct(gap)} pts (context, not the target)")
    out.append({"id": "T1", "target": "ATMC-8 at ratio 0.01: robust accuracy within 3 points of DA",
                "status": _verdict(checks, missing), "evidence": [t for _, t in checks] + context,
                "missing": missing})
    checks, missing = [], []
    if a8 and ap:
        d = a8["robust_acc"] - ap["robust_acc"]
        checks.append((d >= 0.03 - 1e-9, f"ATMC-8 {_pct(a8['robust_acc'])}% vs AP {_pct(ap['robust_acc'])}%: "
                                  f"{_pts(d)} (needed >= +3.0)"))
    else:
        missing += [k for k, c in ((cell_key("atmc8", HEADLINE_RATIO), a8), (cell_key("ap", HEADLINE_RATIO), ap))
                    if not c]
    context = []
    if more and ap:
        room = more["robust_acc"] - ap["robust_acc"]
        context.append(f"AP is {_pct(room)} pts below the dense ceiling da_more ({_pct(more['robust_acc'])}%): "
                       "at this ratio pruning costs AP that much robustness, the most a compressed model can "
                       "gain over it without beating dense training (context, not the target)")
    out.append({"id": "T2", "target": "ATMC-8 at ratio 0.01: robust accuracy at least 3 points above AP",
                "status": _verdict(checks, missing), "evidence": [t for _, t in checks] + context,
                "missing": missing})

    # T3: every quantized ATMC beats AL0 and AP at every ratio <= 0.01 (the paper's claim).
    checks, missing = [], []
    low = sorted(set(r for r in ratios if r <= HEADLINE_RATIO + 1e-12) | {0.003, 0.01})
    for r in low:
        base = {m: _done(results, cell_key(m, r)) for m in ("ap", "al0")}
        for m in QUANTIZED_ATMC:
            key = cell_key(m, r)
            cell = results.get("cells", {}).get(key)
            if cell and cell.get("status") == "infeasible":
                continue
            a = _done(results, key)
            if not a or not all(base.values()):
                missing += [k for k, c in [(key, a)] + [(cell_key(b, r), c) for b, c in base.items()] if not c]
                continue
            best = max(base.values(), key=lambda c: c["robust_acc"])
            d = a["robust_acc"] - best["robust_acc"]
            checks.append((d > 0, f"ratio {r:g}: {LABELS[m]} {_pct(a['robust_acc'])}% vs best of AL0/AP "
                                  f"({LABELS[best['method']]}) {_pct(best['robust_acc'])}%: {_pts(d)}"))
    out.append({"id": "T3", "target": "ATMC (ATMC-8 and ATMC-4) beats AL0 and AP in robust accuracy at every "
                                      "ratio <= 0.01 (the paper's claim)",
                "status": _verdict(checks, sorted(set(missing))), "evidence": [t for _, t in checks],
                "missing": sorted(set(missing))})

    # T4: ATMC-8 vs TFMOT at equal gzipped size, every ratio.
    checks, missing = [], []
    for r in ratios:
        a, t = _done(results, cell_key("atmc8", r)), _done(results, cell_key("tfmot", r))
        if not (a and t):
            missing += [k for k, c in ((cell_key("atmc8", r), a), (cell_key("tfmot", r), t)) if not c]
            continue
        d = a["tflite_robust_acc"] - t["tflite_robust_acc"]
        checks.append((d > 0.30, f"ratio {r:g}: ATMC-8 .tflite {_pct(a['tflite_robust_acc'])}% "
                                 f"({a['tflite_gzip_bytes']} B gz) vs TFMOT .tflite {_pct(t['tflite_robust_acc'])}% "
                                 f"({t['tflite_gzip_bytes']} B gz): {_pts(d)} (needed > +30.0)"))
    out.append({"id": "T4", "target": "ATMC-8 beats the TFMOT prune + QAT pipeline by more than 30 points of robust "
                                      "accuracy at equal gzipped .tflite size",
                "status": _verdict(checks, missing), "evidence": [t for _, t in checks], "missing": missing})

    # T5: the int8 .tflite within 1 point of the Keras model, every atmc_tf cell.
    checks, missing = [], []
    keys = ["da"] + (["da_more"] if results.get("cells", {}).get("da_more") else []) + \
        [cell_key(m, r) for r in ratios for m in COMPRESSED if m in PAPER_COMPRESSED or m in _methods(results)]
    for key in keys:
        cell = results.get("cells", {}).get(key)
        if cell and cell.get("status") == "infeasible":
            continue
        if not (cell and cell.get("status") == "done"):
            missing.append(key)
            continue
        dc = cell["tflite_clean_acc"] - cell["clean_acc"]
        dr = cell["tflite_robust_acc"] - cell["robust_acc"]
        ok = abs(dc) <= 0.01 + 1e-9 and abs(dr) <= 0.01 + 1e-9  # accuracies are multiples of 1/n
        checks.append((ok, f"{key}: clean {_pts(dc)}, robust {_pts(dr)}"))
    bad = [t for ok, t in checks if not ok]
    out.append({"id": "T5", "target": "int8 .tflite clean and robust accuracy within 1 point of the Keras model's "
                                      "(every DA / baseline / ATMC cell)",
                "status": _verdict(checks, missing),
                "evidence": (["outside 1 point: " + "; ".join(bad)] if bad else [])
                + [f"{sum(ok for ok, _ in checks)} of {len(checks)} finished cells within 1 point"],
                "missing": missing})

    # T6: step time ratio.
    timing = results.get("timing")
    checks, missing = [], []
    if timing and timing.get("ratio_atmc8") is not None:
        for b in (8, 4):  # every ATMC variant the benchmark trains, not only the cheaper one
            if timing.get(f"ratio_atmc{b}") is not None:
                checks.append((timing[f"ratio_atmc{b}"] <= 1.10,
                               f"ATMC-{b} step {1000 * timing[f'atmc{b}_step_s']:.0f} ms / bare PGD-AT step "
                               f"{1000 * timing['bare_step_s']:.0f} ms = {timing[f'ratio_atmc{b}']:.3f} "
                               "(target <= 1.10)"))
    else:
        missing.append("timing")
    out.append({"id": "T6", "target": "time per ATMC training step / time per bare PGD-AT step (same attack) <= 1.10",
                "status": _verdict(checks, missing), "evidence": [t for _, t in checks], "missing": missing})
    more = [t for t in (fast_target(results), wta_target(results)) if t]
    return (out + attack_targets(results) + structured_targets(results) + more + objective_targets(results)
            + device_targets(results))


# --- against the paper ---------------------------------------------------------------------

# Read off the paper's figure (Gui et al., NeurIPS 2019; ../shared/docs/ATMC.md), so approximate.
PAPER_NOTE = (
    "The paper (Gui et al., NeurIPS 2019, MNIST LeNet, PGD eps 0.3; figures read off its plot, so approximate) "
    "reports at ratio 0.01 robust accuracy ATMC-32 ~72%, AL0 ~71%, AP ~69%, NAP <= 2% (DA ~78%), and claims that "
    "at equal size ATMC >= AL0 >= AP >> NAP, with the largest gap at the highest compression. The same check on "
    "this run (Fashion-MNIST, eps 0.1), robust % on the Keras model:")
ORDER_METHODS = ("nap", "ap", "al0", "atmc32", "atmc8", "atmc4")


def paper_order(results):
    """Per ratio with NAP, AP, AL0 and ATMC-32 finished: robust accuracies, the paper's order, ATMC's lead."""
    ratios = _ratios(results)
    rows = []
    for r in ratios:
        c = {m: _done(results, cell_key(m, r)) for m in ORDER_METHODS}
        if not all(c[m] for m in ("nap", "ap", "al0", "atmc32")):
            continue
        rob = {m: (c[m]["robust_acc"] if c[m] else None) for m in ORDER_METHODS}
        broken = [f"{LABELS[a]} < {LABELS[b]} by {100 * (rob[b] - rob[a]):.2f}"
                  for a, b in (("atmc32", "al0"), ("al0", "ap")) if rob[a] < rob[b]]
        base = max(rob["al0"], rob["ap"])
        lead = {m: rob[m] - base for m in ("atmc32", "atmc8", "atmc4") if rob[m] is not None}
        rows.append({"ratio": r, "robust": rob, "broken": broken, "ap_minus_nap": rob["ap"] - rob["nap"],
                     "lead": lead})
    return rows


def _order_lines(results):
    rows = paper_order(results)
    if not rows:
        return ["NOT RUN YET: needs NAP, AP, AL0 and ATMC-32 at a ratio.", ""]
    L = [PAPER_NOTE, "",
         "| ratio | NAP | AP | AL0 | ATMC-32 | ATMC-8 | ATMC-4 | ATMC-32 >= AL0 >= AP | AP - NAP | "
         "lead over the best of AL0/AP (ATMC-32 / -8 / -4) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rob, lead = row["robust"], row["lead"]
        leads = " / ".join(_pts(lead[m]) if m in lead else "-" for m in ("atmc32", "atmc8", "atmc4"))
        L.append(f"| {row['ratio']:g} | " + " | ".join(_pct(rob[m]) for m in ORDER_METHODS)
                 + f" | {'holds' if not row['broken'] else 'no: ' + '; '.join(row['broken'])}"
                 f" | {_pts(row['ap_minus_nap'])} | {leads} |")
    eight = [(row["ratio"], row["lead"]["atmc8"]) for row in rows if "atmc8" in row["lead"]]
    if len(eight) >= 2:
        top = max(eight, key=lambda t: t[1])
        smallest = min(r for r, _ in eight)
        L += ["", f"ATMC-8's lead is largest at ratio {top[0]:g} ({_pts(top[1])}); "
              + ("that is the highest compression run, as the paper has it."
                 if top[0] == smallest else f"the highest compression run is {smallest:g}.")]
    L.append("")
    return L


# --- at equal shipped size ----------------------------------------------------------------

def shipped_size(results, base="ap"):
    """Each ATMC-8/-4/-2 cell against `base` at the same gzipped .tflite bytes.

    `base`'s .tflite robust accuracy is interpolated linearly in log(bytes) between its two finished cells
    that bracket the ATMC cell's size; outside `base`'s range there is no comparison (never extrapolated).
    """
    cells = _pgd_trained(results)
    pts = sorted((c["tflite_gzip_bytes"], c["tflite_robust_acc"], c["ratio"]) for c in cells
                 if c.get("method") == base and c.get("status") == "done")
    out = []
    for c in sorted((c for c in cells if c.get("method") in SHIPPED_ATMC and c.get("status") == "done"),
                    key=lambda c: (c["method"], c["ratio"])):
        gz = c["tflite_gzip_bytes"]
        row = {"cell": cell_key(c["method"], c["ratio"]), "gzip": gz, "robust": c["tflite_robust_acc"], "base": None}
        for (g0, a0, r0), (g1, a1, r1) in zip(pts, pts[1:], strict=False):
            if g0 <= gz <= g1:
                t = 0.0 if g1 == g0 else (math.log(gz) - math.log(g0)) / (math.log(g1) - math.log(g0))
                row.update(base=a0 + t * (a1 - a0), between=(r0, r1))
                break
        out.append(row)
    return out


def _shipped_lines(results):
    rows = shipped_size(results)
    if not rows:
        return ["NOT RUN YET.", ""]
    L = ["What a user ships is the gzipped int8 .tflite, where AP's nonzeros cost 8 bits, not the 32 the "
         "paper-style ratio charges them. Each ATMC cell against AP at the same gzipped size (AP's .tflite "
         "robust accuracy interpolated in log(bytes) between the two AP cells that bracket it; never "
         "extrapolated):", "",
         "| ATMC cell | gzipped bytes | robust % (.tflite) | AP at that size | ATMC - AP |", "|---|---|---|---|---|"]
    for row in rows:
        if row["base"] is None:
            L.append(f"| {row['cell']} | {row['gzip']:,} | {_pct(row['robust'])} | outside AP's finished sizes | - |")
        else:
            r0, r1 = row["between"]
            L.append(f"| {row['cell']} | {row['gzip']:,} | {_pct(row['robust'])} | {_pct(row['base'])} "
                     f"(between ap@{r0:g} and ap@{r1:g}) | {_pts(row['robust'] - row['base'])} |")
    L.append("")
    return L


# --- magnitude vs LAMP (issue 14) -----------------------------------------------------------

def _scoring(results, cell):
    """How a cell's global L0 budget was scored: recorded per cell, else the run's --l0_scoring."""
    return cell.get("l0_scoring") or results.get("meta", {}).get("settings", {}).get("l0_scoring", "magnitude")


def lamp_comparison(results):
    """Per ratio and (magnitude method, LAMP method) pair: both cells (None when not finished) and the
    LAMP - magnitude differences of the .tflite robust and clean accuracy (None unless both finished)."""
    cells = results.get("cells", {})
    rows = []
    for r in _ratios(results):
        for base, lamp in LAMP_PAIRS:
            b, lc = cells.get(cell_key(base, r)), cells.get(cell_key(lamp, r))
            both = all(c and c.get("status") == "done" for c in (b, lc))
            rows.append({"ratio": r, "base": base, "lamp": lamp, "base_cell": b, "lamp_cell": lc,
                         "d_robust": lc["tflite_robust_acc"] - b["tflite_robust_acc"] if both else None,
                         "d_clean": lc["tflite_clean_acc"] - b["tflite_clean_acc"] if both else None})
    return rows


def _acc_or_status(c, key):
    if c is None:
        return NOT_RUN
    if c.get("status") != "done":
        return c.get("status", "?")
    return _pct(c[key])


def _lamp_lines(results):
    rows = lamp_comparison(results)
    L = ["Issue 14: does scoring the one global L0 budget layer-adaptively (LAMP, Lee et al. ICLR 2021; "
         "`--l0_scoring=lamp`) instead of by raw magnitude (the paper's |w| top-k, `--l0_scoring=magnitude`) make "
         "the LeNet cells worse? Same cell otherwise: same budget, epochs, epoch split and learning-rate family. "
         "Accuracies of the int8 .tflite; the difference is LAMP - magnitude (negative: LAMP is worse).", "",
         "| ratio | method | robust % magnitude | robust % LAMP | LAMP - magnitude | clean % magnitude | "
         "clean % LAMP | LAMP - magnitude |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        b, lc = row["base_cell"], row["lamp_cell"]
        note = ""
        if b and b.get("status") == "done" and _scoring(results, b) != "magnitude":
            note = f" (its magnitude cell was scored by {_scoring(results, b)}: --l0_scoring)"
        diff = (lambda d: NOT_RUN if d is None else _pts(d))  # noqa: E731
        L.append(f"| {row['ratio']:g} | {LABELS[row['base']]}{note} | {_acc_or_status(b, 'tflite_robust_acc')} | "
                 f"{_acc_or_status(lc, 'tflite_robust_acc')} | {diff(row['d_robust'])} | "
                 f"{_acc_or_status(b, 'tflite_clean_acc')} | {_acc_or_status(lc, 'tflite_clean_acc')} | "
                 f"{diff(row['d_clean'])} |")
    done = [row for row in rows if row["d_robust"] is not None]
    if done:
        worst = min(done, key=lambda row: row["d_robust"])
        L += ["", f"{len(done)} of {len(rows)} pairs finished; largest robust loss from LAMP: "
              f"{LABELS[worst['base']]} at ratio {worst['ratio']:g}, {_pts(worst['d_robust'])}."]
    L.append("")
    return L


# --- attacks as reviewers run them (issue 18) --------------------------------------------------

def _cell_keys(results):
    cells = results.get("cells", {})
    keys = ["da", "da_more"] + [cell_key(m, r) for r in _ratios(results) for m in _methods(results) if m != "da"]
    keys += [k for k in cells if k not in keys]  # TFMOT, structured and variant cells
    return [k for k in keys if cells.get(k, {}).get("status") == "done"]


def attack_checks(results):
    """Issue 18's two targets per attacked cell: (worst, direct) lists of (key, ok, text); the cells
    not attacked yet. worst: the Keras per-example worst case of PGD, APGD-CE and APGD-DLR within 2 points of
    the cell's PGD figure (no masking); direct: the .tflite under attacks on itself (its fake-quant twin's PGD
    and Square, first n images) within 2 points of the Keras worst case on the same images (TFMOT: its
    tf_keras model's PGD figure)."""
    worst, direct, missing = [], [], []
    for key in _cell_keys(results):
        c = results["cells"][key]
        a = c.get("attacks")
        if not a:
            missing.append(key)
            continue
        if a.get("keras_worst_case") is not None:
            d = a["keras_worst_case"] - c["robust_acc"]
            worst.append((key, d >= -0.02 - 1e-9, f"{key}: worst case {_pct(a['keras_worst_case'])}% vs PGD "
                                                   f"{_pct(c['robust_acc'])}%: {_pts(d)}"))
        fn = a["first_n"]
        ref = fn.get("keras_worst_case", c["robust_acc"])
        d = fn["tflite_direct"] - ref
        direct.append((key, abs(d) <= 0.02 + 1e-9, f"{key}: .tflite direct {_pct(fn['tflite_direct'])}% vs Keras "
                                                    f"{_pct(ref)}%: {_pts(d)}"))
    return worst, direct, missing


def attack_targets(results):
    worst, direct, missing = attack_checks(results)
    out = []
    for tid, checks, text in (
            ("T7", worst, "every cell: the per-example worst case of PGD, APGD-CE and APGD-DLR within 2 points of "
                          "its PGD figure (no gradient masking)"),
            ("T8", direct, "every cell: the int8 .tflite attacked directly (its fake-quant twin's PGD and Square "
                           "Attack on the file) within 2 points of the Keras worst case, same images")):
        bad = [t for _, ok, t in checks if not ok]
        out.append({"id": tid, "target": text, "status": _verdict([(ok, t) for _, ok, t in checks], missing),
                    "evidence": (["outside 2 points: " + "; ".join(bad)] if bad else [])
                    + [f"{sum(ok for _, ok, _ in checks)} of {len(checks)} attacked cells within 2 points"],
                    "missing": missing})
    return out


def _attack_lines(results):
    shown = [(k, results["cells"][k]) for k in _cell_keys(results) if results["cells"][k].get("attacks")]
    if not shown:
        return ["NOT RUN YET: `python -m benchmarks.benchmark --attacks_only` (the run's flags) attacks the "
                "finished cells from their saved models.", ""]
    st = shown[0][1]["attacks"]["settings"]
    pgd = f"PGD-{st['eval_pgd_steps']}x{st['eval_restarts']}"
    L = [f"Evaluation only, from each cell's saved model and int8 .tflite (`benchmarks/bench_attacks.py`), "
         f"eps {st['eps']:g}. Keras, white box, the whole test split: {pgd} (the cell's attack, crafted again), "
         f"APGD-CE and APGD-DLR ({st['apgd_steps']} steps, 1 restart each; Croce and Hein 2020) and per example the "
         "worst case of the three (correct clean and under every attack, RobustBench's rule). The .tflite: the "
         f"three attacks' images transferred; {pgd} crafted through the file's fake-quant float twin "
         "(`atmc_tf.export.twin`: the file's own int8 scales, white box on the deployed arithmetic); Square Attack "
         f"(score-based, LiteRT in the loop, {st['square_queries']} queries) on the first {st['square_n']} test "
         "images; worst case = per example over all of them. Direct = clean, twin PGD and Square together: the "
         "attacks on the file itself, on the first-n images, next to the Keras worst case on the same images.", "",
         f"| cell | {pgd} (cell) | {pgd} again | APGD-CE | APGD-DLR | **worst case** (Keras) | worst - cell PGD | "
         f".tflite transfer (worst of 3) | .tflite twin {pgd} | **.tflite worst case** | Square (queries mean) | "
         "first n: Keras worst | first n: .tflite direct | direct - Keras | seconds |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, c in shown:
        a = c["attacks"]
        ke, t, fn = a.get("keras", {}), a["tflite"], a["first_n"]
        trans = [t[n] for n in t if n.startswith("transfer ")]
        ref = fn.get("keras_worst_case", c["robust_acc"])
        kw = a.get("keras_worst_case")
        L.append(f"| {k} | {_pct(c['robust_acc'])} | {_pct(ke.get('pgd'))} | {_pct(ke.get('apgd-ce'))} | "
                 f"{_pct(ke.get('apgd-dlr'))} | **{_pct(kw)}** | "
                 f"{'-' if kw is None else _pts(kw - c['robust_acc'])} | {_pct(min(trans)) if trans else '-'} | "
                 f"{_pct(t['twin pgd'])} | **{_pct(a['tflite_worst_case'])}** | {_pct(a['square']['acc'])} "
                 f"({a['square']['queries_mean']:.0f}) | {_pct(fn.get('keras_worst_case'))} | "
                 f"{_pct(fn['tflite_direct'])} | {_pts(fn['tflite_direct'] - ref)} | {a['seconds']:.0f} |")
    other = sorted({json.dumps(c["attacks"]["settings"], sort_keys=True) for _, c in shown})
    if len(other) > 1:
        L += ["", f"Cells attacked with different settings: {'; '.join(other)}."]
    agree = [c["attacks"]["twin_agreement"] for _, c in shown]
    L += ["", f"The twin's top-1 equals LiteRT's on {_pct(min(agree))}-{_pct(max(agree))}% of the clean test "
          "images (cells above). TFMOT cells have no Keras model in this process: their reference is their tf_keras "
          f"model's {pgd} figure. Re-run: `python -m benchmarks.benchmark --attacks_only` with the run's flags "
          f"(cells attacked with other `--apgd_steps/--square_n/--square_queries` are attacked again).", ""]
    missing = [k for k in _cell_keys(results) if not results["cells"][k].get("attacks")]
    if missing:
        L += [f"Not attacked yet: {', '.join(missing)}.", ""]
    return L


# --- cheaper adversarial training (issue 22) ---------------------------------------------------

FAST_LABELS = {"pgd": "PGD", "fgsm_rs": "FGSM-RS", "n_fgsm": "N-FGSM", "free": "free"}


def _strongest(c):
    """(robust accuracy under the strongest evaluation the cell has, its name): the Keras worst case of PGD,
    APGD-CE and APGD-DLR once the cell is attacked, else its PGD figure."""
    a = c.get("attacks") or {}
    if a.get("keras_worst_case") is not None:
        return a["keras_worst_case"], "worst case"
    return c["robust_acc"], "PGD"


def fast_rows(results):
    """Per model (DA; ATMC-8 at the headline ratio) the PGD cell and each cheaper-attack cell: {model, attack,
    cell, robust, how, seconds (ATMC-8: its DA's time included), ratio (seconds / the PGD cell's)}."""
    attacks = [a for a in FAST_LABELS if a in _variants(results, ("train_attack",))]
    a8 = cell_key("atmc8", HEADLINE_RATIO)
    rows = []
    for model, base in (("DA", "da"), (f"ATMC-8 @ {HEADLINE_RATIO:g}", a8)):
        ref = None
        for attack in ["pgd"] + attacks:
            key = base if attack == "pgd" else f"{base}~{attack}"
            c = _done(results, key)
            row = {"model": model, "attack": attack, "key": key, "cell": c}
            if c:
                da = c if base == "da" else _done(results, "da" if attack == "pgd" else f"da~{attack}")
                row["seconds"] = c["train_seconds"] + (0 if base == "da" else (da or {}).get("train_seconds", 0))
                row["robust"], row["how"] = _strongest(c)
                if attack == "pgd":
                    ref = row
                elif ref:
                    row["ratio"] = row["seconds"] / ref["seconds"]
                    row["gap"] = row["robust"] - ref["robust"]
            rows.append(row)
    return rows


def _close_to_pgd(r):
    """A fast-attack row within 1 point of PGD's robust accuracy."""
    return r["gap"] >= -0.01 - 1e-9


def fast_target(results):
    if not _variants(results, ("train_attack",)):
        return None
    rows = [r for r in fast_rows(results) if r["attack"] != "pgd"]
    checks, missing = [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and "ratio" in r]
        if not mine:
            missing += [r["key"] for r in fast_rows(results) if r["model"] == model and not r["cell"]]
            continue
        ok = [r for r in mine if _close_to_pgd(r) and r["ratio"] <= 1 / 3 + 1e-9]
        # best: the fastest of those within 1 point, else the closest in robust accuracy
        best = max(mine, key=lambda r: (_close_to_pgd(r), -r["ratio"] if _close_to_pgd(r) else r["gap"]))
        checks.append((bool(ok), f"{model}: " + "; ".join(
            f"{FAST_LABELS[r['attack']]} {_pts(r['gap'])} at {r['ratio']:.2f}x the time" for r in mine)
            + f" (best: {FAST_LABELS[best['attack']]})"))
    return {"id": "T9", "target": "a cheaper training attack reaches PGD-7's robust accuracy (strongest evaluation) "
                                 "within 1 point at <= 1/3 of its training time (DA; ATMC-8 with its DA)",
            "status": _verdict(checks, missing), "evidence": [t for _, t in checks], "missing": missing}


def _fast_lines(results):
    if not _variants(results, ("train_attack",)):
        return ["NOT RUN YET: `--variants=fgsm_rs,n_fgsm,free` trains these cells.", ""]
    rows = fast_rows(results)
    L = ["DA trained from scratch with each training attack (same epochs and learning rate as the PGD DA), then "
         f"ATMC-8 at ratio {HEADLINE_RATIO:g} from that DA with the same attack (same chain as atmc8@0.01). "
         "Robust = the strongest evaluation the cell has: the per-example worst case of PGD, APGD-CE and APGD-DLR "
         "(the attacks section) once it is attacked, else PGD. Time = training wall clock; ATMC-8's includes its "
         "DA's. The fast attacks are watched for catastrophic overfitting (the pipeline's guard: PGD accuracy "
         "on validation images each epoch). Cells trained on different days share the machine with different "
         "loads (load average when each cell finished): compare times with that in mind.", "",
         "| model | training attack | clean % | robust % | (evaluation) | .tflite robust % (transfer) | train time | "
         "time / PGD's | robust - PGD's | catastrophic overfitting | load at finish |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cell"]
        if not c:
            L.append(f"| {r['model']} | {FAST_LABELS[r['attack']]} | {NOT_RUN} | | | | | | | | |")
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        gap = _pts(r["gap"]) if "gap" in r else "-"
        co = "-" if r["attack"] == "pgd" else ("yes" if c.get("catastrophic_overfitting") else "no")
        load = f"{c['loadavg_at_finish'][0]:.1f}" if c.get("loadavg_at_finish") else "-"
        L.append(f"| {r['model']} | {FAST_LABELS[r['attack']]} | {_pct(c['clean_acc'])} | {_pct(r['robust'])} | "
                 f"{r['how']} | {_pct(c['tflite_robust_acc'])} | {_secs(r['seconds'])} | {ratio} | {gap} | {co} "
                 f"| {load} |")
    L.append("")
    return L


# --- structured (channel) sparsity (issue 16) ------------------------------------------------

STRUCT_LABELS = {"sap": "structured AP", "satmc": "structured ATMC", "satmc8": "structured ATMC-8",
                 "satmc4": "structured ATMC-4", "satmc2": "structured ATMC-2"}
STRUCT_COLORS = {"sap": "tab:cyan", "satmc": "tab:olive", "satmc8": "darkred", "satmc4": "darkorange",
                 "satmc2": "gold"}  # the trade-off plot's diamonds
STRUCT_ALWAYS = ("sap", "satmc", "satmc8")  # issue 16's, in every table; one added since where the run has a cell of it


def _struct_cells(results):
    """{ratio: {method: cell or None}} of the plain structured cells in results (any status; not issue 20's
    objective variants of them)."""
    out = {}
    for c in results.get("cells", {}).values():
        if c.get("method") in STRUCT_LABELS and not c.get("variant"):
            out.setdefault(c["ratio"], {})[c["method"]] = c
    shown = [m for m in STRUCT_LABELS if m in STRUCT_ALWAYS or any(m in row for row in out.values())]
    return {r: {m: out[r].get(m) for m in shown} for r in sorted(out, reverse=True)}


def structured_targets(results):
    by_ratio = _struct_cells(results)
    if not by_ratio:
        return []
    da = _done(results, "da")
    checks, missing = [], []
    at = by_ratio.get(0.25, {})
    for m in [m for m in STRUCT_LABELS if m != "sap" and (m in STRUCT_ALWAYS or at.get(m))]:
        c = at.get(m)
        if not (c and c.get("status") == "done" and da):
            missing.append(cell_key(m, 0.25))
            continue
        st = c["structure"]
        d = c["robust_acc"] - da["robust_acc"]
        b = c["tflite_bytes"] / da["tflite_bytes"]
        lat = st["litert_latency_ms"]["compressed"] / st["litert_latency_ms"]["dense"]
        checks.append((d >= -0.02 - 1e-9 and b <= 0.3 + 1e-9 and lat <= 0.5 + 1e-9,
                       f"{STRUCT_LABELS[m]}: robust {_pts(d)} vs DA, raw .tflite {b:.3f}x, LiteRT latency {lat:.3f}x"))
    ok_any = any(ok for ok, _ in checks)
    t14 = {"id": "T14", "target": "structured ATMC at 0.25 of the parameters: robust accuracy within 2 points of DA, "
                                  "raw .tflite bytes <= 0.3x and LiteRT latency <= 0.5x the dense model's",
           "status": MET if ok_any else _verdict(checks, missing), "evidence": [t for _, t in checks],
           "missing": [] if ok_any else missing}
    checks, missing = [], []
    for r, row in by_ratio.items():
        ap = row.get("sap")
        best = max((c for m, c in row.items() if m != "sap" and c and c.get("status") == "done"),
                   key=lambda c: c["robust_acc"], default=None)
        if not (ap and ap.get("status") == "done" and best):
            missing += [cell_key(m, r) for m, c in row.items() if not (c and c.get("status") == "done")]
            continue
        d = best["robust_acc"] - ap["robust_acc"]
        checks.append((d >= 0.02 - 1e-9, f"{r:g}: {STRUCT_LABELS[best['method']]} {_pct(best['robust_acc'])}% vs "
                                         f"structured AP {_pct(ap['robust_acc'])}%: {_pts(d)}"))
    t15 = {"id": "T15", "target": "structured ATMC at least 2 points of robust accuracy above structured AP at every "
                                  "kept-parameter ratio", "status": _verdict(checks, missing),
           "evidence": [t for _, t in checks], "missing": missing}
    return [t14, t15]


# --- device bytes (issue 17) ------------------------------------------------------------------

MCU_FLASH_BYTES = 64 * 1024  # T16's microcontroller: 64 KB (KiB) of flash for the model file
ATMC_FAMILY = ("atmc32", "atmc8", "atmc4", "atmc2", "atmc8_lamp", "satmc", "satmc8", "satmc4", "satmc2")  # "an ATMC model"
BYTES_BASELINES = ("ap", "sap", "tfmot")  # T17: AP (unstructured and structured) and TFMOT prune + QAT


def _on_device(results, methods):
    """The plain finished cells of `methods` with TFLM bytes: [(key, cell)], smallest file first."""
    cells = [(k, c) for k, c in results.get("cells", {}).items()
             if c.get("method") in methods and not c.get("variant") and c.get("status") == "done"
             and c.get("tflm_bytes")]
    return sorted(cells, key=lambda kc: kc[1]["tflm_bytes"])


def device_targets(results):
    """Issue 17's targets on the TFLite Micro flash (the LUT / PRUNE-compressed batch-1 file) and the .tflite's
    robust accuracy (the protocol of every cell). T16: the most robust ATMC model whose file fits 64 KB is within
    3 points of DA. T17: every AP / structured AP / TFMOT cell is beaten by at least 2 points by an ATMC cell of
    equal or fewer TFLM bytes (so at every device size ATMC is the better buy); a baseline smaller than every
    ATMC cell cannot be checked and is listed as missing."""
    atmc, base = _on_device(results, ATMC_FAMILY), _on_device(results, BYTES_BASELINES)
    if not atmc and not base:
        return []
    da = _done(results, "da")
    fits = [(k, c) for k, c in atmc if c["tflm_bytes"] <= MCU_FLASH_BYTES]
    checks, missing = [], []
    if not da:
        missing.append("da")
    if not fits:
        smallest = f" (smallest: {atmc[0][0]}, {atmc[0][1]['tflm_bytes']:,} B)" if atmc else ""
        missing.append(f"an ATMC cell of <= {MCU_FLASH_BYTES:,} TFLM bytes{smallest}")
    if da and fits:
        k, c = max(fits, key=lambda kc: kc[1]["tflite_robust_acc"])
        gap = da["tflite_robust_acc"] - c["tflite_robust_acc"]
        checks.append((gap <= 0.03 + 1e-9, f"{k} ({c['tflm_bytes']:,} TFLM B) {_pct(c['tflite_robust_acc'])}% vs DA "
                                           f"{_pct(da['tflite_robust_acc'])}% ({da.get('tflm_bytes') or 0:,} B): "
                                           f"DA - ATMC = {_pct(gap)} pts (allowed <= 3.0)"))
    t16 = {"id": "T16", "target": f"the most robust ATMC model in at most 64 KB ({MCU_FLASH_BYTES:,} B) of TFLite "
                                  "Micro flash: .tflite robust accuracy within 3 points of DA's",
           "status": _verdict(checks, missing), "evidence": [t for _, t in checks], "missing": missing}
    checks, missing = [], []
    for k, b in base:
        under = [(ka, a) for ka, a in atmc if a["tflm_bytes"] <= b["tflm_bytes"]]
        if not under:
            missing.append(f"an ATMC cell of <= {b['tflm_bytes']:,} TFLM bytes (for {k})")
            continue
        ka, a = max(under, key=lambda kc: kc[1]["tflite_robust_acc"])
        d = a["tflite_robust_acc"] - b["tflite_robust_acc"]
        checks.append((d >= 0.02 - 1e-9, f"{k} {_pct(b['tflite_robust_acc'])}% at {b['tflm_bytes']:,} B: best ATMC at "
                                         f"<= its bytes {ka} {_pct(a['tflite_robust_acc'])}% at {a['tflm_bytes']:,} B: "
                                         f"{_pts(d)}"))
    if not base:
        missing.append("an AP, structured AP or TFMOT cell with TFLM bytes")
    t17 = {"id": "T17", "target": "at every device size, ATMC's .tflite robust accuracy at least 2 points above the "
                                  "best of AP, structured AP and TFMOT at equal or larger TFLite Micro bytes",
           "status": _verdict(checks, missing), "evidence": [t for _, t in checks], "missing": missing}
    return [t16, t17]


def _structured_lines(results):
    by_ratio = _struct_cells(results)
    if not by_ratio:
        return ["NOT RUN YET: `--structured_ratios=0.5,0.25,0.1` trains these cells.", ""]
    da = _done(results, "da")
    L = ["Channel (filter / neuron) sparsity under one global budget (`--structure=channel`): kept-parameter ratio "
         "= compressible parameters of the cut model / the dense model's. Every structured cell starts from the "
         "shared DA model, is cut to the smaller Keras model it ships as (`atmc_tf.export.shrink_model`) and is "
         "exported, evaluated and attacked from that model. Robust: PGD on Keras and the .tflite on the same "
         "images (as every cell), and the worst case once attacked. Raw bytes: the int8 .tflite as stored; MACs "
         "and LiteRT latency (batch 1, 1 thread, median of 300) against the DA model's, measured in the same call.",
         "", "| kept ratio | method | clean % | robust % (Keras) | robust % (.tflite) | worst case % | raw .tflite "
         "bytes (/ DA) | MACs (/ DA) | LiteRT ms (/ DA) | channels kept |", "|---|---|---|---|---|---|---|---|---|---|"]
    if da:
        L.append(f"| 1 | DA (dense) | {_pct(da['clean_acc'])} | {_pct(da['robust_acc'])} | "
                 f"{_pct(da['tflite_robust_acc'])} | {_pct((da.get('attacks') or {}).get('keras_worst_case'))} | "
                 f"{da['tflite_bytes']:,} | | | |")
    for r, row in by_ratio.items():
        for m, c in row.items():
            if not c or c.get("status") != "done":
                L.append(f"| {r:g} | {STRUCT_LABELS[m]} | {NOT_RUN if not c else c.get('status')} | | | | | | | |")
                continue
            st = c["structure"]
            lat, macs = st["litert_latency_ms"], st["macs"]
            kept = sum(v["kept"] for v in st["layers"].values())
            total = sum(v["total"] for v in st["layers"].values())
            rel = f" ({c['tflite_bytes'] / da['tflite_bytes']:.3f})" if da else ""
            L.append(f"| {r:g} | {STRUCT_LABELS[m]} | {_pct(c['clean_acc'])} | {_pct(c['robust_acc'])} | "
                     f"{_pct(c['tflite_robust_acc'])} | {_pct((c.get('attacks') or {}).get('keras_worst_case'))} | "
                     f"{c['tflite_bytes']:,}{rel} | {macs['compressed']:,} ({macs['compressed'] / macs['dense']:.3f}) "
                     f"| {lat['compressed']:.3f} ({lat['compressed'] / lat['dense']:.3f}) | {kept} of {total} |")
    L.append("")
    return L


# --- activation sparsity (issue 21) -----------------------------------------------------------

def _act_robust(c):
    """The robust figure of a cell with sparsity layers: the lowest of plain PGD, PGD through the BPDA surrogate
    and (once attacked) the worst case; a plain cell: its strongest evaluation."""
    figs = [_strongest(c)[0]]
    pgd = (c.get("activation") or {}).get("pgd") or {}
    figs += [pgd[k] for k in ("plain", "bpda") if isinstance(pgd.get(k), (int, float))]
    return min(figs)


def wta_rows(results):
    names = _variants(results, ("activation_sparsity",))
    rows = []
    for model, base in (("DA", "da"), (f"ATMC-8 @ {HEADLINE_RATIO:g}", cell_key("atmc8", HEADLINE_RATIO))):
        for name in [None] + names:
            key = base if name is None else f"{base}~{name}"
            c = _done(results, key)
            row = {"model": model, "variant": name, "key": key, "cell": c}
            if c:
                act = c.get("activation") or {}
                row["robust"] = _act_robust(c)
                row["density"] = c.get("activation_density", 1.0)
                row["macs"] = (act.get("macs") or {}).get("effective_adversarial")
                row["dense_macs"] = (act.get("macs") or {}).get("dense")
                row["latency"] = act.get("litert_latency_ms")
            rows.append(row)
    dense = next((r["dense_macs"] for r in rows if r.get("dense_macs")), None)
    for r in rows:  # a cell without sparsity layers computes every MAC of the same architecture
        if r["cell"] and r["variant"] is None:
            r["macs"] = dense
    return rows


def wta_target(results):
    if not _variants(results, ("activation_sparsity",)):
        return None
    rows = [r for r in wta_rows(results) if r["model"].startswith("ATMC-8")]
    ref = rows[0]
    checks, missing = [], [r["key"] for r in rows if not r["cell"]]
    for r in rows[1:]:
        if r["cell"] and ref["cell"] and r["macs"] and ref["macs"]:
            ratio, d = r["macs"] / ref["macs"], r["robust"] - ref["robust"]
            lat, paid = r.get("latency"), []  # what the device pays for the masks
            if lat:
                paid.append(f"LiteRT {lat['with']:.3f} ms against {lat['without']:.3f} ms without the masks")
            if r["cell"].get("tflm_bytes") and ref["cell"].get("tflm_bytes"):
                paid.append(f"TFLM file {r['cell']['tflm_bytes']:,} B against ATMC-8's {ref['cell']['tflm_bytes']:,} B")
            cost = f" (what the device pays: {'; '.join(paid)})" if paid else ""
            checks.append((ratio <= 0.3 + 1e-9 and d >= -0.02 - 1e-9,
                           f"{r['key']}: effective MACs {ratio:.3f}x of ATMC-8's, robust {_pts(d)}" + cost))
    return {"id": "T10", "target": "ATMC-8 with activation sparsity: effective MACs (adversarial inputs) <= 0.3x of "
                                   "ATMC-8 alone for at most 2 points of robust accuracy",
            "status": MET if any(ok for ok, _ in checks) else _verdict(checks, missing),
            "evidence": [t for _, t in checks], "missing": [] if any(ok for ok, _ in checks) else missing}


def _wta_lines(results):
    if not _variants(results, ("activation_sparsity",)):
        return ["NOT RUN YET: `--variants=wta50,wta25` trains these cells.", ""]
    L = ["Winners-take-all activations (DASNet; `--activation_sparsity=wta`) in DA (trained from scratch with the "
         f"layers) and in ATMC-8 at ratio {HEADLINE_RATIO:g} from that DA. Robust = the lowest of plain PGD, PGD "
         "through the layers' straight-through (BPDA) surrogate and, once attacked, the worst case of PGD / APGD-CE / "
         "APGD-DLR: a top-k can mask gradients. Effective MACs: each Conv2D / Dense layer's MACs times its input's "
         "density on PGD test images (attacks may densify activations); a cell without the layers computes all "
         "of them. LiteRT latency: batch 1, 1 thread, median of 300, with the layers and the same weights "
         "without them (LiteRT skips no zero: the masks cost time). .tflite robust = its worst case once attacked "
         "(else transfer PGD). TFLM bytes: the microcontroller file (the masks' constants included).", "",
         "| model | WTA density | clean % | robust % | .tflite robust % | effective MACs | / no WTA | "
         "LiteRT ms with / without | TFLM bytes | robust - no WTA |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = wta_rows(results)
    for r in rows:
        c = r["cell"]
        if not c:
            L.append(f"| {r['model']} | {r['variant'] or '-'} | {NOT_RUN} | | | | | | | |")
            continue
        ref = next(x for x in rows if x["model"] == r["model"] and x["variant"] is None)
        rel = f"{r['macs'] / ref['macs']:.3f}" if r["macs"] and ref.get("macs") else "-"
        lat = r.get("latency") or {}
        lat_s = f"{lat['with']:.3f} / {lat['without']:.3f}" if lat else "-"
        gap = _pts(r["robust"] - ref["robust"]) if ref.get("cell") and r["variant"] else "-"
        L.append(f"| {r['model']} | {r['density']:g} | {_pct(c['clean_acc'])} | {_pct(r['robust'])} | "
                 f"{_pct(_lite_robust(c))} | {_bytes(round(r['macs'])) if r['macs'] else '-'} | {rel} | {lat_s} | "
                 f"{_bytes(c.get('tflm_bytes'))} | {gap} |")
    L.append("")
    return L + _wta_export_lines(rows)


def _wta_export_lines(rows):
    """The cells re-exported with the O(n) form of wide layers, against the pairwise export they replaced."""
    again = [r for r in rows if r["cell"] and r["cell"].get("pairwise_export")]
    if not again:
        return []
    L = ["The int8 export of the masks: layers wider than 32 units in the O(n) threshold-search form "
         "(`atmc_tf.export.winners`: every unit whose int8 score is >= the k-th largest kept) against the pairwise "
         "form (an n x n comparison and its n x n tie-break constant) the cells were first exported in; the same "
         "saved Keras models, re-exported with `--reexport_activation_sparsity`. LiteRT: batch 1, 1 thread, median "
         "of 300, with the masks.", "",
         "| model | WTA density | export | .tflite bytes | TFLM bytes | LiteRT ms | .tflite clean % | "
         ".tflite robust % | top-1 = Keras (clean) |", "|---|---|---|---|---|---|---|---|---|"]

    def line(r, form, v, worst):
        lat = (v.get("litert_latency_ms") or {}).get("with")
        L.append(f"| {r['model']} | {r['density']:g} | {form} | {_bytes(v.get('tflite_bytes'))} | "
                 f"{_bytes(v.get('tflm_bytes'))} | {'-' if lat is None else f'{lat:.3f}'} | "
                 f"{_pct(v['tflite_clean_acc']) if v.get('tflite_clean_acc') is not None else '-'} | "
                 f"{'-' if worst is None else _pct(worst)} | "
                 f"{'-' if v.get('top1_agreement') is None else _pct(v['top1_agreement'])} |")
    for r in again:
        c, old = r["cell"], r["cell"]["pairwise_export"]
        line(r, "pairwise", old, old.get("tflite_worst_case", old.get("tflite_robust_acc")))
        line(r, "threshold search", {**c, "litert_latency_ms": (c.get("activation") or {}).get("litert_latency_ms")},
             _lite_robust(c))
    L.append("")
    return L


# --- training objectives (issue 20) -------------------------------------------------------------

OBJ_RATIO = 0.003


def _worst_class(c):
    """(class, its .tflite worst-case robust accuracy) once the cell is attacked, else None."""
    pc = ((c.get("attacks") or {}).get("per_class") or {}).get("tflite_worst_case")
    if not pc:
        return None
    vals = [(v, i) for i, v in enumerate(pc) if v is not None]
    v, i = min(vals)
    return i, v


def _lite_robust(c):
    """The .tflite's robust figure: its worst case once attacked, else the transfer figure."""
    a = c.get("attacks") or {}
    return a.get("tflite_worst_case", c["tflite_robust_acc"])


# The models issue 20's objectives are trained on: ATMC-8 and (issue 16) structured ATMC-8, each against its own
# plain cell (the 0.5/0.5 mix).
OBJ_BASES = (("atmc8", OBJ_RATIO, "ATMC-8"), ("satmc8", 0.25, "structured ATMC-8"))
_OBJ_FIELDS = ("distill", "class_feedback", "clean_target_drop")


def objective_rows(results):
    """Per base of OBJ_BASES that has any cell: its plain cell first, then its objective variants."""
    rows = []
    for method, ratio, label in OBJ_BASES:
        base = cell_key(method, ratio)
        names = _variants(results, _OBJ_FIELDS, base + "~")
        if not names:
            continue
        for name in [None] + names:
            key = base if name is None else f"{base}~{name}"
            rows.append({"model": f"{label} @ {ratio:g}", "base": base, "variant": name, "key": key,
                         "cell": _done(results, key)})
    return rows


def objective_targets(results):
    rows = objective_rows(results)
    if not rows:
        return []
    refs = {r["base"]: r for r in rows if r["variant"] is None}
    out = []

    def pick(pred):
        return [r for r in rows if r["variant"] is not None and pred(r["cell"] or {})]
    for tid, text, chosen, check in (
            ("T11", f"robust distillation: ATMC-8 at {OBJ_RATIO:g} (and structured ATMC-8 at 0.25) at least +2 "
                    "points robust (.tflite) over the 0.5/0.5 mix", pick(lambda c: c.get("distill") not in (None, "off")),
             lambda c, ref: (_lite_robust(c) - _lite_robust(ref) >= 0.02 - 1e-9,
                        f"{_pts(_lite_robust(c) - _lite_robust(ref))} robust")),
            ("T12", "class feedback: the worst class's robust accuracy (.tflite) +5 points for at most 1 point of "
                    "average robust accuracy", pick(lambda c: c.get("class_feedback") not in (None, "off")),
             lambda c, ref: (_worst_class(c) is not None and _worst_class(ref) is not None
                        and _worst_class(c)[1] - _worst_class(ref)[1] >= 0.05 - 1e-9
                        and _lite_robust(c) - _lite_robust(ref) >= -0.01 - 1e-9,
                        f"worst class {_pts((_worst_class(c) or (0, 0))[1] - (_worst_class(ref) or (0, 0))[1])}, "
                        f"average {_pts(_lite_robust(c) - _lite_robust(ref))}")),
            ("T13", "clean target: met on the test set within 0.5 points while robust accuracy (.tflite) is at least "
                    "the 0.5/0.5 mix's", pick(lambda c: c.get("clean_target")),
             lambda c, ref: (1 - c["tflite_clean_acc"] <= c["clean_target"]["kappa"] + 0.005 + 1e-9
                        and _lite_robust(c) >= _lite_robust(ref) - 1e-9,
                        f"test clean error {_pct(1 - c['tflite_clean_acc'])}% vs target "
                        f"{_pct(c['clean_target']['kappa'])}%, robust {_pts(_lite_robust(c) - _lite_robust(ref))}"))):
        if not chosen:
            continue
        missing = [r["key"] for r in chosen if not r["cell"]]
        missing += list(dict.fromkeys(refs[r["base"]]["key"] for r in chosen if not refs[r["base"]]["cell"]))
        checks = []
        for r in chosen:
            ref = refs[r["base"]]["cell"]
            if r["cell"] and ref:
                ok, ev = check(r["cell"], ref)
                checks.append((ok, f"{r['key']}: {ev}"))
        out.append({"id": tid, "target": text, "status": _verdict(checks, missing),
                    "evidence": [t for _, t in checks], "missing": missing})
    return out


def _objective_lines(results):
    rows = objective_rows(results)
    if not rows:
        return ["NOT RUN YET: `--variants=ard,feedback,clean_target,objectives` (with ratio 0.003 in `--ratios`) "
                "trains these cells.", ""]
    L = [f"ATMC-8 at ratio {OBJ_RATIO:g} and structured ATMC-8 at kept ratio 0.25 (its plain cell is issue 16's "
         "satmc8@0.25), from the shared DA: the default 0.5 clean + 0.5 adversarial mix against "
         "each training objective of issue 20 alone and, as `objectives`, distillation and the clean target "
         "together (robust distillation from the DA model, `--distill=ard`; class feedback, "
         "`--class_feedback=reweight`; a clean target held by a multiplier, `--clean_target_drop=0.02`: the "
         "clean error at most the DA's validation error + 2 points). Class feedback balances the adversarial "
         "cross-entropy term, which distillation replaces, so the two do not compose (the pipeline refuses the "
         "pair). "
         ".tflite figures; robust = the .tflite worst case once attacked (else transfer PGD); worst class = the "
         "class with the lowest .tflite worst-case accuracy.", "",
         "| model | objective | clean % | robust % | worst class (robust %) | clean target (error) | time |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cell"]
        label = f"{r['model']} | " + ("0.5/0.5 mix" if r["variant"] is None else r["variant"])
        if not c:
            L.append(f"| {label} | {NOT_RUN} | | | | |")
            continue
        wc = _worst_class(c)
        worst = "-" if wc is None else f"{wc[0]} ({_pct(wc[1])})"
        ct = c.get("clean_target")
        target = "-" if not ct else f"<= {_pct(ct['kappa'])}%, test {_pct(1 - c['tflite_clean_acc'])}%"
        L.append(f"| {label} | {_pct(c['tflite_clean_acc'])} | {_pct(_lite_robust(c))} | {worst} | {target} | "
                 f"{_secs(c.get('train_seconds'))} |")
    L.append("")
    return L


# --- device bytes (issue 17) -----------------------------------------------------------------

_OP_SHORT = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "FULLY_CONNECTED": "fc"}


def _encodings(c):
    enc = c.get("tflm_encoding")
    if not enc:
        return "n/a"
    return ", ".join(f"{_OP_SHORT.get(t.get('op'), t.get('op', '?'))} " + _encoding(t) for t in enc)


def _encoding(t):
    """One kernel's TFLM encoding as the page names it: `lut 4b` (LUT indices of that width), `prune` (bitmap +
    values) or `dense` (int8, where neither saved bytes)."""
    if t.get("index_bits"):
        return f"lut {t['index_bits']}b"
    return "prune" if t.get("encoding") == "prune" else "dense"


def _device_lines(results):
    shown = [(k, results["cells"][k]) for k in _cell_keys(results)]
    if not shown:
        return ["NOT RUN YET.", ""]
    L = ["What the device stores. The int8 .tflite stores every kernel dense (int8 bytes = the `.tflite bytes` "
         "column). A phone (LiteRT) stores the smallest of that file, its INT4-packed form (uniform <= 4-bit "
         "kernels) and its sparse form (TFLite sparse tensors, `atmc_tf.export.to_litert_sparse`) that LiteRT runs "
         "with its default delegate and that keeps the int8 file's answers on the test split (`pipelines/phone.py`, "
         "as the pipeline ships it): phone bytes, with the file in brackets. A TFLite Micro device stores the batch-1 int8 "
         "model (`to_int8_tflite(batch_size=1)`) with each kernel in the smallest encoding TFLM's DECODE op reads "
         "(`atmc_tf.export.compress_for_micro`): per-channel look-up-table indices for few-valued kernels (`lut "
         "4b`), a bitmap of the nonzeros plus their values for sparse ones (`prune`), dense int8 where neither "
         "saves bytes: TFLM bytes = that file's size, the flash it costs. Its TFLM outputs are not re-checked "
         "here (the pipeline checks them bit-identical to the uncompressed model's). TFMOT's row compresses its "
         "own .tflite (tf_keras converter, dynamic batch), not a batch-1 re-export.", "",
         "| cell | robust % (.tflite) | int8 .tflite bytes | phone bytes (file) | TFLM batch-1, uncompressed "
         "| TFLM bytes (LUT / PRUNE) | TFLM / int8 .tflite | kernels (encoding, index bits) |", "|---|---|---|---|---|---|---|---|"]
    old = 0
    for k, c in shown:
        tb = c.get("tflm_bytes")
        old += tb is None or (c.get("phone_bytes") is None and c["method"] != "tfmot")
        frac = "-" if tb is None else f"{tb / c['tflite_bytes']:.3f}"
        phone = "n/a" if c.get("phone_bytes") is None else f"{c['phone_bytes']:,} ({c.get('phone_file')})"
        L.append(f"| {k} | {_pct(c['tflite_robust_acc'])} | {c['tflite_bytes']:,} | {phone} "
                 f"| {_bytes(c.get('tflm_b1_bytes'))} | {_bytes(tb)} | {frac} | {_encodings(c)} |")
    if old:
        L += ["", f"n/a: {old} cell(s) finished before device bytes were measured; "
              "`python -m benchmarks.benchmark --remeasure_device_bytes` (same flags as the run) fills them in from "
              "each cell's saved model."]
    L.append("")
    return L


# --- plot -----------------------------------------------------------------------------------

def _kb(v, _pos=None):
    return f"{v / 1e6:g} MB" if v >= 1e6 else f"{v / 1e3:g} kB" if v >= 1e3 else f"{v:g} B"


def plot_tradeoff(results, file):
    """Robust and clean accuracy vs paper-style size ratio, .tflite robust vs gzipped bytes and vs TFLite
    Micro flash bytes (the batch-1 int8 model, LUT- or PRUNE-compressed; cells without it are left out). The
    structured cells (issue 16) are drawn with diamonds; the variant cells are not drawn.

    Top row: every method on the full 0-1 scale. Bottom row: the same panels zoomed on the adversarially
    trained methods (NAP and TFMOT, near chance under attack, left out), where their differences show.
    """
    cells = [c for c in _pgd_trained(results) if c.get("status") == "done"]
    fig, grid = plt.subplots(2, 4, figsize=(22, 9.6))
    da = _done(results, "da")
    more = _done(results, "da_more")
    st = results.get("meta", {}).get("settings", {})
    attack = f"PGD-{st.get('eval_pgd_steps', '?')} x {st.get('eval_restarts', '?')}"
    panels = [("robust_acc", "paper_ratio", f"robust accuracy, {attack} (Keras)",
               "paper-style size / dense fp32 size (log)"),
              ("clean_acc", "paper_ratio", "clean accuracy (Keras)",
               "paper-style size / dense fp32 size (log)"),
              ("tflite_robust_acc", "tflite_gzip_bytes",
               "robust accuracy, int8 .tflite (transfer)", "gzipped int8 .tflite bytes (log)"),
              ("tflite_robust_acc", "tflm_bytes", "robust accuracy, int8 .tflite (transfer)",
               "TFLite Micro flash bytes: batch-1 int8, LUT / PRUNE (log)")]
    byte_axes = ("tflite_gzip_bytes", "tflm_bytes")
    ratios = _ratios(results)
    zoomed = tuple(m for m in COMPRESSED if m != "nap")
    for row, zoom in ((grid[0], False), (grid[1], True)):
        for ax, (ykey, xkey, ylabel, xlabel) in zip(row, panels, strict=True):
            shown = []
            for m in (zoomed if zoom else COMPRESSED + ("tfmot",)):
                if m == "tfmot" and xkey not in byte_axes:
                    continue
                pts = sorted((c[xkey], c[ykey]) for c in cells if c["method"] == m and c.get(xkey))
                if pts:
                    lamp = m.endswith("_lamp")
                    ax.plot([p[0] for p in pts], [p[1] for p in pts],
                            marker="s" if m == "tfmot" else "^" if lamp else "o", color=COLORS[m], label=LABELS[m],
                            linestyle=":" if m == "nap" else "--" if lamp else "-",
                            markerfacecolor="none" if lamp else None)
                    shown += [p[1] for p in pts]
            for m, color in STRUCT_COLORS.items():  # issue 16: channels cut, the model physically smaller
                pts = sorted((c[xkey], c[ykey]) for c in cells if c["method"] == m and c.get(xkey))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="D", color=color, label=STRUCT_LABELS[m],
                            linestyle="-.")
                    shown += [p[1] for p in pts]
            if da:
                ax.axhline(da[ykey], color="black", linestyle="--", linewidth=1, label=f"{LABELS['da']}")
                shown.append(da[ykey])
                if xkey in byte_axes and da.get(xkey):
                    ax.scatter([da[xkey]], [da[ykey]], color="black", marker="*", s=120, zorder=5)
            if more:  # the fair dense ceiling for the compressed cells
                ax.axhline(more[ykey], color="black", linestyle=":", linewidth=1, label=LABELS["da_more"])
                shown.append(more[ykey])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if xkey == "paper_ratio":
                xs = ratios + [c["paper_ratio"] for c in cells if c["method"] in STRUCT_COLORS and c.get("paper_ratio")]
                ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
                if len(xs) > len(ratios):  # structured cells widen the axis: ticks at 1 and 3 x 10^n
                    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 3.0)))
                    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
                else:
                    ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
            else:  # byte axes often span less than a decade: ticks at 1, 2 and 5 x 10^n, in kB / MB
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_kb))
            if zoom and shown:
                lo, hi = min(shown), max(shown)
                pad = max(0.005, 0.08 * (hi - lo))
                ax.set_ylim(lo - pad, hi + pad)
                ax.set_title("zoomed: adversarially trained methods", fontsize=9)
            else:
                ax.set_ylim(0, 1.0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(alpha=0.3, which="both")
    axes = list(grid.flat)
    if not cells:
        for ax in axes:
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), bbox_to_anchor=(0.5, -0.06))
    meta = results.get("meta", {})
    title = (f"{meta.get('dataset', '?')} / {meta.get('model', '?')}, L_inf eps={meta.get('eps', '?')}: "
             "size vs clean vs robust accuracy")
    if meta.get("quick"):
        title = "QUICK SMOKE RUN (not the benchmark): " + title
    fig.suptitle(title)
    save_png(fig, file)


# --- markdown -------------------------------------------------------------------------------

def _secs(s):
    if s is None:
        return "-"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def _bytes(v):
    """Bytes with thousands separators; n/a for a cell recorded before the field existed."""
    return "n/a" if v is None else f"{v:,}"


def _row(label, c, ratio_target=None):
    if c is None:
        return f"| {label} | not run yet ||||||||||||"
    if c.get("status") == "infeasible":
        return f"| {label} | infeasible: {c.get('reason', '')} ||||||||||||"
    extra = ""
    if c["method"] == "tfmot":
        mis = c.get("gzip_mismatch")
        extra = (f" (sparsity {c['sparsity']:.4f}; ATMC-8's gz {c['target_gzip_bytes']} B"
                 + (f", {100 * mis:+.1f}%" if mis is not None else "") + ")")
    return (f"| {label}{extra} | {_pct(c['clean_acc'])} | {_pct(c['robust_acc'])} | {_pct(c['tflite_clean_acc'])} | "
            f"{_pct(c['tflite_robust_acc'])} | {c['paper_bits']} | {c['paper_ratio']:.4f} | {c['nnz']} | "
            f"{c['tflite_bytes']} | {c['tflite_gzip_bytes']} | {_bytes(c.get('tflm_bytes'))} | "
            f"{_secs(c['train_seconds'])} | {c.get('lr', '-')} |")


TABLE_HEAD = ("| method | clean % (Keras) | robust % (Keras, PGD) | clean % (.tflite) | robust % (.tflite, transfer) | "
              "paper-style bits | size ratio | nonzeros | .tflite bytes | gzipped bytes | TFLM bytes | training time | "
              "lr |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _versions(meta):
    v = meta.get("versions", {})
    return ", ".join(f"{k} {v[k]}" for k in sorted(v) if v[k])


def markdown(results, png_name="benchmark_tradeoff.png", notes="."):
    """The page from results alone; `notes`: the folder of the docs pages it links to (why_sgd.md,
    al0_is_ap.md), relative to the page."""
    meta = results.get("meta", {})
    s = meta.get("settings", {})
    cells = results.get("cells", {})
    ratios = _ratios(results)
    methods = list(s.get("methods", METHODS))
    expected = ["da", "da_more"] + [cell_key(m, r) for r in ratios for m in methods if m != "da"]
    if s.get("tfmot", True) and "atmc8" in methods:
        expected += [cell_key("tfmot", r) for r in ratios]
    finished = [k for k in expected if k in cells]
    complete = len(finished) == len(expected) and results.get("timing") and results.get("pgd100")
    L = ["# Benchmark: robust accuracy at a given size (ATMC vs baselines vs TFMOT)", ""]
    if meta.get("quick"):
        L += ["> **QUICK SMOKE RUN (`--quick`)**: a few hundred images, one epoch per stage, a tiny attack. "
              "These numbers only show that the program works end to end; they are **not** the benchmark.", ""]
    if not meta:
        L += ["> **NOT RUN YET**: no results.json found.", ""]
    elif not complete:
        L += [f"> **PARTIAL: the full run is in progress or was interrupted.** {len(finished)} of {len(expected)} "
              f"cells finished (last update {results.get('updated', '?')}). Tables show only finished cells; "
              "everything else is NOT RUN YET. Re-render with `--render_only`.", ""]
    L += ["## How it was run", "",
          "```sh", meta.get("command", "(unknown)"), "```", "",
          f"- started {meta.get('started', '?')}, last update {results.get('updated', '?')}",
          f"- machine: {meta.get('machine', {}).get('cpu_model', '?')}, "
          f"{meta.get('machine', {}).get('nproc', '?')} CPU cores (nproc), "
          f"{meta.get('machine', {}).get('mem_gb', '?')} GB RAM, no GPU, "
          f"{meta.get('machine', {}).get('platform', '?')}; "
          f"process niceness {meta.get('machine', {}).get('nice', '?')}, shared with other jobs "
          "(timings are wall clock under that load)",
          f"- versions: {_versions(meta)}",
          f"- data: {meta.get('data', {})}",
          "- resume: run the same command again; finished cells are skipped and an interrupted training stage "
          "continues from its last epoch. `--render_only` rewrites this page and the PNG from "
          f"`{meta.get('workdir', '<workdir>')}/results.json`, or, without it, from `{RESULTS_COPY}` beside "
          "this page (the copy of the results every rendering writes).", ""]
    L += ["## Setting", "",
          f"- {meta.get('dataset', '?')}: {s.get('train', '?')} training images, {s.get('val', '?')} validation "
          "images carved from the 60k training set (stratified, seed 0) and used for every choice below, "
          f"{s.get('test', '?')} test images used only for the numbers in the tables.",
          f"- model: `{meta.get('model', '?')}` (atmc_tf.models; Caffe LeNet 20-50-500, "
          f"{meta.get('dense_weights', '?')} compressible weights, all four kernels compressed).",
          f"- training attack: L_inf PGD eps={meta.get('eps', '?')}, {s.get('pgd_steps', '?')} steps, step "
          f"2.5*eps/steps, random start; loss 0.5 clean + 0.5 adversarial; {_optimizer(s)}; batch "
          f"{s.get('batch_size', '?')}.",
          f"- evaluation attack: PGD-{s.get('eval_pgd_steps', '?')} with {s.get('eval_restarts', '?')} random "
          "restarts (per example the highest-loss restart), step 2.5*eps/steps, white-box on the Keras model. "
          "The int8 .tflite is evaluated on the SAME adversarial images (a transfer attack from its own Keras "
          "model: the int8 graph is not differentiated).",
          "- size ratio (paper-style): sum over the 4 kernels of nnz x ceil(log2(levels)) + levels x 32 bits "
          "(fp32 nonzeros: 32 bits each), divided by 32 x dense weights; no index overhead (the paper's "
          "accounting; `honest_bits` in results.json adds indices and per-channel scales). The budget k pays for "
          "the codebooks first: k = (ratio x 32 N - 4 x 2^b x 32) / b.",
          "- raw .tflite bytes hardly change with pruning (TFLite stores these kernels dense); the gzipped size "
          "(gzip -9) is what a sparse, few-valued model costs to ship.",
          "- training time: wall clock of the method's own stages (the shared DA stage is not included), "
          "on the loaded machine.", ""]
    L += ["## Methods", "",
          "All compressed models start from ONE shared DA checkpoint and get the same number of compression "
          f"epochs ({s.get('compress_epochs', '?')}):", "",
          "- **DA**: dense PGD adversarial training (the ceiling).",
          "- **NAP**: one-shot global magnitude pruning of the DA model, fine-tuned WITHOUT attack (the paper's NAP "
          "starts from a naturally trained model; here every method shares the DA checkpoint, as the issue asks).",
          "- **AP**: one-shot global magnitude pruning of DA, adversarial fine-tuning with the mask fixed.",
          "- **AL0**: adversarial training with the global top-k projection after every step, fp32 nonzeros.",
          "- **ATMC-32**: the ATMC chain AL0 -> ATMC-32 at the fp32 budget (half the epochs each). With "
          "`factorization=none` (the default; a factorised W = B(A+I)+C would not export as a sparse kernel) the "
          "ATMC-32 training step IS the AL0 step, so ATMC-32 and AL0 differ only by the optimizer restart and "
          "noise: expect them to tie.",
          "- **ATMC-8 / ATMC-4**: each with its OWN chain at its own budget k_b (more nonzeros than fp32 at "
          "the same bits): AL0 -> ATMC-32 -> ATMC-b (a third of the epochs each), the b-bit codebook enforced by "
          "ADMM (rho, every quant_interval steps) and exactly at the end. Codebook scheme `codebook_int8`: the "
          "2^b codes lie on TFLite's int8 per-channel lattice, so the .tflite stores the trained codes bit for bit "
          "(checked: `kernel_code_mismatches` = 0 in results.json).",
          "- **ATMC-2**: the same chain with 2-bit codes (issue 17: the smallest device file).",
          "- **AL0 (LAMP) / ATMC-8 (LAMP)**: AL0 and ATMC-8 with the one global L0 budget scored by LAMP "
          "(`--l0_scoring=lamp`, layer-adaptive, Lee et al. 2021) instead of |w|; same learning rate as AL0 / ATMC "
          "(issue 14: does it make the LeNet cells worse?).",
          "- **TFMOT prune+QAT** (own process, tf_keras / Keras 2, tensorflow-model-optimization): the same "
          "LeNet rebuilt in tf_keras with the DA weights copied in (logits checked equal), "
          "`prune_low_magnitude` (PolynomialDecay 0 -> s over 60% of the steps, per-layer sparsity s, natural "
          "fine-tuning: TFMOT offers no adversarial training), `strip_pruning`, then pruning-preserving QAT "
          "(`quantize_apply` with `Default8BitPrunePreserveQuantizeScheme`), full-int8 conversion. s is chosen "
          "per ratio so the gzipped .tflite matches ATMC-8's (bisection on the gzipped size of the pruned, "
          "QAT-wrapped model before training; the table shows the final size and the target). Its robust "
          "accuracy uses the same protocol: PGD crafted on its QAT tf_keras model (fake-quant, straight-through "
          "gradients), run on its .tflite. The ReLUs are fused into Conv2D/Dense there "
          "(`activation='relu'`, same function): with separate ReLU layers TFMOT 0.8.1's LayerReLUQuantize "
          "transform gives the convolutions a NoOpQuantizeConfig, so their kernels are neither fake-quantized "
          "nor kept sparse during QAT.", ""]
    # Hyper-parameters
    tuning = results.get("tuning", {})
    L += ["## Hyper-parameters (validation split only)", ""]
    if tuning:
        L += [tuning.get("note", ""), "", "| what | tried (val robust % / val clean %) | chosen |", "|---|---|---|"]
        rows = [("DA learning rate", tuning.get("da_lr"))]
        rows += [(f"{LABELS.get(f, f.upper())} learning rate", t) for f, t in tuning.get("lr", {}).items()]
        for name, t in rows:
            if not t:
                continue
            tried = ", ".join(f"lr {lr}: {_pct(v.get('val_adv_acc'))} / {_pct(v.get('val_clean_acc'))}"
                              for lr, v in t["grid"].items())
            L.append(f"| {name} | {tried} | {t.get('chosen')} ({t.get('how', '')}) |")
        L.append("")
    else:
        L += ["NOT RUN YET.", ""]
    L += [f"Fixed, not tuned: DA {s.get('da_epochs', '?')} epochs, {s.get('compress_epochs', '?')} compression "
          f"epochs, rho={s.get('rho', '?')}, quant_interval={s.get('quant_interval', '?')}, batch "
          f"{s.get('batch_size', '?')}, {_optimizer(s)}; TFMOT: {s.get('tfmot_prune_epochs', '?')} pruning + "
          f"{s.get('tfmot_qat_epochs', '?')} QAT epochs, Adam 1e-3 / 1e-4 (TFMOT guide defaults).", ""]
    if s.get("optimizer") == "sgd":
        L += ["Why SGD and not Adam (the benchmark's first full run, measured once): "
              f"[why_sgd.md]({notes}/why_sgd.md).", ""]
    # Targets
    L += ["## Targets", "", "| | target | status | evidence |", "|---|---|---|---|"]
    for t in targets(results):
        ev = "; ".join(t["evidence"]) or "-"
        if t["status"] != MET and t.get("missing"):
            ev += f" (missing: {', '.join(t['missing'][:8])}{' ...' if len(t['missing']) > 8 else ''})"
        L.append(f"| {t['id']} | {t['target']} | **{t['status']}** | {ev} |")
    L.append("")
    # Tables
    L += ["## Results per size ratio", "",
          f"![trade-off curves]({png_name})", "",
          "Robust accuracy: Keras = white-box PGD on the float Keras model; .tflite = the int8 model on those "
          "same images (transfer). DA is repeated in every table as the reference (size ratio 1), and so is "
          "DA trained on for as many epochs as every compressed cell gets on top of it (the fair dense "
          "ceiling: the compressed models have had that much more adversarial training).", ""]
    da = cells.get("da")
    for r in ratios:
        L += [f"### size ratio {r:g}", "", TABLE_HEAD, _row(LABELS["da"], da)]
        if cells.get("da_more"):  # runs made before this cell existed have none
            L.append(_row(LABELS["da_more"], cells["da_more"]))
        for m in methods:
            if m != "da":
                L.append(_row(LABELS[m], cells.get(cell_key(m, r))))
        if s.get("tfmot", True) and "atmc8" in methods:
            L.append(_row(LABELS["tfmot"], cells.get(cell_key("tfmot", r))))
        L.append("")
        a8, ap_ = cells.get(cell_key("atmc8", r)), cells.get(cell_key("ap", r))
        if a8 and ap_ and a8.get("status") == ap_.get("status") == "done":
            gz_a8, gz_ap = a8["tflite_gzip_bytes"], ap_["tflite_gzip_bytes"]
            L += [f"Deployed size at ratio {r:g}: AP's int8 .tflite is {gz_ap:,} B gzipped, "
                  f"ATMC-8's {gz_a8:,} B ({gz_a8 / gz_ap:.1f}x). "
                  "The paper-style ratio charges AP's nonzeros 32 bits each, but the int8 export stores every "
                  "kernel in 8 bits, so at equal paper-style size AP ships fewer nonzeros in fewer bytes; compare "
                  "the methods as shipped in the right-hand panel (robust accuracy against gzipped bytes).", ""]
        if _same_model(cells.get(cell_key("al0", r)), cells.get(cell_key("ap", r))):
            L += [f"AL0 and AP at ratio {r:g} are the same model (identical accuracies, .tflite bytes and gzipped "
                  f"size); why that can happen: [al0_is_ap.md]({notes}/al0_is_ap.md).", ""]
    L += ["## Against the paper", ""] + _order_lines(results)
    L += ["## At equal shipped size", ""] + _shipped_lines(results)
    L += ["## Attacks as reviewers run them: APGD, worst case, the .tflite attacked directly", ""] + \
        _attack_lines(results)
    L += ["## Cheaper adversarial training: FGSM-RS, N-FGSM and free against PGD", ""] + _fast_lines(results)
    L += ["## Structured (channel) sparsity: a smaller model, not a sparser one", ""] + _structured_lines(results)
    L += ["## Activation sparsity (winners-take-all) with robustness", ""] + _wta_lines(results)
    L += ["## Training objectives: distillation, class feedback, a clean target", ""] + _objective_lines(results)
    L += ["## Device bytes: LiteRT and TFLite Micro flash", ""] + _device_lines(results)
    L += ["## Magnitude vs LAMP scoring of the global L0 budget", ""] + _lamp_lines(results)
    # PGD-100
    p = results.get("pgd100")
    L += ["## Stronger attack on the best model", ""]
    if p:
        L += [f"Best compressed model at ratio {float(p['cell'].split('@')[1]):g} by "
              f"PGD-{s.get('eval_pgd_steps', '?')} robust "
              f"accuracy: **{p['cell']}**. PGD-{p['steps']} with {p['restarts']} "
              f"restart{'s' if p['restarts'] != 1 else ''}: Keras "
              f"{_pct(p['robust_acc'])}% (PGD-{s.get('eval_pgd_steps', '?')}: {_pct(p['robust_acc_eval'])}%), "
              f"int8 .tflite (transfer) {_pct(p['tflite_robust_acc'])}%; {_secs(p['seconds'])}.", ""]
    else:
        L += ["NOT RUN YET.", ""]
    # Timing
    tm = results.get("timing")
    L += ["## Cost of the constraints", ""]
    if tm:
        L += [f"Same process, back to back, same {tm['batch_size']}-image batches, PGD-{tm['pgd_steps']} "
              f"training attack, {tm['steps']} steps x {tm['rounds']} alternating rounds after warm-up "
              f"(median per step; TF op determinism {'on' if tm.get('op_determinism') else 'off'}, as in the "
              f"training runs; load average {tm.get('loadavg', '?')}):", "",
              "| trainer | time per step | ratio to bare PGD-AT |", "|---|---|---|",
              f"| bare PGD-AT (ATMCTrainer, method da, unwrapped model) | {1000 * tm['bare_step_s']:.1f} ms | 1 |"]
        for b in (8, 4):
            if tm.get(f"atmc{b}_step_s") is not None:
                L.append(f"| ATMC-{b} (wrapped, global top-k every step, ADMM codebook every "
                         f"{tm['quant_interval']} steps, k={tm.get(f'k{b}')}) | "
                         f"{1000 * tm[f'atmc{b}_step_s']:.1f} ms | "
                         f"{tm[f'ratio_atmc{b}']:.3f} |")
        L.append("")
        for h in results.get("timing_history", []):
            old = h.get("timing") or {}
            shown = ", ".join(f"ATMC-{b} {old[f'ratio_atmc{b}']:.3f}" for b in (8, 4)
                              if old.get(f"ratio_atmc{b}") is not None)
            if shown:
                L += [f"Earlier measurement in this workdir, replaced by `--retime` on {h.get('replaced', '?')}: "
                      f"{shown}.", ""]
    else:
        L += ["Step-time ratio: NOT RUN YET.", ""]
    rc = results.get("resnet50_cost")
    if rc and rc.get("skipped"):
        L += [f"ResNet-50-size cost: skipped in this run ({rc['skipped']}).", ""]
    elif rc:
        L += [f"ResNet-50-size weight set: `keras.applications.ResNet50(weights=None)` ({rc['tensors']} conv/dense "
              f"kernels, {rc['weights']} weights), input {rc['input']}x{rc['input']}x3, batch {rc['batch']}, "
              f"{rc['reps']} timed repetition(s) after warm-up, on this CPU:", "",
              "| operation | seconds |", "|---|---|",
              f"| one natural training step (SGD) | {rc['natural_step_s']:.3f} |"]
        if rc.get("pgd_step_s") is not None:
            L.append(f"| one PGD-{rc['pgd_steps']} adversarial training step (ATMCTrainer, da) | "
                     f"{rc['pgd_step_s']:.3f} |")
        for b in rc.get("bits", []):
            e = rc["per_bits"][str(b)]
            L.append(f"| global L0 projection, k={e['k']} (ATMC-{b} budget at ratio {rc['ratio']:g}), cold | "
                     f"{e['project_l0_s']:.3f} |")
            if e.get("project_l0_warm_s") is not None:
                L.append(f"| the same, warm-started after one SGD step (lr {rc.get('warm_step_lr', '?')}) as in "
                         f"training ({e.get('warm_candidates', '?'):,} candidates) | {e['project_l0_warm_s']:.3f} |")
            L.append(f"| codebook fit + projection of every kernel ({rc['quant_scheme']}, b={b}) | "
                     f"{e['codebook_s']:.3f} |")
        warm = any(rc["per_bits"][str(b)].get("project_l0_warm_s") is not None for b in rc.get("bits", []))
        L += ["", "| b | (cold projection + codebook fit) / natural step | ... / PGD-AT step | per-step share, "
              f"{'warm projection' if warm else 'projection'} every step and the codebook every "
              f"{rc['quant_interval']} steps, / PGD-AT step |", "|---|---|---|---|"]
        for b in rc.get("bits", []):
            e = rc["per_bits"][str(b)]
            fmt = lambda key: "-" if e.get(key) is None else f"{e[key]:.3f}"  # noqa: E731
            L.append(f"| {b} | {fmt('fraction_of_natural_step')} | {fmt('fraction_of_pgd_step')} | "
                     f"{fmt('amortized_fraction_of_pgd_step')} |")
        L.append("")
    else:
        L += ["ResNet-50-size cost: NOT RUN YET.", ""]
    L += ["## Reproduce", "",
          "```sh",
          "apt-get install dataset-fashion-mnist      # the data (Debian), nothing is downloaded at run time",
          "nohup nice -n 10 tools/env.sh python -m benchmarks.benchmark --workdir=runs/bench > runs/bench.log 2>&1 &",
          "tools/env.sh python -m benchmarks.benchmark --workdir=runs/bench --render_only   # this page + PNG",
          "tools/env.sh python -m benchmarks.benchmark --quick --workdir=/tmp/bq             # smoke test, minutes",
          "```", ""]
    return "\n".join(L)


def render(results, docs_dir):
    """Write BENCHMARKS.md, benchmark_tradeoff.png and the results they come from (RESULTS_COPY, so that
    the page can be committed with its source and re-rendered without the workdir) into docs_dir;
    returns the paths of the page and the PNG."""
    os.makedirs(docs_dir, exist_ok=True)
    png = os.path.join(docs_dir, "benchmark_tradeoff.png")
    md = os.path.join(docs_dir, "BENCHMARKS.md")
    atomic.write_json_atomic(os.path.join(docs_dir, RESULTS_COPY), results)
    plot_tradeoff(results, png)
    notes = os.path.relpath(DOCS, os.path.abspath(docs_dir)).replace(os.sep, "/")
    atomic.write_text_atomic(md, markdown(results, os.path.basename(png), notes))
    return md, png


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
