"""--method=boost: robust multiclass boosting of small ATMC-compressed learners, shipped as one int8 file.

Design (flags): each round's learner is a fresh --model (built-in models only: --model_file is refused),
compressed under one global nonzero budget of --size_ratio x its compressible weights (ATMC-32: the al0
constraint set; --bits is not used; weights compete by --l0_scoring, the budget falls over --l0_ramp of its
steps), trained for --boost_epochs epochs with Adam at --da_lr (a learner starts from a random init, as the
dense stage does; --lr is the compression stages' fine-tuning rate) against the
round's costs (atmc_tf.training.terms.CostSensitiveAdversarialLoss, PGD at --eps with --pgd_steps),
--rounds rounds (atmc_tf.boosting.loop: the costs, edges and weights of AdaBoost.MM, robust margins
measured at PGD examples against the whole ensemble). No dense stage runs. After every round the
ensemble is attacked as a whole on the test split (PGD with --eval_pgd_steps, APGD-CE, APGD-DLR through
its combined scores; worst case per example). The final ensemble goes to ONE int8 .tflite (LiteRT) and
its batch-1 / microcontroller files (TFLite Micro), checked and counted as the other methods' are.
An ensemble with no voting learner, or at chance, is a collapse (report, exit 4 unless --allow_collapse).

Outputs under --workdir: boost/ (learners and boost.json: the per-round checkpoint, resumable),
export/, report.json, report.md (per-round table), robust_per_round.png.
"""
import os
import time

from absl import logging

STAGE = "boost"


def _learner_factory(cfg, data):
    from atmc_tf.models import build_model
    return lambda seed: build_model(cfg.model, data.input_shape, data.num_classes, seed=seed)


def _eval_attacks(cfg):
    from atmc_tf.attacks import APGDConfig
    from pipelines.stages import eval_attack
    eps, steps = float(cfg.eps), cfg.eval_pgd_steps
    return {"pgd": eval_attack(cfg), "apgd-ce": APGDConfig(eps=eps, steps=steps, loss="ce"),
            "apgd-dlr": APGDConfig(eps=eps, steps=steps, loss="dlr")}


def plot_rounds(rounds, file, title):
    from pipelines import report as rep
    fig, ax = rep.plt.subplots(figsize=(6, 3.5))
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [r["clean"] for r in rounds], marker="o", label="clean")
    ax.plot(xs, [r["worst_case"] for r in rounds], marker="o", label="robust (worst of PGD, APGD-CE, APGD-DLR)")
    ax.set_xlabel("boosting round (learners in the ensemble)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(xs)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    rep.save_png(fig, file)


def collapse_problem(rounds, clean_acc, num_classes, margin=0.1):
    """One line when the ensemble is destroyed (no learner has a robust edge, or its clean accuracy is within
    `margin` of chance), naming the learners' layers their budget left with no weight; else None."""
    chance = 1.0 / num_classes
    reasons = []
    if not any(r["alpha"] > 0 for r in rounds):
        reasons.append("no learner has a robust edge (every learner weight is 0)")
    if clean_acc <= chance + margin:
        reasons.append(f"its clean accuracy {100 * clean_acc:.1f}% is at chance ({100 * chance:.0f}%)")
    if not reasons:
        return None
    cut = [f"learner {r['round']}: {', '.join(r['cut'])}" for r in rounds if r.get("cut")]
    return ("the boosted ensemble collapsed: " + "; ".join(reasons)
            + (f" (layers left with no weight: {'; '.join(cut)})" if cut else ""))


def markdown(report):
    s, rounds = report["summary"], report["rounds"]
    lines = [f"# Robust boosting: {report['config']['dataset']}/{report['config']['model']}, "
             f"{len(rounds)} rounds", "",
             f"eps {report['config']['eps']}; each learner: {report['config']['model']} at size ratio "
             f"{report['config']['size_ratio']} (one global nonzero budget), {report['config']['boost_epochs']} "
             "epochs of PGD adversarial training against the round's costs (AdaBoost.MM, Mukherjee and "
             "Schapire 2013; robust margins at PGD examples against the whole ensemble).", "",
             *([f"**Warning: {report['collapse']['problem']}.**", ""] if report["collapse"]["problem"] else []),
             "## Per round (the ensemble so far, attacked as a whole on the test split)", "",
             "| round | edge | learner weight | clean | PGD | APGD-CE | APGD-DLR | robust (worst case) | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        pa = r["per_attack"]
        lines.append(f"| {r['round']} | {r['edge']:.4f} | {r['alpha']:.4f} | {r['clean']:.3f} | {pa['pgd']:.3f} | "
                     f"{pa['apgd-ce']:.3f} | {pa['apgd-dlr']:.3f} | {r['worst_case']:.3f} | {r['train_seconds']:.1f} |")
    silent = [f"{r['round']}" + (f" (no weight in {', '.join(r['cut'])})" if r.get("cut") else "")
              for r in rounds if r["alpha"] <= 0]
    if silent:
        lines += ["", f"Learners with no robust edge (weight 0, kept in the graph but not voting): {', '.join(silent)}."]
    d, m = report["device_bytes"], report["micro"]
    lines += ["", "![robust accuracy per round](robust_per_round.png)", "",
              "## The shipped ensemble (one int8 .tflite)", "",
              f"- Keras clean {s['keras_clean']:.3f}, int8 .tflite (LiteRT) clean {s['tflite_clean']:.3f} "
              f"(difference {100 * (s['tflite_clean'] - s['keras_clean']):+.1f} points, top-1 agreement "
              f"{report['phone']['top1_agreement']:.3f}); PGD transferred from Keras: Keras "
              f"{s['keras_robust_pgd']:.3f}, .tflite {s['tflite_robust_transfer']:.3f}",
              f"- TFLite Micro: {'ok' if m['ok'] else 'FAILED: ' + str(m['error'])} ({m['samples_checked']} images, "
              f"max difference {m['max_abs_diff_vs_litert']} int8 steps of the output (allowed "
              f"{m.get('max_step_diff', 1)}: one softmax step, 1/256, plus one), arena {m['arena_bytes']} bytes); "
              f"compressed microcontroller file bit-identical: {report['micro_compressed']['ok']}",
              f"- Device bytes: phone {d['litert']}, microcontroller {d['tflm']} (batch-1 before its compression "
              f"{d['tflm_uncompressed']}), gzip {d['gzip']}",
              f"- Ops: {', '.join(dict.fromkeys(report['phone']['ops']))}",
              f"- Training {report['timings_seconds']['training']:.1f} s, total "
              f"{report['timings_seconds']['total']:.1f} s", ""]
    return "\n".join(lines)


def run_boost(cfg, data):
    """The boost job; returns the report (the keys main_body reads are those of the other methods)."""
    import keras
    import numpy as np

    from atmc_tf.attacks import adversarial_examples
    from atmc_tf.boosting.export import check_ensemble, export_ensemble
    from atmc_tf.boosting.loop import BoostConfig, boost
    from atmc_tf.export import LiteRTModel, atomic
    from pipelines import console
    from pipelines.provenance import package_versions
    from pipelines.stages import eval_attack, path, train_attack

    t_start = time.time()
    config = BoostConfig(rounds=cfg.rounds, epochs=cfg.boost_epochs, batch_size=cfg.batch_size, lr=cfg.da_lr,
                         size_ratio=cfg.size_ratio, bits=None, attack=train_attack(cfg), seed=cfg.seed,
                         l0_scoring=cfg.l0_scoring, l0_ramp=cfg.l0_ramp)
    result = boost(_learner_factory(cfg, data), data.x_train, data.y_train, data.x_test, data.y_test, config,
                   path(cfg, STAGE), eval_attacks=_eval_attacks(cfg), log=logging.info)
    # Training: each round's learner, its edge and the next costs (the rounds' own figures, so a resumed run
    # counts the rounds it loaded); not the per-round test evaluation, as the other methods' training
    # time holds no evaluation either.
    training = sum(r["train_seconds"] for r in result.rounds)
    # The export's calibration and the transfer check's PGD draw from the global RNG: seeded here, so a
    # run that only loads its finished rounds gives the same figures as the one that trained them.
    keras.utils.set_random_seed(cfg.seed)
    export_dir = path(cfg, "export")
    os.makedirs(export_dir, exist_ok=True)
    with console.quiet_native(cfg.verbose):
        files = export_ensemble(result.ensemble, data.x_train[: min(len(data.x_train), 300)])
        checks = check_ensemble(result.ensemble, files, data.x_test, data.y_test, micro_samples=cfg.micro_samples)
        x_adv = adversarial_examples(lambda z: result.ensemble(z, training=False), data.x_test, data.y_test,
                                     eval_attack(cfg))
        keras_pgd = float(np.mean(result.ensemble.predict(x_adv, verbose=0).argmax(-1) == data.y_test))
        lite_pgd = float(np.mean(LiteRTModel(files["tflite"]).predict(x_adv).argmax(-1) == data.y_test))
    paths = {"tflite": os.path.join(export_dir, "model_int8.tflite"),
             "tflite_b1": os.path.join(export_dir, "model_int8_batch1.tflite"),
             "tflite_mcu": os.path.join(export_dir, "model_int8_micro.tflite")}
    for key, file in paths.items():
        atomic.write_bytes_atomic(file, files[key])
    plot = os.path.join(cfg.workdir, "robust_per_round.png")
    plot_rounds(result.rounds, plot, f"{cfg.dataset}/{cfg.model}: boosted ensemble, eps {cfg.eps}")
    last = result.rounds[-1]
    report = {
        "config": cfg.as_dict(), "versions": package_versions(("tensorflow", "keras", "ai-edge-litert", "tflite-micro", "numpy")),
        "data": {"train": int(len(data.y_train)), "test": int(len(data.y_test))},
        "rounds": result.rounds,
        "summary": {"keras_clean": checks["keras_clean_acc"], "keras_robust": last["worst_case"],
                    "keras_robust_pgd": keras_pgd, "tflite_clean": checks["tflite_clean_acc"],
                    "tflite_robust_transfer": lite_pgd,
                    "tflite_minus_keras_clean": checks["tflite_clean_acc"] - checks["keras_clean_acc"]},
        "phone": {"top1_agreement": checks["top1_agreement"], "ops": checks["ops"]},
        "micro": checks["micro"],
        "micro_compressed": {**checks["micro_compressed"], "flash_bytes": len(files["tflite_mcu"]),
                             "uncompressed_bytes": len(files["tflite_b1"])},
        "device_bytes": checks["device_bytes"],
        "collapse": {"problem": collapse_problem(result.rounds, checks["keras_clean_acc"], data.num_classes)},
        "files": {**paths, "plots": [plot]},
        "timings_seconds": {"training": training, "total": time.time() - t_start},
    }
    atomic.write_json_atomic(os.path.join(cfg.workdir, "report.json"), report)
    atomic.write_text_atomic(os.path.join(cfg.workdir, "report.md"), markdown(report))
    logging.info("report: %s", os.path.join(cfg.workdir, "report.md"))
    return report
