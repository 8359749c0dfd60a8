"""Check an existing int8 .tflite the way the pipeline checks its own export, before you ship it.

    python -m pipelines.check_tflite --tflite=runs/atmc/export/model_int8_batch1.tflite
    python -m pipelines.check_tflite --tflite=m.tflite --dataset=fashion_mnist --limit_test=1000 \\
        --micro_samples=50 --json_out=check.json
    python -m pipelines.check_tflite --tflite=m.tflite --attack=square --eps=0.1   # attack the file itself
    python -m pipelines.check_tflite --tflite=m.tflite --attack=square --norm=2 --eps=1.0   # L2 Square Attack

Phone: top-1 accuracy of the model on LiteRT over the data set's test split, and its ops.
Microcontroller: every op available in TFLite Micro, the smallest tensor arena, and
outputs equal to LiteRT's within one int8 step (atmc_tf.export.check_micro, in a
child process so a bad model cannot crash this one). Prints a JSON summary on stdout
(and writes it to --json_out).

Exit codes: 0 every check passed; 1 the checks ran and TFLite Micro failed (the JSON
says why); 2 bad input (flags, a .tflite that is missing, empty or does not parse, a
float or dynamic-range model rather than full-integer int8, a model that does not fit the
data set, missing data): one line on stderr, nothing written.
TensorFlow is never imported (LiteRT and TFLite Micro only).
"""
import hashlib
import json
import math
import os
import sys

from absl import app, flags, logging

from atmc_tf.choices import DATASETS
F = flags.FLAGS


def define_flags():
    """Defined only when run as a program, so importing this module never clashes with
    pipelines.flags_def (same names: --dataset, --data_dir, --limit_test, --micro_samples, --seed)."""
    flags.DEFINE_string("tflite", None, "The .tflite file to check (required).")
    flags.DEFINE_enum("dataset", "digits", DATASETS, "Data set the model was trained on (its test split is used).")
    flags.DEFINE_string("data_dir", None, "Directory with the data set files (as for pipelines.atmc).")
    flags.DEFINE_integer("limit_test", None, "Use only this many test images (after a seeded shuffle).")
    flags.DEFINE_integer("micro_samples", 20, "Test images run through TFLite Micro.")
    flags.DEFINE_integer("seed", 0, "Seed of the data split and of --limit_test's shuffle.")
    flags.DEFINE_string("json_out", None, "Also write the JSON summary to this file (atomically).")
    flags.DEFINE_enum("attack", "none", ("none", "square"), "Also attack the .tflite itself: square = Square Attack "
                      "(score-based black box, --norm) through LiteRT; reports robust accuracy and queries.")
    flags.DEFINE_enum("norm", "inf", ("inf", "2"), "Norm of --attack=square's ball: inf (L_inf) or 2 (L2 over the "
                      "whole image).")
    flags.DEFINE_float("eps", 0.1, "Radius of --attack's ball (--norm) on [0, 1] inputs; at most 1 for --norm=inf.",
                       lower_bound=0.0)
    flags.DEFINE_integer("square_queries", 1000, "Query budget per image of --attack=square.", lower_bound=1)
    flags.register_validator("limit_test", lambda v: v is None or v >= 1, message="--limit_test must be >= 1")
    flags.register_validator("micro_samples", lambda v: v >= 1, message="--micro_samples must be >= 1")


def fail(message):
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
    sys.exit(2)


def parse_flags(argv):
    try:
        return F(argv)
    except flags.Error as err:
        fail(f"{err} (see --helpfull)")


def read_tflite(path):
    """The file's bytes, parsed once; exits 2 with one line if they are not a usable .tflite."""
    from atmc_tf.export import int8_problem
    if not os.path.exists(path):
        fail(f"--tflite={path}: no such file")
    if os.path.isdir(path):
        fail(f"--tflite={path} is a directory; pass the .tflite file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        fail(f"--tflite={path}: cannot read ({err.strerror})")
    if not data:
        fail(f"--tflite={path} is empty (0 bytes); export the model again")
    try:
        problem = int8_problem(data)
    except ValueError as err:
        fail(f"--tflite={path}: {err}; export the model again")
    if problem:
        fail(f"--tflite={path} is {problem}; check_tflite checks full-integer int8 models: convert with "
             "optimizations=[tf.lite.Optimize.DEFAULT], a representative_dataset, "
             "target_spec.supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8] and "
             "inference_input_type=inference_output_type=tf.int8 (as atmc_tf.to_int8_tflite does)")
    return data


def check_json_out(path):
    if path is None:
        return
    if os.path.isdir(path):
        fail(f"--json_out={path} is a directory; pass a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        fail(f"--json_out={path}: cannot write to {parent}; pick a directory that exists and is writable")


def micro_flash(tflite_bytes, x_int8, micro):
    """(the file a microcontroller's flash would hold, its summary): few-valued or sparse kernels as TFLM
    LUT indices or PRUNE bitmaps (compress_for_micro), checked bit-identical to the file itself on TFLM on the same samples.
    A file the compressor cannot read is stored as it is (said in "note"), not a failure of the model."""
    from atmc_tf.export import compress_for_micro, micro_outputs_equal
    try:
        tfl_mcu, plan = compress_for_micro(tflite_bytes)
    except ValueError as err:  # MicroCompressionError included
        return bytes(tflite_bytes), {"flash_bytes": len(tflite_bytes), "ok": micro["ok"],
                                     "note": "stored uncompressed: " + " ".join(str(err).split())}
    mcu = {"flash_bytes": len(tfl_mcu), "compressed_tensors": plan["compressed_tensors"],
           "index_bits": sorted({t["index_bits"] for t in plan["tensors"] if t["index_bits"]})}
    if tfl_mcu == bytes(tflite_bytes):
        mcu.update(ok=micro["ok"], note="no kernel is worth compressing: the file is stored as it is")
    else:
        mcu.update(micro_outputs_equal(tflite_bytes, tfl_mcu, x_int8,
                                       arena_original=micro["arena_bytes"] if micro["ok"] else None).as_dict())
    return tfl_mcu, mcu


def check(tflite_bytes, data, micro_samples, path="model.tflite", attack="none", eps=0.1, square_queries=1000,
          seed=0, norm="inf"):
    """The phone and microcontroller checks on a Dataset's test split (and, with attack="square", a
    Square Attack on the .tflite itself); returns the summary dict.

    Raises ValueError (one line) if the model does not fit the data set.
    """
    import numpy as np

    from atmc_tf.export import LiteRTModel, check_micro, device_bytes, evaluate_deployment

    lite = LiteRTModel(tflite_bytes)
    model_shape, data_shape = tuple(lite.input_shape[1:]), tuple(data.input_shape)
    if model_shape != data_shape:
        raise ValueError(f"--tflite={path} takes inputs shaped {model_shape}, but --dataset={data.name} images "
                         f"are {data_shape}; pass the data set the model was trained on (--dataset, --data_dir)")
    if lite.output_shape[1:] != (data.num_classes,):
        raise ValueError(f"--tflite={path} outputs shape {lite.output_shape[1:]}, but --dataset={data.name} "
                         f"has {data.num_classes} classes")
    ev = evaluate_deployment(lite, data.x_test, data.y_test)
    y = data.y_test
    n = min(int(micro_samples), len(y))
    x_int8 = lite.quantize_input(data.x_test[:n])
    micro = check_micro(tflite_bytes, x_int8, lite.predict_int8(x_int8)).as_dict()
    tfl_mcu, mcu = micro_flash(tflite_bytes, x_int8, micro)
    phone = {"runtime": "LiteRT", "clean_acc": ev.tflite_clean_acc, "samples": ev.samples, "ops": lite.op_names()}
    if attack == "square":
        from atmc_tf.export import square_attack
        x_adv, queries = square_attack(lite.predict, data.x_test, y, eps, n_queries=square_queries, seed=seed,
                                       norm=norm)
        phone["attack"] = {"kind": "square", "norm": norm, "eps": eps, "query_budget": square_queries,
                           "robust_acc": float(np.mean(lite.predict(x_adv).argmax(-1) == y)),
                           "queries_mean": float(np.mean(queries)), "queries_max": int(np.max(queries)),
                           "note": "score-based black box on the int8 model itself (LiteRT), margin loss"}
    return {
        "tflite": path,
        "device_bytes": device_bytes(tflite_bytes, tfl_mcu),
        "sha256": hashlib.sha256(tflite_bytes).hexdigest(),
        "input": {"shape": [int(d) for d in lite.input_shape], "dtype": np.dtype(lite.input_dtype).name},
        "dataset": {"name": data.name, "test": int(len(y)), "input_shape": list(data_shape),
                    "num_classes": int(data.num_classes)},
        "phone": phone,
        "micro": micro,
        "micro_compressed": mcu,
        "ok": bool(micro["ok"] and mcu["ok"]),
    }


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    if not F.tflite:
        fail("--tflite=PATH is required: the .tflite file to check")
    if not math.isfinite(F.eps):
        fail(f"--eps={F.eps} must be a finite number >= 0")
    if F.norm == "inf" and F.eps > 1:
        fail(f"--eps={F.eps} is more than 1, the whole [0, 1] range, for --norm=inf; pass --eps <= 1 "
             "(or --norm=2 for an L2 radius)")
    check_json_out(F.json_out)
    tfl = read_tflite(F.tflite)
    from atmc_tf.data import DataError, load_dataset
    try:
        data = load_dataset(F.dataset, data_dir=F.data_dir, seed=F.seed, limit_test=F.limit_test)
    except DataError as err:
        text = str(err)
        if F.data_dir and F.data_dir not in text:
            text += f" (--dataset={F.dataset} --data_dir={F.data_dir})"
        fail(text)
    try:
        summary = check(tfl, data, F.micro_samples, path=F.tflite, attack=F.attack, eps=F.eps,
                        square_queries=F.square_queries, seed=F.seed, norm=F.norm)
    except ValueError as err:
        fail(str(err))
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    if F.json_out:
        from atmc_tf.export import atomic
        atomic.write_text_atomic(F.json_out, text)
    sys.stdout.write(text)
    if not summary["ok"]:
        from atmc_tf.export.micro import failure_reason
        mcu = summary["micro_compressed"]
        reason = failure_reason(summary["micro"]) or (
            f"the compressed file ({mcu['flash_bytes']} bytes) does not reproduce it on TFLite Micro: "
            f"{mcu.get('error')}")
        sys.stderr.write(f"error: TFLite Micro check failed: {reason}\n")
        sys.exit(1)
    logging.info("phone clean acc %.4f on %d images; TFLite Micro ok, arena %s bytes; device bytes: phone %d, "
                 "microcontroller %d", summary["phone"]["clean_acc"], summary["phone"]["samples"],
                 summary["micro"]["arena_bytes"], summary["device_bytes"]["litert"], summary["device_bytes"]["tflm"])


def entry():
    """The program (`python -m pipelines.check_tflite`, or the `atmc-check-tflite` console script)."""
    main_module = sys.modules["__main__"]
    if not getattr(main_module, "__doc__", None):  # the console script: --help shows this docstring
        main_module.__doc__ = __doc__
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
