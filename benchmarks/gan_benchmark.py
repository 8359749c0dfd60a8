"""Benchmark: GAN Slimming (one run: distillation + LSGAN + channel sparsity + quantization) against the
stacked baseline it argues against (prune -> fine-tune -> quantize, in sequence), at 1/4, 1/8 and 1/16 of
the teacher's MACs, on class-conditional Fashion-MNIST (28x28).

    python -m benchmarks.gan_benchmark --page=docs/gan_benchmark.md     # the full run: CPU hours, resumable
    python -m benchmarks.gan_benchmark --quick --workdir=/tmp/gsq          # smoke test on digits: seconds

ONE teacher (pipelines.gan's teacher stage: classifier + dense LSGAN generator) in <workdir>/teacher; then
per (method, MAC target) a cell in <workdir>/cells/<method>_<d> (a pipelines.gan workdir whose teacher/ is
a link to the shared one), scored by pipelines.gan's export and report stages:
- gs: pipelines.gan's student stage (--sparsity=l1_prox) with --mac_budget = 1/d: its channel budget is the
  longest prefix of its own ranking (BN gammas, per-tensor normalised) whose exact MACs fit
  (atmc_tf.constraints.mac_masks), re-chosen every step as the gammas move, ramped from all channels; with
  --finetune_epochs=f, GS trains --student_epochs - f epochs and its cut subnet is fine-tuned f more (GS's last
  step: distillation + LSGAN + b-bit STE, its own discriminator), so both methods train --student_epochs;
  f defaults to a third of them (digits, 2026-12-02, one seed, 20 epochs: FD-digits at 1/8 of the MACs 2.513
  with 13 + 7 against 4.366 with 20 + 0; the stacked baseline 4.908).
- stacked: the teacher's channels pruned ONCE by the same rule on the teacher's gammas (mac_masks, same
  MAC budget) and cut, then fine-tuned with distillation + LSGAN (no quantization, no sparsity,
  --student_epochs epochs), then quantized post-training: every Conv2D / Dense kernel projected to the
  --bits per-channel lattice (the lattice GS trains on) before the int8 export. No QAT step.
Both are at or under the MAC target by construction (the MAC model is exact for a cut generator:
atmc_tf.gan.channel_mac_model); they may keep different channel counts (a channel at 28x28 costs 4x one
at 14x14), and each cell records its measured MACs. (Until 2026-12-02 GS got the stacked model's channel
COUNT instead and ended under its MACs: 0.079 against 0.119 of the teacher's at 1/8 on digits.)

Results: <workdir>/results.json (a cell written atomically when it finishes; a rerun skips finished cells and
refuses, exit 2, a workdir of other settings) and the page <workdir>/gan_benchmark.md (also --page, with
the JSON copied beside it). pipelines.gan's flags (--dataset, --bits, --distill_weight, --sparsity, ...)
apply; --channel_budget and --mac_budget do not (the MAC targets set the budget).
"""
import json
import os
import time

from absl import app, flags, logging

from benchmarks.pipeline_cells import open_results, provenance_lines, quick_defaults, write_json, write_page
from pipelines import gan as P

F = flags.FLAGS
METHODS = ("gs", "stacked")
GOAL_D = 8  # the stated target: at 1/8 of the MACs, FD within 10% of the teacher's and better than stacked
# --quick: explicit flags win
QUICK = {"dataset": "digits", "teacher_epochs": 1, "classifier_epochs": 1, "student_epochs": 1, "width": 8,
         "z_dim": 8, "eval_samples": 30, "mac_targets": ["8"], "micro": False, "limit_train": 256}


def define_flags():
    P.define_flags()
    F.set_default("dataset", "fashion_mnist")
    F.set_default("workdir", "runs/gan_benchmark")
    flags.DEFINE_bool("quick", False, "Smoke-test settings (digits, 256 images, 1 epoch per stage, width 8, one MAC target "
                      "1/8, no TFLite Micro check): seconds, not the benchmark. Explicit flags win.")
    flags.DEFINE_list("mac_targets", ["4", "8", "16"], "MAC targets as denominators d: 1/d of the teacher's MACs, "
                      "trained in this order (the page sorts them).")
    flags.DEFINE_list("methods", list(METHODS), f"Methods, from {', '.join(METHODS)}.")
    flags.DEFINE_string("page", None, "Also write the page here (and the results JSON beside it, *.json).")


def parse_flags(argv):
    rest = P.parse_flags(argv)
    if F.quick:
        quick_defaults(F, QUICK)
    try:
        targets = [int(d) for d in F.mac_targets]
    except ValueError:
        P.fail(f"--mac_targets={','.join(F.mac_targets)} must be integers d (targets 1/d of the teacher's MACs)")
    if not targets or min(targets) < 2:
        P.fail(f"--mac_targets={','.join(F.mac_targets)} must each be >= 2 (1/d of the teacher's MACs)")
    bad = [m for m in F.methods if m not in METHODS]
    if bad or not F.methods:
        P.fail(f"--methods={','.join(F.methods)} is not a list of {', '.join(METHODS)}")
    for name in ("channel_budget", "mac_budget"):
        if F[name].value != F[name].default:
            P.fail(f"--{name} does not apply here (each MAC target sets the budget); drop it")
    if F.sparsity != "l1_prox":
        P.fail(f"--sparsity={F.sparsity}: the benchmark's GS cells need --sparsity=l1_prox (their MAC budget)")
    if not F["finetune_epochs"].present:  # GS's share of fine-tuning: a third of the epochs
        F.finetune_epochs = F.student_epochs // 3
    if F.finetune_epochs >= F.student_epochs:
        P.fail(f"--finetune_epochs={F.finetune_epochs} must be less than --student_epochs={F.student_epochs} (GS trains "
               "the difference, then fine-tunes)")
    return rest


def settings():
    out = {k: F[k].value for k in P.IDENTITY if k not in ("channel_budget", "mac_budget")}
    out.update(mac_targets=[int(d) for d in F.mac_targets], methods=list(F.methods), micro=F.micro,
               budget="mac_masks at MACs / d (both methods)",
               stacked="prune(mac_masks)->finetune(distill+lsgan)->ptq(bits lattice)")
    if out["min_channels"] == 1:  # the rule before --min_channels existed: results files of then stay resumable
        del out["min_channels"]
    return out


# --- MAC target -> channel budget -------------------------------------------------------------

def pruned_copy(gen, d, dense=False, floor=1):
    """(copy of `gen`, kept channels): its prunable BNs (the project Dense's too when dense) keep the channels
    mac_masks keeps at 1/d of its MACs (gamma, beta of the others zeroed, so cut_generator removes them)."""
    import keras

    from atmc_tf import gan
    from atmc_tf.constraints import BNChannelL1Prox
    from atmc_tf.export.surgery import count_macs
    copy = keras.models.clone_model(gen)
    copy.set_weights(gen.get_weights())
    # GS's own budget step, once, without a threshold: mac_masks on the (grouped) gammas, betas of cut channels 0
    prox = BNChannelL1Prox(threshold=0.0, budget=count_macs(gen) / d, mac_model=gan.channel_mac_model(gen, dense),
                           groups=gan.channel_groups(copy, dense), floor=floor)
    variables = [v for _, bn in gan.prunable_bns(copy, dense) for v in (bn.gamma, bn.beta)]
    prox.build(variables, None)
    out = prox.finalize([v.value for v in variables], None)
    for v, value in zip(variables, out):
        v.assign(value)
    return copy, int(prox.metrics(out)["live_channels"])


def reachable(teacher, d, dense=False):
    """True if 1/d of the teacher's MACs holds the generator with one channel per prunable layer."""
    from atmc_tf import gan
    from atmc_tf.export.surgery import count_macs
    return P.mac_masks_least(gan.channel_mac_model(teacher, dense)) <= count_macs(teacher) / d


# --- the stacked baseline's student stage ------------------------------------------------------

def stage_stacked_student(ds, d):
    """Prune the teacher to 1/d of its MACs (mac_masks) and cut it, fine-tune (distillation + LSGAN, float), then project the
    kernels to the --bits lattice post-training; writes the same student/ files as pipelines.gan."""
    import keras

    from atmc_tf import gan
    from atmc_tf.constraints.quantize import quantize_uniform_int8
    os.makedirs(P._path("student"), exist_ok=True)
    keras.utils.set_random_seed(F.seed + 1)
    t0 = time.time()
    teacher = P._load(P._path("teacher", "generator.keras"))
    teacher.trainable = False
    disc = P._load(P._path("teacher", "discriminator.keras"))
    # a copy that is not frozen
    pruned, k = pruned_copy(P._load(P._path("teacher", "generator.keras")), d, F.prune_project, F.min_channels)
    live = gan.live_channels(pruned, F.prune_project)
    small, cut = gan.cut_generator(pruned)
    trainer = gan.GANTrainer(small, disc, ds.num_classes, F.z_dim, teacher=teacher, distill_weight=F.distill_weight,
                             seed=F.seed + 1)
    trainer.compile(P._adam(), P._adam())
    ckpt = P._fit_resumable(trainer, ds, F.student_epochs, "student")
    for layer in small.layers:  # post-training quantization to the same bits
        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense):
            layer.kernel.assign(quantize_uniform_int8(layer.kernel.value, F.bits)[0])
    small.save(P._path("student", "student.keras"))
    total = sum(n for _, n in gan.live_channels(teacher, F.prune_project).values())
    floor = f" (each layer's {F.min_channels} largest first)" if F.min_channels != 1 else ""
    recipe = (f"stacked baseline: the teacher's channels pruned once by mac_masks{floor} at 1/{d} of its MACs and cut, "
              f"fine-tuned {F.student_epochs} epochs with distillation (weight {F.distill_weight:g}) + LSGAN in float, "
              f"then every kernel projected to the {F.bits}-bit lattice post-training; no sparsity term, no STE")
    facts = {"channels_total": total, "channel_budget": k, "live": live, **cut, "seconds": time.time() - t0,
             "recipe": recipe, **P._fit_facts(ckpt)}
    print(f"stacked: {k} of {total} channels, MACs {cut['macs_before']:,} -> {cut['macs_after']:,}, fine-tuned "
          f"{F.student_epochs} epochs, PTQ {F.bits} bits, {facts['seconds']:.0f} s")
    P._finish("student", facts)
    ckpt.delete()
    return facts


# --- cells ---------------------------------------------------------------------------------------

def run_cell(ds, bench_dir, method, d):
    cell_dir = os.path.join(bench_dir, "cells", f"{method}_{d}")
    os.makedirs(cell_dir, exist_ok=True)
    link = os.path.join(cell_dir, "teacher")
    if not os.path.lexists(link):
        os.symlink(os.path.join("..", "..", "teacher"), link)
    saved = {k: F[k].value for k in ("workdir", "mac_budget", "student_epochs", "finetune_epochs")}
    F.workdir = cell_dir
    try:
        F.mac_budget = None if method == "stacked" else 1.0 / d
        if method == "stacked":  # its fine-tune is its student stage: --student_epochs epochs
            F.finetune_epochs = 0
        else:  # GS then fine-tune, --student_epochs in all
            F.student_epochs = saved["student_epochs"] - saved["finetune_epochs"]
        t0 = time.time()
        student = stage_stacked_student if method == "stacked" else P.stage_student
        for name, fn in (("student", lambda: student(ds, d) if method == "stacked" else student(ds)),
                         ("finetune", lambda: P.stage_finetune(ds)),
                         ("export", lambda: P.stage_export(ds)), ("report", lambda: P.stage_report(ds))):
            if P._done(name) is None:
                os.makedirs(P._path(name), exist_ok=True)
                fn()
        report = json.load(open(os.path.join(cell_dir, "report.json")))
    finally:
        for k, v in saved.items():
            F[k].value = v
    row, exp = report["rows"]["student (int8 .tflite)"], report["export"]["student"]
    teacher_macs = report["rows"]["teacher (Keras)"]["macs"]
    cell = {"method": method, "mac_target": f"1/{d}", "d": d, "channel_budget": report["student"]["channel_budget"],
            "channels_total": report["student"]["channels_total"], "fd": row["fd"], "cond_acc": row["cond_acc"],
            "fd_keras": report["rows"]["student (Keras)"]["fd"], "macs": row["macs"],
            "macs_ratio": row["macs"] / teacher_macs, "at_or_under_target": row["macs"] * d <= teacher_macs,
            "params": row["params"], "tflite_bytes": exp["tflite_bytes"], "device_bytes": exp["device_bytes"],
            "litert_latency_ms": exp["litert_latency_ms"], "seconds": time.time() - t0, "dir": cell_dir}
    return cell, report


# --- the page --------------------------------------------------------------------------------------

def goal_status(results):
    """'met' / 'not met' / 'not yet measured' for: at 1/8 of the MACs, GS's FD within 10% of the teacher's
    and better (lower) than the stacked baseline's."""
    cells, teacher = results.get("cells", {}), results.get("teacher")
    gs, st = cells.get(f"gs@1/{GOAL_D}"), cells.get(f"stacked@1/{GOAL_D}")
    if teacher is None or gs is None or st is None:
        return "not yet measured", "needs the teacher and both cells at 1/8"
    ok_fd = gs["fd"] <= 1.1 * teacher["fd"]
    why = (f"GS {gs['fd']:.3f} vs teacher {teacher['fd']:.3f} (limit {1.1 * teacher['fd']:.3f}) and stacked "
           f"{st['fd']:.3f}; GS MACs {gs['macs_ratio']:.4f} of the teacher's")
    met = ok_fd and gs["fd"] < st["fd"] and gs["at_or_under_target"]
    return ("met" if met else "not met"), why


def render(results):
    s, t = results["settings"], results.get("teacher")
    fd_name = results.get("fd_name", "FD")
    status, why = goal_status(results)
    title = "Fashion-MNIST" if s["dataset"] == "fashion_mnist" else f"{s['dataset']} (8x8), NOT Fashion-MNIST"
    lines = [f"# GAN Slimming benchmark on {title}", ""]
    if results.get("quick"):
        lines += ["**Smoke test (--quick): tiny settings, the figures mean nothing.**", ""]
    ft = s.get("finetune_epochs", 0)
    lines += ["GS: one run of distillation + LSGAN + channel sparsity "
              f"({s['sparsity']}) + {s['bits']}-bit quantization (STE)"
              + (f", {s['student_epochs'] - ft} epochs, then its cut subnet fine-tuned {ft} epochs (distillation + "
                 "LSGAN + STE)" if ft else f", {s['student_epochs']} epochs, no fine-tune after the cut")
              + f". Stacked (fine-tuned {s['student_epochs']} epochs): prune the teacher's channels by "
              "the same rule once (mac_masks on the teacher's BN gammas), fine-tune with distillation + LSGAN (float), "
              f"then post-training quantization to the {s['bits']}-bit lattice. Budget of both: the longest prefix "
              "of the channel ranking whose exact MACs are at most 1/d of the teacher's (GS re-ranks every step); "
              "the channels column is what each kept. One run per cell, one seed: no confidence interval.",
              f"{fd_name}: Frechet distance in the features of the project's own classifier (not FID), "
              f"{s['eval_samples']} samples vs the test images; cond. acc: that classifier on class-conditional "
              "samples. Student rows are the int8 .tflite (LiteRT); the teacher row is Keras float.", "",
              f"**Target** (at 1/{GOAL_D} of the MACs, {fd_name} within 10% of the teacher's and better than the "
              f"stacked baseline): **{status}** ({why}).", "",
              f"| model | MAC target | {fd_name} | cond. acc | MACs (ratio) | at/under | channels | .tflite bytes | "
              "micro file bytes | LiteRT ms (b1, 1 thread) |", "|---|---|---|---|---|---|---|---|---|---|"]
    if t:
        lines.append(f"| teacher | 1 | {t['fd']:.3f} | {t['cond_acc']:.3f} | {t['macs']:,} (1) | | "
                     f"{t['channels']} | {t['tflite_bytes']:,} | | {t['litert_latency_ms']:.3f} |")
    for d in sorted(s["mac_targets"]):  # a run may train them in another order (--mac_targets=8,4,16)
        for m in s["methods"]:
            c = results.get("cells", {}).get(f"{m}@1/{d}")
            if c is None:
                lines.append(f"| {m} | 1/{d} | not run yet | | | | | | | |")
                continue
            micro = c["device_bytes"].get("micro")
            lines.append(f"| {m} | 1/{d} | {c['fd']:.3f} | {c['cond_acc']:.3f} | {c['macs']:,} ({c['macs_ratio']:.4f}) "
                         f"| {'yes' if c['at_or_under_target'] else 'no'} | {c['channel_budget']}/{c['channels_total']} "
                         f"| {c['tflite_bytes']:,} | {f'{micro:,}' if micro else 'not run'} | "
                         f"{c['litert_latency_ms']:.3f} |")
    floor = results.get("real_training_images")
    if floor:
        lines.append(f"| real training images (floor) | | {floor['fd']:.3f} | {floor['cond_acc']:.3f} | | | | | | |")
    return "\n".join(lines + provenance_lines(results))


# --- main --------------------------------------------------------------------------------------

def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from atmc_tf.data import DataError, load_dataset
    from atmc_tf.export.surgery import count_macs
    bench_dir = F.workdir
    res_path = os.path.join(bench_dir, "results.json")
    results = open_results(bench_dir, settings(), F.quick, "benchmarks.gan_benchmark")
    try:
        ds = load_dataset(F.dataset, data_dir=F.data_dir, seed=F.seed, limit_train=F.limit_train)
    except DataError as err:
        P.fail(err)
    if P._done("teacher") is None:
        os.makedirs(P._path("teacher"), exist_ok=True)
        P.stage_teacher(ds)
    else:
        print("teacher: done (resumed)")
    teacher = P._load(os.path.join(bench_dir, "teacher", "generator.keras"))
    out_of_reach = [d for d in results["settings"]["mac_targets"] if not reachable(teacher, d, F.prune_project)]
    if out_of_reach:
        P.fail(f"--mac_targets: 1/{out_of_reach[0]} of the teacher's {count_macs(teacher):,} MACs is less than its "
               "generator with one channel per prunable layer; use larger targets (smaller d)")
    for d in results["settings"]["mac_targets"]:
        for m in results["settings"]["methods"]:
            key = f"{m}@1/{d}"
            if key in results["cells"]:
                print(f"{key}: done (resumed)")
                continue
            cell, report = run_cell(ds, bench_dir, m, d)
            if "teacher" not in results:
                tr, te = report["rows"]["teacher (Keras)"], report["export"]["teacher"]
                results["teacher"] = {"fd": tr["fd"], "cond_acc": tr["cond_acc"], "macs": tr["macs"],
                                      "params": tr["params"], "tflite_bytes": te["tflite_bytes"],
                                      "litert_latency_ms": te["litert_latency_ms"],
                                      "channels": report["student"]["channels_total"]}
                results["real_training_images"] = report["real_test_images"]
                results["fd_name"] = report["fd_name"]
            results["cells"][key] = cell
            write_json(res_path, results)
            print(f"{key}: {results['fd_name']} {cell['fd']:.3f} (teacher {results['teacher']['fd']:.3f}), cond. acc "
                  f"{cell['cond_acc']:.3f}, MACs ratio {cell['macs_ratio']:.4f}, {cell['tflite_bytes']:,} bytes")
    page_file = write_page(bench_dir, "gan_benchmark.md", render(results), F.page)
    status, why = goal_status(results)
    print(f"target at 1/{GOAL_D}: {status} ({why}) -> {page_file}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
