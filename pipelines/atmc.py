"""The whole ATMC job: data -> dense adversarial training -> compression -> int8 TFLite -> checks -> report.

    python -m pipelines.atmc                       # digits, a few minutes on 2 CPU cores
    python -m pipelines.atmc --dataset=fashion_mnist --model=lenet --workdir=runs/fm
    python -m pipelines.atmc --helpfull            # every flag

Started again with the same flags it resumes from what --workdir holds.
Bad flags, missing data or an unwritable workdir: one line on stderr, exit 2.
"""
import os
import platform
import sys
import time

from absl import app, logging

from pipelines import flags_def
from pipelines.flags_def import PipelineConfig, UsageError, check_workdir, fail


def versions():
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "tflite-micro", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run(cfg):
    """Run every stage; returns the report dict (also written to the workdir)."""
    import numpy as np

    from atmc_tf.export import atomic, c_header, c_source, gzip_size, kernel_codes_match, \
        to_int8_tflite, LiteRTModel, check_micro
    from pipelines import faults
    from pipelines import report as rep
    from pipelines import stages

    t_start = time.time()
    timings = {}
    if cfg.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    data = stages.load_data(cfg)

    t = time.time()
    da_plain, _, da_result = stages.dense_stage(cfg, data)
    final, net, results, scheme = stages.compress_stages(cfg, data, da_plain)
    timings["training"] = time.time() - t

    # --- export -------------------------------------------------------------------
    t = time.time()
    export_dir = stages.path(cfg, "export")
    os.makedirs(export_dir, exist_ok=True)
    rep_x = data.x_train[: min(len(data.x_train), 300)]
    tfl = to_int8_tflite(final, rep_x)
    tfl_b1 = to_int8_tflite(final, rep_x, batch_size=1)
    files = {"tflite": os.path.join(export_dir, "model_int8.tflite"),
             "tflite_b1": os.path.join(export_dir, "model_int8_batch1.tflite"),
             "c_source": os.path.join(export_dir, "model_data.cc"),
             "c_header": os.path.join(export_dir, "model_data.h")}
    atomic.write_bytes_atomic(files["tflite"], tfl)
    atomic.write_bytes_atomic(files["tflite_b1"], tfl_b1)
    atomic.write_text_atomic(files["c_source"], c_source(tfl_b1, "g_model"))
    atomic.write_text_atomic(files["c_header"], c_header("g_model"))
    faults.point("export")
    codes = kernel_codes_match(final, tfl)
    timings["export"] = time.time() - t
    logging.info("export: %d bytes (%d gzipped), batch-1 %d bytes", len(tfl), gzip_size(tfl), len(tfl_b1))

    # --- checks: phone (LiteRT) ----------------------------------------------------
    t = time.time()
    lite = LiteRTModel(tfl)
    keras_logits = final.predict(data.x_test, verbose=0, batch_size=256)
    lite_logits = lite.predict(data.x_test)
    x_adv = stages.craft_adversarial(cfg, final, data.x_test, data.y_test)
    keras_adv = final.predict(x_adv, verbose=0, batch_size=256).argmax(-1)
    lite_adv = lite.predict(x_adv).argmax(-1)
    y = data.y_test
    mismatches = int(sum(layer["mismatches"] for layer in codes["layers"]))
    phone = {
        "clean_acc": float(np.mean(lite_logits.argmax(-1) == y)),
        "robust_acc_transfer": float(np.mean(lite_adv == y)),
        "keras_clean_acc": float(np.mean(keras_logits.argmax(-1) == y)),
        "keras_robust_acc": float(np.mean(keras_adv == y)),
        "top1_agreement": float(np.mean(lite_logits.argmax(-1) == keras_logits.argmax(-1))),
        "top1_agreement_adv": float(np.mean(lite_adv == keras_adv)),
        "kernel_code_mismatches": mismatches,
        "kernels_exact": mismatches == 0,
        "kernel_codes": codes,
        "ops": lite.op_names(),
        "attack_note": "robust_acc_transfer: PGD crafted on the Keras float model, run on the int8 model",
    }
    timings["phone_check"] = time.time() - t

    # --- checks: microcontroller (TFLite Micro) --------------------------------------
    t = time.time()
    n = min(cfg.micro_samples, len(y))
    lite_b1 = LiteRTModel(tfl_b1)
    x_int8 = lite_b1.quantize_input(data.x_test[:n])
    micro = check_micro(tfl_b1, x_int8, lite_b1.predict_int8(x_int8)).as_dict()
    timings["micro_check"] = time.time() - t

    # --- curves, sizes, report --------------------------------------------------------
    t = time.time()
    curves = {"dense adversarial (Keras)": stages.accuracy_vs_eps(cfg, da_plain, data),
              f"{cfg.method} compressed (Keras)": stages.accuracy_vs_eps(cfg, final, data)}
    timings["eval_curves"] = time.time() - t
    size = stages.size_summary(cfg, net, final, scheme, cfg.bits if scheme else None)
    plots = [os.path.join(cfg.workdir, "accuracy_vs_eps.png"), os.path.join(cfg.workdir, "layers.png")]
    tflite_points = {"int8 .tflite (LiteRT; PGD transferred from Keras)":
                     {0.0: phone["clean_acc"], float(cfg.eps): phone["robust_acc_transfer"]}}
    rep.plot_accuracy_vs_eps(curves, cfg.eps, plots[0],
                             f"{cfg.dataset}/{cfg.model}: robustness, dense vs {cfg.method}", tflite_points)
    rep.plot_layers(size["tensors"], plots[1], f"{cfg.method}: per-tensor density and codebook size",
                    level_limit=2 ** cfg.bits if scheme else None)
    dense_curve = curves["dense adversarial (Keras)"]
    comp_curve = curves[f"{cfg.method} compressed (Keras)"]
    timings["total"] = time.time() - t_start
    report = {
        "config": cfg.as_dict(),
        "argv": sys.argv,
        "versions": versions(),
        "data": {"train": int(len(data.y_train)), "val": int(len(data.y_val)), "test": int(len(y)),
                 "input_shape": list(data.input_shape)},
        "summary": {"dense_clean": dense_curve.get(0.0), "dense_robust": dense_curve.get(float(cfg.eps)),
                    "keras_clean": comp_curve.get(0.0), "keras_robust": comp_curve.get(float(cfg.eps)),
                    "tflite_clean": phone["clean_acc"], "tflite_robust_transfer": phone["robust_acc_transfer"],
                    "tflite_minus_keras_clean": phone["clean_acc"] - phone["keras_clean_acc"]},
        "curves": {k: {str(e): a for e, a in v.items()} for k, v in curves.items()},
        "phone": phone,
        "micro": micro,
        "size": size,
        "files": {**files, "plots": plots, "tflite_bytes": len(tfl), "tflite_gzip_bytes": gzip_size(tfl),
                  "tflite_b1_bytes": len(tfl_b1)},
        "stages": [{k: r[k] for k in ("stage", "method", "epochs", "seconds")} for r in [da_result] + results],
        "stage_results": [da_result] + results,
        "timings_seconds": timings,
    }
    rep.write_report(cfg.workdir, report)
    logging.info("report: %s", os.path.join(cfg.workdir, "report.md"))
    return report


# Flags that change only what is evaluated or printed, not what is trained or exported.
RERUN_SAFE = ("verbose", "micro_samples", "plot_eps", "eval_pgd_steps", "eval_restarts", "workdir")


def claim_workdir(cfg):
    """Record the flags in <workdir>/config.json; refuse a workdir made with other flags."""
    import json

    from atmc_tf.export import atomic
    file = os.path.join(cfg.workdir, "config.json")
    mine = {k: v for k, v in cfg.as_dict().items() if k not in RERUN_SAFE}
    if os.path.exists(file):
        try:
            with open(file) as fh:
                theirs = {k: v for k, v in json.load(fh).items() if k not in RERUN_SAFE}
        except (OSError, ValueError):
            fail(f"{file} is unreadable or corrupt; delete it or use a new --workdir")
        diff = sorted(k for k in set(mine) | set(theirs)
                      if json.dumps(mine.get(k)) != json.dumps(theirs.get(k)))
        if diff:
            fail(f"--workdir={cfg.workdir} holds a run made with other flags ({', '.join(diff)}); "
                 "use a new --workdir or the same flags to resume")
    else:
        atomic.write_text_atomic(file, json.dumps(cfg.as_dict(), indent=2, sort_keys=True) + "\n")


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    cfg = PipelineConfig.from_flags()
    check_workdir(cfg.workdir)
    claim_workdir(cfg)
    from atmc_tf.data import DataError
    from atmc_tf.training import TrainingDivergedError
    try:
        r = run(cfg)
    except (DataError, UsageError) as err:
        fail(str(err))
    except TrainingDivergedError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(3)
    s = r["summary"]
    print(f"clean {s['keras_clean']:.3f} / robust {s['keras_robust']:.3f} (Keras); "
          f"int8 .tflite clean {s['tflite_clean']:.3f} / robust {s['tflite_robust_transfer']:.3f} (transfer); "
          f"TFLM {'ok' if r['micro']['ok'] else 'FAILED'}; report: {os.path.join(cfg.workdir, 'report.md')}")


def entry():
    app.run(main, flags_parser=flags_def.parse_flags)


if __name__ == "__main__":
    entry()
