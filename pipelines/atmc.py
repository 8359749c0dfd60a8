"""The whole ATMC job: data -> dense adversarial training -> compression -> int8 TFLite -> checks -> report.

    python -m pipelines.atmc                       # digits, a few minutes on 2 CPU cores
    python -m pipelines.atmc --dataset=fashion_mnist --model=lenet --workdir=runs/fm
    python -m pipelines.atmc --helpfull            # every flag

    python -m pipelines.atmc --model_file=my_model.keras  # your own Keras 3 model instead of --model

Started again with the same flags it resumes from what --workdir holds.
Bad input (flags, --model_file, data, corrupt files in --workdir, an unwritable
workdir): one line on stderr, exit 2, nothing in --workdir written or deleted.
Everything that can be checked without TensorFlow is checked before importing it.

Exit codes: 0 done; 1 the TFLite Micro check failed; 2 bad input (also: another run holds
the --workdir; a full disk or an unwritable output, after which the same command resumes);
3 the loss became NaN/Inf; 4 the compressed model collapsed
(--allow_collapse accepts it); 130 / 143 stopped by SIGINT / SIGTERM (one line; run the
same command again to resume). With 1 and 4 the report is written first and the error
line says why.
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile

from absl import app, logging

from atmc_tf.choices import nonzero_levels
from pipelines import flags_def, signals
from pipelines.provenance import package_versions
from pipelines.phone import phone_model
from pipelines.flags_def import PipelineConfig, UsageError, check_workdir, config_diff, fail


def versions():
    return package_versions(("tensorflow", "keras", "ai-edge-litert", "tflite-micro", "numpy"))


def start_tensorflow(cfg):
    """Before any model is loaded or built: op determinism (--deterministic) and the
    tf.distribute strategy (--strategy; MultiWorkerMirroredStrategy must come first).
    TensorFlow's C++ start-up lines (oneDNN, CUDA probing on a CPU machine) are held back
    below --verbose=3: TF 2.21 logs them through absl, which TF_CPP_MIN_LOG_LEVEL no longer filters."""
    from pipelines import console
    with console.quiet_native(cfg.verbose):
        import tensorflow as tf

        from pipelines import stages
        tf.config.list_physical_devices()  # device discovery, and its CUDA probing, happens here
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    stages.make_strategy(cfg)


def run(cfg, data=None):
    """Run every stage; returns the report dict (also written to the workdir).

    data: the loaded Dataset (main loads it before importing TensorFlow); None loads it here.
    """
    from atmc_tf.export import atomic, c_header, c_source, evaluate_deployment, kernel_codes_match, \
        to_int8_tflite, LiteRTModel, check_micro, shrink_model, micro_file, micro_outputs_equal, device_bytes, \
        strip_names
    from pipelines import console, faults
    from pipelines import report as rep
    from pipelines import stages

    t_start = time.time()
    timings = {}
    start_tensorflow(cfg)
    if data is None:
        data = stages.load_data(cfg)
    else:
        logging.info("data: %s", data.summary())

    if cfg.method == "boost":  # no dense or compression stages: rounds of small learners (pipelines/boost.py)
        from pipelines.boost import run_boost
        return run_boost(cfg, data)

    t = time.time()
    da_plain, _, da_result = stages.dense_stage(cfg, data)
    clean_target = stages.resolve_clean_target(cfg, data, da_plain)
    final, net, results, scheme = stages.compress_stages(cfg, data, da_plain, clean_target=clean_target)
    timings["training"] = time.time() - t
    signals.check()  # a stop whose first raise was lost ends the run here, before the export
    collapse = stages.collapse_check(data, da_plain, final, net)
    if clean_target is not None:
        clean_target = clean_target_report(clean_target, stages.clean_value(final, data, clean_target["form"]),
                                           results)

    # --- export -------------------------------------------------------------------
    t = time.time()
    export_dir = stages.path(cfg, "export")
    os.makedirs(export_dir, exist_ok=True)
    rep_x = data.x_train[: min(len(data.x_train), 300)]
    deployed, structure, dense_b1 = final, None, None
    if cfg.structure == "channel":
        # Cut the pruned channels out: a genuinely smaller model (outputs equal to `final`'s up to
        # float round-off; surgery verifies it). strict=False: a channel it cannot cut safely is kept.
        deployed, cut = shrink_model(final, strict=False)
        structure = {"surgery": cut, "budget": stages.structure_budget(cfg, final, deployed, cut)}
    with console.quiet_native(cfg.verbose):  # the converter prints its settings on every call
        tfl = to_int8_tflite(deployed, rep_x)
        tfl_b1 = to_int8_tflite(deployed, rep_x, batch_size=1)
        if structure is not None:
            dense_b1 = to_int8_tflite(da_plain, rep_x, batch_size=1)
    # The microcontroller file stores what compression made of the kernels: per-channel LUT indices
    # (TFLM's DECODE) where a kernel has few distinct values per channel; checked below on TFLM.
    # (and no tensor names: flash holds no debug strings)
    tfl_mcu, mcu_plan = micro_file(tfl_b1)
    files = {"tflite": os.path.join(export_dir, "model_int8.tflite"),
             "tflite_b1": os.path.join(export_dir, "model_int8_batch1.tflite"),
             "tflite_mcu": os.path.join(export_dir, "model_int8_micro.tflite"),
             "c_source": os.path.join(export_dir, "model_data.cc"),
             "c_header": os.path.join(export_dir, "model_data.h")}
    atomic.write_bytes_atomic(files["tflite"], tfl)
    atomic.write_bytes_atomic(files["tflite_b1"], tfl_b1)
    atomic.write_bytes_atomic(files["tflite_mcu"], tfl_mcu)
    atomic.write_text_atomic(files["c_source"], c_source(tfl_mcu, "g_model"))
    atomic.write_text_atomic(files["c_header"], c_header("g_model"))
    faults.point("export")
    codes = kernel_codes_match(deployed, tfl)
    timings["export"] = time.time() - t
    logging.info("export: phone .tflite %d bytes, microcontroller %d bytes (batch-1 %d before its compression)",
                 len(tfl), len(tfl_mcu), len(tfl_b1))

    # --- checks: phone (LiteRT) ----------------------------------------------------
    t = time.time()
    with console.quiet_native(cfg.verbose):  # LiteRT announces its CPU delegate
        lite = LiteRTModel(tfl)
        ev = evaluate_deployment(lite, data.x_test, data.y_test, keras_model=final,
                                 x_adv=lambda x, y: stages.craft_adversarial(cfg, final, x, y))
    y = data.y_test
    mismatches = int(sum(layer["mismatches"] for layer in codes["layers"]))
    phone = {
        "clean_acc": ev.tflite_clean_acc,
        "robust_acc_transfer": ev.tflite_robust_acc,
        "keras_clean_acc": ev.keras_clean_acc,
        "keras_robust_acc": ev.keras_robust_acc,
        "top1_agreement": ev.top1_agreement,
        "top1_agreement_adv": ev.top1_agreement_adv,
        "kernel_code_mismatches": mismatches,
        "kernels_exact": mismatches == 0,
        "kernel_codes": codes,
        "ops": lite.op_names(),
        "attack_note": "robust_acc_transfer: PGD crafted on the Keras float model, run on the int8 model",
    }
    # Phones store fewer bytes where kernels sit on a uniform <= 4-bit lattice (LiteRT runs packed INT4
    # kernels; it has no DECODE) or are sparse (TFLite's sparse tensors). The smallest such file ships if it
    # runs and keeps the int8 model's answers (clean accuracy within 1 point, top-1 agreement >= 98%).
    phone_tfl, choice = phone_model(deployed, rep_x, tfl, ev.tflite_clean_acc, data, files, cfg.verbose)
    phone.update(choice)
    timings["phone_check"] = time.time() - t
    t = time.time()
    robust = stages.robustness(cfg, final, lite, data)
    timings["robustness"] = time.time() - t
    t = time.time()
    activations = stages.activation_report(cfg, final, data)
    if activations is not None:
        timings["activation_sparsity"] = time.time() - t
    t = time.time()
    threats = stages.threat_robustness(cfg, final, lite, data)
    if threats is not None:
        threats["domain_weights"] = stages.domain_weights(cfg, [da_result] + results)
        timings["threat_robustness"] = time.time() - t

    # --- checks: microcontroller (TFLite Micro) --------------------------------------
    t = time.time()
    n = min(cfg.micro_samples, len(y))
    lite_b1 = LiteRTModel(tfl_b1)
    x_int8 = lite_b1.quantize_input(data.x_test[:n])
    micro = check_micro(tfl_b1, x_int8, lite_b1.predict_int8(x_int8)).as_dict()
    # The compressed MCU file against the plain one, on TFLM, on every test image: bit-identical outputs.
    x_all = lite_b1.quantize_input(data.x_test[:1000])
    mcu = micro_outputs_equal(tfl_b1, tfl_mcu, x_all, arena_original=micro["arena_bytes"] if micro["ok"] else None)
    mcu = mcu.as_dict()
    mcu.update(flash_bytes=len(tfl_mcu), uncompressed_bytes=len(tfl_b1), plan=mcu_plan)
    timings["micro_check"] = time.time() - t
    if structure is not None:
        # Dense vs channel-pruned, batch-1 int8 models in the same run: bytes, TFLM arena, LiteRT latency
        # (single thread, median of 300 invocations; wall clock on this machine).
        t = time.time()
        dense_lite = LiteRTModel(dense_b1, num_threads=1)
        x_dense = dense_lite.quantize_input(data.x_test[:n])
        dense_micro = check_micro(dense_b1, x_dense, dense_lite.predict_int8(x_dense)).as_dict()
        latency = {"dense": dense_lite.latency_ms(data.x_test, runs=300),
                   "compressed": LiteRTModel(tfl_b1, num_threads=1).latency_ms(data.x_test, runs=300)}
        structure.update(
            tflite_b1_bytes={"dense": len(dense_b1), "compressed": len(tfl_b1)},
            bytes_ratio=len(tfl_b1) / len(dense_b1),
            # without tensor names, as the microcontroller file stores them: what the model itself costs
            tflite_b1_bytes_stripped={"dense": len(strip_names(dense_b1)), "compressed": len(strip_names(tfl_b1))},
            arena_bytes={"dense": dense_micro["arena_bytes"], "compressed": micro["arena_bytes"]},
            litert_latency_ms=latency, latency_ratio=latency["compressed"] / latency["dense"],
            latency_note="LiteRT, 1 thread, batch 1, median of 300 invoke() calls, same run")
        timings["structure_check"] = time.time() - t

    # --- curves, sizes, report --------------------------------------------------------
    t = time.time()
    curves = {"dense adversarial (Keras)": stages.accuracy_vs_eps(cfg, da_plain, data),
              f"{cfg.method} compressed (Keras)": stages.accuracy_vs_eps(cfg, final, data)}
    timings["eval_curves"] = time.time() - t
    size = stages.size_summary(cfg, net, final, scheme, cfg.bits if scheme else None)
    plots = [os.path.join(cfg.workdir, "accuracy_vs_eps.png"), os.path.join(cfg.workdir, "layers.png")]
    if threats is not None and threats["domain_weights"]:
        plots.append(os.path.join(cfg.workdir, "domain_weights.png"))
        rep.plot_domain_weights(threats["domain_weights"], plots[-1],
                                f"{cfg.dataset}/{cfg.model_name}: domain weights ({cfg.domain_weighting})")
    tflite_points = {"int8 .tflite (LiteRT; PGD transferred from Keras)":
                     {0.0: phone["clean_acc"], float(cfg.eps): phone["robust_acc_transfer"]}}
    rep.plot_accuracy_vs_eps(curves, cfg.eps, plots[0],
                             f"{cfg.dataset}/{cfg.model_name}: robustness, dense vs {cfg.method}",
                             tflite_points)
    rep.plot_layers(size["tensors"], plots[1], f"{cfg.method}: per-tensor density and codebook size",
                    level_limit=nonzero_levels(cfg.bits, cfg.zero_in_levels) if scheme else None)
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
                    "tflite_minus_keras_clean": phone["clean_acc"] - phone["keras_clean_acc"],
                    "keras_robust_worst": robust["keras"]["worst_case"],
                    "tflite_robust_worst": robust["tflite"]["worst_case"],
                    **({"keras_union": threats["keras"]["worst_case"], "tflite_union": threats["tflite"]["worst_case"]}
                       if threats is not None else {})},
        "robustness": robust,
        "threat_models": threats,
        "activation_sparsity": activations,
        "curves": {k: {str(e): a for e, a in v.items()} for k, v in curves.items()},
        "phone": phone,
        "micro": micro,
        "micro_compressed": mcu,
        "size": size,
        "device_bytes": device_bytes(phone_tfl, tfl_mcu, tfl_b1),
        "files": {**files, "plots": plots},
        "stages": [{**{k: r[k] for k in ("stage", "method", "epochs", "seconds")}, "projection": r.get("projection")}
                   for r in [da_result] + results],
        "stage_results": [da_result] + results,
        "collapse": collapse,
        "structure": structure,
        "clean_target": clean_target,
        "class_feedback": class_feedback_report(cfg, results),
        "timings_seconds": timings,
    }
    rep.write_report(cfg.workdir, report)
    logging.info("report: %s", os.path.join(cfg.workdir, "report.md"))
    return report


def class_feedback_report(cfg, results):
    """--class_feedback: per stage, the class weights after every epoch (the last ones are what the next
    epoch would have trained with) and the validation split's worst class and its robust accuracy, as
    the feedback measured them; None with --class_feedback=off."""
    if cfg.class_feedback == "off":
        return None
    stages = []
    for r in results:
        h = r.get("history") or {}
        names = sorted((k for k in h if k.startswith("class_weight_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        if names:
            stages.append({"stage": r["stage"], "weights": [h[k] for k in names],
                           "final_weights": [h[k][-1] for k in names],
                           "worst_class": [int(v) for v in h["feedback_worst_class"]],
                           "worst_robust_acc": h["feedback_worst_robust_acc"]})
    return {"mode": cfg.class_feedback, "rate": cfg.class_feedback_rate, "stages": stages}


def clean_target_report(target, final_val, results):
    """--clean_target / --clean_target_drop: the target, the final model's validation value against it, and
    each GECO stage's multiplier and moving-average constraint per epoch (from its history)."""
    per_stage = [{"stage": r["stage"], "lambda": r["history"]["geco_lambda"],
                  "constraint": r["history"]["geco_constraint"]}
                 for r in results if "geco_lambda" in (r.get("history") or {})]
    return {**target, "final_val": final_val, "met": final_val <= target["kappa"], "stages": per_stage}


# Flags that change only what is evaluated or printed, not what is trained or exported.
# model_file: the path may move; the file's content (model_file_sha256) is what must not change.
RERUN_SAFE = ("verbose", "tensorboard", "allow_collapse", "micro_samples", "plot_eps", "eval_pgd_steps", "eval_restarts",
              "square_queries", "workdir", "model_file")


def _recorded_config(cfg):
    """What config.json records: the flags, plus the hash of --model_file's bytes."""
    out = cfg.as_dict()
    if cfg.model_file:
        with open(cfg.model_file, "rb") as fh:
            out["model_file_sha256"] = hashlib.sha256(fh.read()).hexdigest()
    return out


def check_claim(cfg):
    """Refuse a workdir whose config.json is corrupt or was made with other flags. Reads only."""
    file = os.path.join(cfg.workdir, "config.json")
    if not os.path.exists(file):
        return
    mine = {k: v for k, v in _recorded_config(cfg).items() if k not in RERUN_SAFE}
    try:
        with open(file) as fh:
            theirs = json.load(fh)
        if not isinstance(theirs, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError):
        fail(f"{file} is unreadable or corrupt; delete it or use a new --workdir")
    theirs = {k: v for k, v in theirs.items() if k not in RERUN_SAFE and k != "data_sha256"}  # see check_data
    diff = config_diff(mine, theirs)
    if diff:
        names = ["model_file (another model)" if k == "model_file_sha256" else k for k in diff]
        fail(f"--workdir={cfg.workdir} holds a run made with other flags ({', '.join(names)}); "
             "use a new --workdir or the same flags to resume")


# The longest name a run writes below --workdir, with room: tensorboard/<stage>/validation/events.out.tfevents.
# <time>.<host>.<pid>.<n>.v2, or <stage>/backup/.previous.weights.h5.<random>.tmp.weights.h5.
_LONGEST_OUTPUT = 240


def output_dirs(cfg):
    """Every folder a run writes into, below --workdir."""
    dirs = [cfg.workdir, os.path.join(cfg.workdir, "export")]
    for name in cfg.stage_names():
        dirs += [os.path.join(cfg.workdir, name), os.path.join(cfg.workdir, name, "backup")]
        if cfg.tensorboard:
            dirs.append(os.path.join(cfg.workdir, "tensorboard", name))
    return dirs


def check_outputs(cfg):
    """Every output path usable before any work is done (not after an hour of training): no path too
    long for the file system, and every output folder that exists already is a folder this process
    can write in (a probe file is created and removed: it also catches read-only mounts, which
    permission bits do not show to root)."""
    workdir = os.path.abspath(cfg.workdir)
    try:
        limit = os.pathconf(workdir, "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    if len(workdir) + _LONGEST_OUTPUT > limit:
        fail(f"--workdir is {len(workdir)} characters long; the files a run writes under it would pass the "
             f"system's {limit}-character path limit: use a --workdir shorter than {limit - _LONGEST_OUTPUT} "
             "characters")
    for d in output_dirs(cfg):
        if not os.path.lexists(d):
            continue
        if not os.path.isdir(d):
            fail(f"{d} is in the way: the run writes a folder there; move or delete that file, or use a new --workdir")
        probe = os.path.join(d, f".write_probe_{os.getpid()}")
        try:
            with open(probe, "w") as fh:
                fh.write("ok")
            os.remove(probe)
        except OSError as err:
            fail(f"{d} is not writable ({err.strerror}); the run writes its results there: make it writable, "
                 "or use a new --workdir")


def check_data(cfg, data):
    """Refuse a workdir whose run was trained on other data than --dataset/--data_dir give now
    (a data file replaced between runs): config.json records the data's fingerprint."""
    file = os.path.join(cfg.workdir, "config.json")
    if not os.path.exists(file):
        return
    with open(file) as fh:
        recorded = json.load(fh).get("data_sha256")  # check_claim read it already: a JSON object
    if recorded is not None and recorded != data.fingerprint():
        where = f" in --data_dir={cfg.data_dir}" if cfg.data_dir else ""
        fail(f"--workdir={cfg.workdir} was trained on other data: the --dataset={cfg.dataset} files{where} changed "
             "since that run started (their fingerprint differs); use a new --workdir, or restore the files "
             "the run started with to resume it")


def claim_workdir(cfg, data):
    """Record the flags and the data's fingerprint in <workdir>/config.json; refuse a workdir made
    with other flags or other data."""
    from atmc_tf.export import atomic
    check_claim(cfg)
    check_data(cfg, data)
    file = os.path.join(cfg.workdir, "config.json")
    if not os.path.exists(file):
        atomic.write_json_atomic(file, {**_recorded_config(cfg), "data_sha256": data.fingerprint()})


# --- files checked before TensorFlow is imported ------------------------------------------

def keras_archive_problem(file):
    """Why `file` is not an intact .keras archive (a zip holding config.json), or None.

    Reads every member and checks its CRC: a truncated, overwritten or bit-flipped
    file is caught here, in a fraction of a second and without TensorFlow.
    """
    try:
        if os.path.getsize(file) == 0:
            return "empty file"
        if not zipfile.is_zipfile(file):
            return "not a zip archive; truncated, or not saved by Keras 3"
        with zipfile.ZipFile(file) as zf:
            bad = zf.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check"
            if "config.json" not in zf.namelist():
                return "no config.json inside; not a Keras 3 model archive"
            config = json.loads(zf.read("config.json"))
        if not isinstance(config, dict):
            return "its config.json is not a JSON object"
    except Exception as err:  # noqa: BLE001 -- zipfile raises many types on damaged input
        return f"{type(err).__name__}: {err}"
    return None


def custom_classes(config):
    """The layers of a .keras config.json (a dict) whose class is not Keras' own: one
    "layer 'name' of class Cls (registered as 'pkg>Cls')" per layer, nested models included.
    The pipeline never imports the user's code, so it cannot load them. Classes atmc_tf registers load."""
    found = []

    def visit(obj, layer_name=None):
        if isinstance(obj, dict):
            registered = obj.get("registered_name")
            is_object = "class_name" in obj and "config" in obj
            module = obj.get("module")
            if is_object and isinstance(registered, str) and not registered.startswith("atmc_tf>") \
                    and (not isinstance(module, str) or module.split(".")[0] != "keras"):
                name = obj.get("name") or (obj["config"].get("name") if isinstance(obj["config"], dict) else None)
                what = f"layer '{name}' of class" if name else f"layer '{layer_name}' uses"
                how = f" (registered as '{registered}')" if ">" in registered else " (not registered)"
                found.append(f"{what} {obj['class_name']}{how}")
                return
            name = obj.get("name") if is_object else None
            for value in obj.values():
                visit(value, name or layer_name)
        elif isinstance(obj, list):
            for value in obj:
                visit(value, layer_name)

    visit(config)
    return found


def json_problem(file, required=()):
    """Why `file` is not a JSON object holding the `required` keys, or None."""
    try:
        with open(file) as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, expected an object"
    missing = [k for k in required if k not in obj]
    return f"missing keys {', '.join(missing)}" if missing else None


def check_resume_files(cfg):
    """Every file a rerun would read from --workdir must be intact; one line and exit 2 if not.

    Only what would be read is checked: a finished stage's model.keras and result.json,
    an unfinished stage's Keras BackupAndRestore checkpoint. Nothing is deleted: the
    user decides.
    """
    for name in cfg.stage_names():
        d = os.path.join(cfg.workdir, name)
        model, result = os.path.join(d, "model.keras"), os.path.join(d, "result.json")
        later = " (and the stages after it)" if name != cfg.stage_names()[-1] else ""
        retrain = f"delete {d}{os.sep} to retrain stage {name}{later}, or use a new --workdir"
        if os.path.exists(model) and os.path.exists(result):
            problem = keras_archive_problem(model)
            if problem:
                fail(f"{model} is truncated or corrupt ({problem}); {retrain}")
            problem = json_problem(result, required=("stage", "method", "epochs", "seconds"))
            if problem:
                fail(f"{result} is corrupt ({problem}); {retrain}")
            continue
        backup = os.path.join(d, "backup")
        from atmc_tf.checkpoint_files import CheckpointError, find_checkpoint, is_previous
        try:
            found = find_checkpoint(backup)
        except CheckpointError as err:
            fail(f"{err}; delete {backup}{os.sep} to restart stage {name} from its first epoch, "
                 "or use a new --workdir")
        if found and is_previous(found[0]):
            logging.warning("%s: the latest epoch checkpoint is incomplete; resuming from the previous epoch's "
                            "checkpoint (epoch %d)", backup, found[1]["epoch"])


def check_model_file(path):
    """--model_file must be an intact .keras archive; what needs Keras is checked in stages."""
    if not os.path.exists(path):
        fail(f"--model_file={path}: no such file")
    if os.path.isdir(path):
        fail(f"--model_file={path} is a directory; pass the .keras file saved by model.save('name.keras')")
    if not path.endswith(".keras"):
        fail(f"--model_file={path}: not a .keras file; save your Keras 3 model with model.save('name.keras') "
             "(legacy .h5 and SavedModel are not accepted)")
    problem = keras_archive_problem(path)
    if problem:
        fail(f"--model_file={path} is truncated or corrupt ({problem}); save the model again with "
             "model.save('name.keras')")
    with zipfile.ZipFile(path) as zf:
        custom = custom_classes(json.loads(zf.read("config.json")))
    if custom:
        fail(f"--model_file={path}: {'; '.join(custom)}: the pipeline loads only Keras' built-in layers (it never "
             "imports your code), and ATMC compresses Dense, Conv2D and DepthwiseConv2D; rebuild the model "
             "with built-in layers, or compress it with the atmc_tf library in your own program")


def data_error_line(err, dataset, data_dir):
    """A DataError's message, saying where the data came from when the message does not."""
    text = str(err)
    if data_dir and data_dir not in text:
        text += f" (--dataset={dataset} --data_dir={data_dir})"
    return text


def load_data(cfg):
    """The data set, validated (DataError otherwise); numpy only, no TensorFlow."""
    from atmc_tf.data import load_dataset
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed,
                        limit_train=cfg.limit_train, limit_test=cfg.limit_test)


_LOCK = []  # the open lock file: held for the life of the process, released by the OS when it ends


def hold_workdir(workdir):
    """One run per --workdir: an exclusive lock on <workdir>/.lock for as long as this process lives.
    A second run is refused in one line; a run killed with -9 holds nothing (the OS drops its lock)."""
    import fcntl
    path = os.path.join(workdir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        fail(f"--workdir={workdir} is in use by another run (process {owner}); wait for it to finish, "
             "or use another --workdir")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCK.append(fd)


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def write_error_line(err):
    """One line for an OSError while writing an output: which file, why, what to do."""
    where = f" {err.filename}" if err.filename else ""
    free = ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
        with contextlib.suppress(OSError):
            free = f" ({shutil.disk_usage(os.path.dirname(os.path.abspath(err.filename))).free / 1e6:.1f} MB free there)"
    return (f"could not write{where}: {err.strerror}{free}; finished stages and the last finished epoch are kept: "
            "fix that (free space, permissions) and run the same command again to resume")


def main(argv):
    """The program: main_body, with SIGINT and SIGTERM turned into one line and exit 130 / 143."""
    signals.install()
    try:
        main_body(argv)
    except (KeyboardInterrupt, signals.Stopped) as stop:
        name = stop.name if isinstance(stop, signals.Stopped) else "SIGINT"
        code = signals.CODES[name]
        sys.stderr.write(f"stopped: {name}; finished stages and the last finished epoch are kept, run the same "
                         "command again to resume\n")
        sys.exit(code)


def main_body(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    cfg = PipelineConfig.from_flags()
    from pipelines import console
    console.quiet_libraries(cfg.verbose)
    console.filter_native_logs(cfg.verbose)
    # Bad input is refused before anything is written and, where possible, before
    # TensorFlow is imported: files first, then the data, then what needs Keras.
    if cfg.model_file is not None:
        check_model_file(cfg.model_file)
    if cfg.strategy == "multiworker" and "TF_CONFIG" not in os.environ:
        fail("--strategy=multiworker needs TF_CONFIG in the environment of every worker "
             "(see README, 'Several machines')")
    check_outputs(cfg)
    check_workdir(cfg.workdir)
    check_claim(cfg)
    check_resume_files(cfg)
    from atmc_tf.data import DataError
    try:
        data = load_data(cfg)
    except DataError as err:
        fail(data_error_line(err, cfg.dataset, cfg.data_dir))
    check_data(cfg, data)
    if cfg.model_file is not None or cfg.structure != "none":
        from pipelines import stages  # imports TensorFlow
        try:
            start_tensorflow(cfg)
            model = stages.initial_model(cfg, data)
            if cfg.structure == "channel":
                stages.channel_budget(cfg, model)  # depends on the architecture only: refuse before training
        except UsageError as err:
            fail(str(err))
    hold_workdir(cfg.workdir)
    claim_workdir(cfg, data)
    with console.quiet_native(cfg.verbose):  # TensorFlow's C++ start-up lines (see start_tensorflow)
        from atmc_tf.training import TrainingDivergedError
        from atmc_tf.training.checkpoint import CheckpointWriteError
    try:
        r = run(cfg, data)
    except (DataError, UsageError) as err:
        fail(str(err))
    except CheckpointWriteError as err:
        fail(str(err))
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        fail(write_error_line(err))
    except TrainingDivergedError as err:
        # A run keeps the flags it started with (config.json), so the rerun the library's message asks
        # for needs a new --workdir.
        what = str(err).split(";")[0]
        sys.stderr.write(f"error: {what}; the finished stages and epochs are kept; lower the learning rate "
                         "(--lr, or --da_lr for dense training) or --rho and run again with a new --workdir "
                         f"(--workdir={cfg.workdir} keeps the flags it started with)\n")
        sys.exit(3)
    s = r["summary"]
    report_md = os.path.join(cfg.workdir, "report.md")
    print(f"clean {s['keras_clean']:.3f} / robust {s['keras_robust']:.3f} (Keras); "
          f"int8 .tflite clean {s['tflite_clean']:.3f} / robust {s['tflite_robust_transfer']:.3f} (transfer); "
          f"TFLM {'ok' if r['micro']['ok'] else 'FAILED'}; device bytes: phone {r['device_bytes']['litert']}, "
          f"microcontroller {r['device_bytes']['tflm']}; report: {report_md}")
    # Everything is written by now (nothing is lost); the exit code says what went wrong.
    status = 0
    from atmc_tf.export.micro import failure_reason
    micro_problem = failure_reason(r["micro"])
    mcu = r["micro_compressed"]
    if not micro_problem and not mcu["ok"]:
        micro_problem = (f"the compressed microcontroller model ({mcu['flash_bytes']} bytes) does not reproduce the "
                         f"plain one on TFLite Micro: {mcu['error'] or str(mcu['samples_differing']) + ' images differ'}")
    if micro_problem:
        sys.stderr.write(f"error: the TFLite Micro check failed: {micro_problem} (report: {report_md})\n")
        status = 1
    problem = r["collapse"]["problem"]
    if problem and not cfg.allow_collapse:
        fair = ("let the budget fall gradually (--l0_ramp=0.5)" if cfg.l0_scoring == "lamp"
                else "let layers compete fairly (--l0_scoring=lamp --l0_ramp=0.5)")
        if cfg.method == "boost":
            fair += " or train each learner longer (--boost_epochs)"
        sys.stderr.write(f"error: {problem}; compress less (--size_ratio), {fair}, or accept it with --allow_collapse "
                         f"(report: {report_md})\n")
        status = 4
    elif problem:
        sys.stderr.write(f"warning: {problem} (accepted: --allow_collapse)\n")
    from pipelines.report import projection_warnings
    for line in projection_warnings(r.get("stages")):  # a boost report has rounds, not stages
        sys.stderr.write(f"warning: {line} (report: {report_md})\n")
    if status:
        sys.exit(status)


def entry():
    """The program (`python -m pipelines.atmc`, or the `atmc` console script)."""
    main_module = sys.modules["__main__"]
    if not getattr(main_module, "__doc__", None):  # the console script: --help shows this docstring
        main_module.__doc__ = __doc__
    app.run(main, flags_parser=flags_def.parse_flags)


if __name__ == "__main__":
    entry()
