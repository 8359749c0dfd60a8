"""GAN Slimming pipeline: dense LSGAN teacher -> GS student (distillation + LSGAN + channel L1 prox or
GroupL0 + b-bit straight-through quantization, one run) -> surgery -> fine-tune of the cut subnet (GS's last
step: distillation + LSGAN + b-bit STE, --finetune_epochs) -> int8 .tflite (LiteRT, TFLite Micro) -> report.

    tools/env.sh python -m pipelines.gan --dataset=digits --workdir=runs/gan

Stages are plain functions; each writes <workdir>/<stage>/done.json last, and a rerun with the same
flags skips every stage whose done.json is there (a workdir made with other flags is refused, exit 2).
Quality is measured with the project's own classifier (trained in the teacher stage): FD-digits /
FD-FMNIST (a Frechet distance in its feature space, not FID) and its accuracy on class-conditional
samples. Bad flags: one line on stderr, exit 2.
"""
import json
import os
import time

from absl import app, flags, logging

from pipelines.console import fail

F = flags.FLAGS
STAGES = ("teacher", "student", "finetune", "export", "report")
SPARSITIES = ("l1_prox", "group_l0")
# The value of a later flag in workdirs made before it existed (their config.json lacks it).
LEGACY = {"finetune_epochs": 0, "prune_project": False, "min_channels": 1}
# The flags that decide what a workdir holds (a rerun with other values must not resume it).
IDENTITY = ("dataset", "z_dim", "width", "teacher_epochs", "classifier_epochs", "student_epochs", "channel_budget",
            "mac_budget", "bits", "distill_weight", "sparsity", "rho", "lr", "batch_size", "seed", "limit_train", "eval_samples",
            "finetune_epochs", "prune_project", "min_channels")


def define_flags():
    flags.DEFINE_enum("dataset", "digits", ["digits", "fashion_mnist"], "Data set (class-conditional generator).")
    flags.DEFINE_string("data_dir", None, "Folder with the Fashion-MNIST files (as for pipelines.atmc).")
    flags.DEFINE_string("workdir", "runs/gan", "Where stages write their outputs; a rerun resumes from it.")
    flags.DEFINE_integer("z_dim", 16, "Noise dimensions of the generator's code.")
    flags.DEFINE_integer("width", 32, "Generator width (hidden convolutions: 2*width, width channels).")
    flags.DEFINE_integer("teacher_epochs", 60, "LSGAN epochs of the dense teacher.")
    flags.DEFINE_integer("classifier_epochs", 15, "Epochs of the classifier that FD and conditional accuracy use.")
    flags.DEFINE_integer("student_epochs", 30, "GS epochs of the student (budget ramped over the first half).")
    flags.DEFINE_boolean("prune_project", False, "GS also prunes the channels of the generator's project Dense (its "
                         "units per channel of the first feature map, cut with the first conv's inputs); "
                         "--sparsity=l1_prox only. Off by default: see atmc_tf.gan.models on its ranking.")
    flags.DEFINE_integer("finetune_epochs", 10, "Epochs of fine-tuning the cut student (GS's last step: the "
                         "subnet, its discriminator, distillation + LSGAN, b-bit STE; no sparsity); 0: none.")
    flags.DEFINE_float("channel_budget", 0.25, "Fraction of the teacher's prunable channels the student keeps.")
    flags.DEFINE_float("mac_budget", None, "Instead of --channel_budget: the student's MACs are at most this fraction "
                       "of the teacher's (the longest prefix of GS's channel ranking whose exact MACs fit: "
                       "atmc_tf.constraints.mac_masks). Needs --sparsity=l1_prox.")
    flags.DEFINE_integer("min_channels", 4, "GS's budget ranks each prunable layer's this many largest channels first "
                         "(atmc_tf.constraints.mac_masks' floor; the ranking is not MAC-aware: with 1, a tight "
                         "--mac_budget left one channel in the 28x28 layer, docs/gan_floor_2026-12-04); "
                         "--sparsity=l1_prox only.")
    flags.DEFINE_integer("bits", 8, "Weight bits of the student (uniform per-channel int8 lattice, STE), 2..8.")
    flags.DEFINE_float("distill_weight", 100.0, "beta: weight of the pixel MSE to the teacher's outputs.")
    flags.DEFINE_string("sparsity", "l1_prox", "Channel sparsity: l1_prox (GS: soft threshold on BN gammas) or "
                        "group_l0 (the project's GroupL0 on the hidden Conv2D kernels, LAMP scores; --rho unused).")
    flags.DEFINE_float("rho", 0.01, "GS's L1 strength on BN gammas (threshold per step = lr * rho).")
    flags.DEFINE_float("lr", 1e-3, "Adam learning rate of both players (beta_1 = 0.5).")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("seed", 0, "Seed of weights, data order and noise.")
    flags.DEFINE_integer("limit_train", None, "Use only this many training images.")
    flags.DEFINE_integer("eval_samples", 1000, "Generated samples per quality measurement.")
    flags.DEFINE_boolean("micro", True, "Check the student on TFLite Micro (batch-1 model).")


def parse_flags(argv):
    try:
        rest = F(argv)
    except flags.Error as err:
        fail(f"{err} (see --helpfull)")
    if F.sparsity not in SPARSITIES:
        fail(f"--sparsity={F.sparsity} is unknown; use one of {', '.join(SPARSITIES)}")
    if not 0.0 < F.channel_budget <= 1.0:
        fail(f"--channel_budget={F.channel_budget:g} must be in (0, 1] (fraction of the teacher's prunable channels)")
    if F.mac_budget is not None:
        if not 0.0 < F.mac_budget <= 1.0:
            fail(f"--mac_budget={F.mac_budget:g} must be in (0, 1] (fraction of the teacher's MACs)")
        if F.channel_budget != F["channel_budget"].default:
            fail("--channel_budget and --mac_budget both set the student's budget; give one of them")
        if F.sparsity != "l1_prox":
            fail(f"--mac_budget works with --sparsity=l1_prox (GS's channel ranking), not --sparsity={F.sparsity}")
    if not 2 <= F.bits <= 8:
        fail(f"--bits={F.bits} must be in 2..8")
    for name in ("distill_weight", "rho"):
        if not F[name].value >= 0:
            fail(f"--{name}={F[name].value:g} must be >= 0")
    if not F.lr > 0:
        fail(f"--lr={F.lr:g} must be > 0")
    for name in ("z_dim", "width", "teacher_epochs", "classifier_epochs", "student_epochs", "batch_size",
                 "eval_samples"):
        if F[name].value < 1:
            fail(f"--{name}={F[name].value} must be >= 1")
    if F.prune_project and F.sparsity != "l1_prox":
        fail(f"--prune_project works with --sparsity=l1_prox (GS's prox on the BN gammas), not --sparsity={F.sparsity}")
    if F.min_channels < 1:
        fail(f"--min_channels={F.min_channels} must be >= 1 (channels every prunable layer keeps first)")
    if F["min_channels"].present and F.sparsity != "l1_prox":
        fail(f"--min_channels works with --sparsity=l1_prox (GS's channel ranking), not --sparsity={F.sparsity}")
    if F.finetune_epochs < 0:
        fail(f"--finetune_epochs={F.finetune_epochs} must be >= 0")
    if F.eval_samples < 20:
        fail(f"--eval_samples={F.eval_samples} must be >= 20 (a covariance needs samples)")
    if F.limit_train is not None and F.limit_train < F.batch_size:
        fail(f"--limit_train={F.limit_train} must be >= --batch_size={F.batch_size}")
    return rest


# --- helpers ---------------------------------------------------------------------------------

def _path(*parts):
    return os.path.join(F.workdir, *parts)


def _done(stage):
    p = _path(stage, "done.json")
    if os.path.exists(p):
        with open(p) as fh:
            return json.load(fh)
    return None


def _finish(stage, facts):
    from atmc_tf.export import atomic
    atomic.write_text_atomic(_path(stage, "done.json"), json.dumps(facts, indent=1))
    return facts


def _load(path):
    import keras
    return keras.models.load_model(path, compile=False)


def _adam():
    import keras
    return keras.optimizers.Adam(F.lr, beta_1=0.5)


def _fit_resumable(trainer, ds, epochs, stage):
    """GANTrainer.fit with an epoch checkpoint in <stage>/backup (atmc_tf's ResumableCheckpoint: both players,
    both optimizers, the noise generator's state), so a killed stage continues from its last finished epoch
    instead of from scratch (a Fashion-MNIST teacher is an hour on 2 cores); ATMC_FAULT's kill points apply
    (pipelines.faults). The caller deletes the checkpoint once the stage's done.json is written."""
    import tensorflow as tf

    from atmc_tf.training.checkpoint import ResumableCheckpoint
    from pipelines import faults
    trainer(tf.zeros((1, trainer.z_dim + trainer.num_classes)))  # built, as the checkpoint needs
    ckpt = ResumableCheckpoint(_path(stage, "backup"))
    trainer.fit(ds.x_train, ds.y_train, batch_size=F.batch_size, epochs=epochs, verbose=0,
                callbacks=[ckpt, faults.KillAt(stage)])
    return ckpt


def _fit_facts(ckpt):
    """What a stage records of its _fit_resumable run."""
    return {"gan_seconds": ckpt.seconds, "resumed_from_epoch": ckpt.resumed_from,
            "last_epoch": {k: v[-1] for k, v in ckpt.history.items()}}


def _eval_codes(ds):
    from atmc_tf import gan
    return gan.sample_codes(F.eval_samples, F.z_dim, ds.num_classes, seed=F.seed + 1000)


# --- stages ----------------------------------------------------------------------------------

def stage_teacher(ds):
    import keras
    import numpy as np

    from atmc_tf.export import atomic

    from atmc_tf import gan
    os.makedirs(_path("teacher"), exist_ok=True)
    keras.utils.set_random_seed(F.seed)
    t0 = time.time()
    clf_file = _path("teacher", "classifier.keras")
    if os.path.exists(clf_file):  # a killed teacher stage trained it already (saved atomically)
        clf = _load(clf_file)
    else:
        clf = gan.classifier(ds.input_shape, ds.num_classes, seed=F.seed)
        clf.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        clf.fit(ds.x_train, ds.y_train, batch_size=F.batch_size, epochs=F.classifier_epochs, verbose=0)
        with atomic.atomic_path(clf_file, ".tmp.keras") as tmp:
            clf.save(tmp)
    clf_acc = float(np.mean(clf.predict(ds.x_test, verbose=0, batch_size=256).argmax(-1) == ds.y_test))
    gen = gan.generator(ds.name, F.z_dim, ds.num_classes, F.width, seed=F.seed)
    disc = gan.discriminator(ds.input_shape, ds.num_classes, F.width, seed=F.seed)
    trainer = gan.GANTrainer(gen, disc, ds.num_classes, F.z_dim, seed=F.seed)
    trainer.compile(_adam(), _adam())
    ckpt = _fit_resumable(trainer, ds, F.teacher_epochs, "teacher")
    gen.save(_path("teacher", "generator.keras"))
    disc.save(_path("teacher", "discriminator.keras"))
    facts = {"classifier_test_acc": clf_acc, "seconds": time.time() - t0, **_fit_facts(ckpt)}
    print(f"teacher: classifier test accuracy {clf_acc:.3f}, LSGAN {F.teacher_epochs} epochs, {facts['seconds']:.0f} s")
    _finish("teacher", facts)
    ckpt.delete()
    return facts


def mac_masks_least(mac_model):
    """MACs of the generator with one channel in every prunable layer."""
    from atmc_tf.constraints import mac_model_macs
    return mac_model_macs(mac_model, [1] * len(mac_model[0]))


def stage_student(ds):
    import keras

    from atmc_tf import gan
    from atmc_tf.constraints import BNChannelL1Prox, GroupL0
    from atmc_tf.export.surgery import count_macs
    os.makedirs(_path("student"), exist_ok=True)
    keras.utils.set_random_seed(F.seed + 1)
    t0 = time.time()
    teacher = _load(_path("teacher", "generator.keras"))
    teacher.trainable = False
    student, disc = _load(_path("teacher", "generator.keras")), _load(_path("teacher", "discriminator.keras"))
    dense = F.prune_project  # GS's prox may prune the project Dense's channels too; GroupL0 never does
    pruned = gan.prunable_bns(student, dense=dense)
    total = sum(n for _, n in gan.live_channels(student, dense).values())
    steps = -(-len(ds.y_train) // F.batch_size) * F.student_epochs
    if F.mac_budget is None:
        budget, mac_model, budget_facts = max(len(pruned), int(round(F.channel_budget * total))), None, {}
    else:
        mac_model = gan.channel_mac_model(teacher, dense)
        budget = F.mac_budget * count_macs(teacher)
        least = mac_masks_least(mac_model)
        if budget < least:
            fail(f"--mac_budget={F.mac_budget:g} allows {budget:,.0f} MACs, less than the generator with one channel "
                 f"per hidden convolution ({least:,.0f} of the teacher's {count_macs(teacher):,}); raise it")
        budget_facts = {"mac_budget": F.mac_budget, "budget_macs": budget}
    if F.sparsity == "l1_prox":
        sparsity = {"prox": BNChannelL1Prox(threshold=F.lr * F.rho, budget=budget, mac_model=mac_model,
                                            groups=gan.channel_groups(student, dense), floor=F.min_channels)}
    else:
        sparsity = {"kernel_constraint": GroupL0(budget, scoring="lamp", ramp_steps=steps // 2)}
    trainer = gan.GANTrainer(student, disc, ds.num_classes, F.z_dim, teacher=teacher,
                             distill_weight=F.distill_weight, ramp_steps=steps // 2, bits=F.bits,
                             seed=F.seed + 1, prune_dense=dense, **sparsity)
    trainer.compile(_adam(), _adam())
    ckpt = _fit_resumable(trainer, ds, F.student_epochs, "student")
    trainer.finalize()
    small, cut = gan.cut_generator(student)
    student.save(_path("student", "student_full.keras"))
    small.save(_path("student", "student.keras"))
    disc.save(_path("student", "discriminator.keras"))  # the fine-tune stage goes on with it
    kept = sum(n for n, _ in gan.live_channels(student, dense).values())
    facts = {"channels_total": total, "channel_budget": kept if mac_model is not None else budget, **budget_facts,
             "live": gan.live_channels(student, dense), **cut,
             "seconds": time.time() - t0, **_fit_facts(ckpt)}
    print(f"student: {facts['channel_budget']} of {total} prunable channels, MACs {cut['macs_before']:,} -> {cut['macs_after']:,}, "
          f"distill MSE {facts['last_epoch']['distill']:.4f}, {facts['seconds']:.0f} s")
    _finish("student", facts)
    ckpt.delete()
    return facts


def student_file():
    """The student the export and the report use: the fine-tuned one when the fine-tune stage trained it."""
    tuned = _path("finetune", "student.keras")
    return tuned if os.path.exists(tuned) else _path("student", "student.keras")


def stage_finetune(ds):
    """GS's last step: the cut student (fewer channels, on the b-bit lattice) trained on with distillation + LSGAN
    and b-bit straight-through quantization for --finetune_epochs, against the discriminator GS trained alongside
    it (the teacher's for a student stage that did not save one); no sparsity: the channels stay as cut."""
    import keras

    from atmc_tf import gan
    facts = {"epochs": F.finetune_epochs}
    if F.finetune_epochs == 0:
        return _finish("finetune", facts)
    keras.utils.set_random_seed(F.seed + 2)
    t0 = time.time()
    teacher = _load(_path("teacher", "generator.keras"))
    teacher.trainable = False
    small = _load(_path("student", "student.keras"))
    disc_file = _path("student", "discriminator.keras")
    disc = _load(disc_file if os.path.exists(disc_file) else _path("teacher", "discriminator.keras"))
    trainer = gan.GANTrainer(small, disc, ds.num_classes, F.z_dim, teacher=teacher, distill_weight=F.distill_weight,
                             bits=F.bits, seed=F.seed + 2)
    trainer.compile(_adam(), _adam())
    ckpt = _fit_resumable(trainer, ds, F.finetune_epochs, "finetune")
    trainer.finalize()  # the kernels back on the b-bit lattice
    small.save(_path("finetune", "student.keras"))
    facts.update(seconds=time.time() - t0, **_fit_facts(ckpt))
    print(f"finetune: {F.finetune_epochs} epochs of the cut student, distill MSE {facts['last_epoch']['distill']:.4f}, "
          f"{facts['seconds']:.0f} s")
    _finish("finetune", facts)
    ckpt.delete()
    return facts


def stage_export(ds):
    import numpy as np

    from atmc_tf.export import to_int8_tflite
    from atmc_tf.export.litert_packed import pack_int4_kernels
    from atmc_tf.export.micro import check_micro
    from atmc_tf.export.micro_compress import micro_file, micro_outputs_equal
    from atmc_tf.export.tflite import LiteRTModel
    os.makedirs(_path("export"), exist_ok=True)
    codes, _ = _eval_codes(ds)
    facts = {}
    for name, path in (("teacher", _path("teacher", "generator.keras")), ("student", student_file())):
        model = _load(path)
        data = to_int8_tflite(model, codes)
        with open(_path("export", f"{name}_int8.tflite"), "wb") as fh:
            fh.write(data)
        ref = model.predict(codes, verbose=0)
        out = LiteRTModel(data).predict(codes)
        one = to_int8_tflite(model, codes, batch_size=1)
        with open(_path("export", f"{name}_int8_b1.tflite"), "wb") as fh:
            fh.write(one)
        facts[name] = {"tflite_bytes": len(data), "max_abs_diff_vs_keras": float(np.abs(out - ref).max()),
                       "mean_abs_diff_vs_keras": float(np.abs(out - ref).mean()),
                       "litert_latency_ms": LiteRTModel(one, num_threads=1).latency_ms(codes)}
    student_b1 = LiteRTModel(open(_path("export", "student_int8_b1.tflite"), "rb").read())
    if F.micro:
        # TFLM is compared with LiteRT's builtin kernels: its default XNNPACK delegate rounds RESIZE_BILINEAR
        # differently (up to 8 int8 steps on a trained digits generator; TFLM matched the builtin kernels exactly).
        x_q = student_b1.quantize_input(codes[:20])
        builtin = _litert_builtin_int8(student_b1.tflite_bytes, x_q)
        micro = check_micro(student_b1.tflite_bytes, x_q, builtin)
        facts["student"]["micro"] = micro.as_dict()
        facts["student"]["micro"]["xnnpack_vs_builtin_int8_steps"] = int(
            np.abs(student_b1.predict_int8(x_q).astype(np.int32) - builtin.astype(np.int32)).max())
        # The microcontroller's file: few-valued kernels as LUT indices, sparse ones PRUNE, no names;
        # its TFLM outputs must equal the uncompressed batch-1 model's.
        small_file, small_report = micro_file(student_b1.tflite_bytes)
        with open(_path("export", "student_micro.tflite"), "wb") as fh:
            fh.write(small_file)
        same = micro_outputs_equal(student_b1.tflite_bytes, small_file, x_q, arena_original=micro.arena_bytes)
        facts["student"]["micro_file"] = {"bytes": len(small_file), "tflm_outputs_equal": same.ok,
                                          "error": same.error, "arena_bytes": same.arena_bytes_compressed}
    phone = {"file": "student_int8.tflite", "bytes": facts["student"]["tflite_bytes"]}
    if F.bits <= 4:  # uniform <= 4-bit kernels: LiteRT runs them packed INT4
        packed, _ = pack_int4_kernels(open(_path("export", "student_int8.tflite"), "rb").read())
        with open(_path("export", "student_int4.tflite"), "wb") as fh:
            fh.write(packed)
        ref = _load(student_file()).predict(codes, verbose=0)
        diff = float(np.abs(LiteRTModel(packed).predict(codes) - ref).max())
        facts["student"]["int4"] = {"bytes": len(packed), "max_abs_diff_vs_keras": diff}
        if len(packed) < phone["bytes"]:
            phone = {"file": "student_int4.tflite", "bytes": len(packed)}
    facts["student"]["device_bytes"] = {"phone": phone, "micro": facts["student"].get("micro_file", {}).get("bytes")}
    s = facts["student"]
    print(f"export: student {s['tflite_bytes']:,} bytes (teacher {facts['teacher']['tflite_bytes']:,}), LiteRT vs "
          f"Keras max |diff| {s['max_abs_diff_vs_keras']:.4f}, TFLM "
          f"{'ok' if s.get('micro', {}).get('ok') else s.get('micro', {}).get('error', 'not run')}")
    return _finish("export", facts)


def _litert_builtin_int8(tflite_bytes, x_q):
    """int8 outputs of a batch-1 model on LiteRT's builtin kernels (no XNNPACK delegate)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=tflite_bytes,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    outs = []
    for k in range(len(x_q)):
        it.set_tensor(inp["index"], x_q[k:k + 1])
        it.invoke()
        outs.append(it.get_tensor(out["index"]).copy())
    return np.concatenate(outs)


def stage_report(ds):
    import numpy as np

    from atmc_tf import gan
    from atmc_tf.export.surgery import count_macs
    from atmc_tf.export.tflite import LiteRTModel
    clf = _load(_path("teacher", "classifier.keras"))
    teacher, student = _load(_path("teacher", "generator.keras")), _load(student_file())
    codes, labels = _eval_codes(ds)
    real = ds.x_test if len(ds.x_test) >= 20 else ds.x_train
    exp, stu = _done("export"), _done("student")
    rows = {}
    for name, fn, model in (
            ("teacher (Keras)", lambda c: teacher.predict(c, verbose=0), teacher),
            ("student (Keras)", lambda c: student.predict(c, verbose=0), student),
            ("student (int8 .tflite)",
             LiteRTModel(open(_path("export", "student_int8.tflite"), "rb").read()).predict, student)):
        q = gan.quality(fn, clf, codes, labels, real)
        key = "teacher" if name.startswith("teacher") else "student"
        rows[name] = {**q, "params": int(model.count_params()), "macs": count_macs(model),
                      "tflite_bytes": exp[key]["tflite_bytes"], "litert_latency_ms": exp[key]["litert_latency_ms"]}
    n = min(len(codes), len(ds.x_train))  # the floor: real training images against the test images
    real_q = gan.quality(lambda c: ds.x_train[:n], clf, codes[:n], ds.y_train[:n], real)
    grid_codes, _ = gan.sample_codes(ds.num_classes, F.z_dim, ds.num_classes, seed=F.seed + 7)
    grid_path = gan.sample_grid([teacher.predict(grid_codes, verbose=0), student.predict(grid_codes, verbose=0)],
                                ["teacher", "student"], _path("samples.png"),
                                title="same codes, one column per class")
    fd_name = gan.FD_NAMES[ds.name]
    report = {"dataset": ds.name, "fd_name": fd_name, "flags": {k: F[k].value for k in IDENTITY},
              "rows": rows, "real_test_images": real_q, "student": stu, "export": exp,
              "classifier_test_acc": _done("teacher")["classifier_test_acc"], "grid": os.path.basename(grid_path)}
    with open(_path("report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    lines = [f"# GAN Slimming on {ds.name}", "",
             f"{fd_name}: Frechet distance in the feature space of the project's own classifier (test accuracy "
             f"{report['classifier_test_acc']:.3f}) between {F.eval_samples} generated samples and the test images; "
             "not FID. Conditional accuracy: that classifier's accuracy on samples generated for each label.", "",
             f"| model | {fd_name} | cond. acc | params | MACs | .tflite bytes | LiteRT ms (batch 1, 1 thread) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['fd']:.3f} | {r['cond_acc']:.3f} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['tflite_bytes']:,} | {r['litert_latency_ms']:.3f} |")
    budget_said = (f"--mac_budget={F.mac_budget:g}: at most {stu['budget_macs']:,.0f} MACs" if F.mac_budget is not None
                   else f"--channel_budget={F.channel_budget:g}")
    if F.min_channels != 1:
        budget_said += f", --min_channels={F.min_channels}"
    lines += [f"| real training images (floor) | {real_q['fd']:.3f} | {real_q['cond_acc']:.3f} | | | | |", "",
              f"Student: {stu['channel_budget']} of {stu['channels_total']} prunable channels kept "
              + (f"({stu['recipe']}), live per BN {stu['live']}" if stu.get("recipe") else
                 f"({budget_said}), live per BN {stu['live']}, {F.bits}-bit weights (STE), distill weight "
                 f"{F.distill_weight:g}, sparsity {F.sparsity}; fine-tuned after the cut for {F.finetune_epochs} epochs")
              + f". MACs ratio {rows['student (Keras)']['macs'] / rows['teacher (Keras)']['macs']:.3f}.",
              f"LiteRT vs Keras (student, [0, 1] pixels): max |diff| {exp['student']['max_abs_diff_vs_keras']:.4f}, "
              f"mean {exp['student']['mean_abs_diff_vs_keras']:.4f}.",
              f"TFLite Micro: {json.dumps(exp['student'].get('micro', 'not run'))}",
              f"Device bytes (student): phone {json.dumps(exp['student']['device_bytes']['phone'])}, "
              f"microcontroller file {json.dumps(exp['student'].get('micro_file', 'not run'))}; packed INT4: "
              f"{json.dumps(exp['student'].get('int4', 'only for --bits <= 4'))}.", "",
              f"![samples]({os.path.basename(grid_path)})", ""]
    with open(_path("report.md"), "w") as fh:
        fh.write("\n".join(lines))
    t, s = rows["teacher (Keras)"], rows["student (int8 .tflite)"]
    print(f"report: {fd_name} teacher {t['fd']:.3f} / student .tflite {s['fd']:.3f}, cond. acc {t['cond_acc']:.3f} / "
          f"{s['cond_acc']:.3f}, MACs {t['macs']:,} / {s['macs']:,}, bytes {t['tflite_bytes']:,} / "
          f"{s['tflite_bytes']:,} -> {_path('report.md')}")
    return _finish("report", {"ok": True})


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel export logs pages at INFO
    from atmc_tf.data import DataError, load_dataset
    os.makedirs(F.workdir, exist_ok=True)
    config = {k: F[k].value for k in IDENTITY}
    cfg_path = _path("config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as fh:
            old = json.load(fh)
        # a key the workdir's config lacks was added later: those runs had the value it meant then
        diff = sorted(k for k in config if old.get(k, LEGACY.get(k)) != config[k])
        if diff:
            fail(f"--workdir={F.workdir} holds a run with other flags ({', '.join(diff)}); use another --workdir")
    else:
        with open(cfg_path, "w") as fh:
            json.dump(config, fh, indent=1)
    try:
        ds = load_dataset(F.dataset, data_dir=F.data_dir, seed=F.seed, limit_train=F.limit_train)
    except DataError as err:
        fail(err)
    for name, fn in zip(STAGES, (stage_teacher, stage_student, stage_finetune, stage_export, stage_report)):
        if _done(name) is not None:
            print(f"{name}: done (resumed from {_path(name, 'done.json')})")
            continue
        os.makedirs(_path(name), exist_ok=True)
        fn(ds)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
