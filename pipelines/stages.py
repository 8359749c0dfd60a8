"""The pipeline's stages as plain functions of (PipelineConfig, inputs) -> outputs.

Every stage writes its outputs under cfg.workdir and, when started again with
the same flags, returns the saved result instead of redoing the work. Training
stages checkpoint every epoch (atmc_tf.training.checkpoint.ResumableCheckpoint) so a
killed run resumes mid-stage, exactly where an uninterrupted run would be; finished
stages save a .keras model and a result.json, atomically, and only then drop the checkpoint.
"""
import dataclasses
import json
import os
import warnings

import keras
from absl import logging

from atmc_tf.attacks import (FGSMRSConfig, FreeATConfig, NFGSMConfig, PGDConfig, accuracy_curve,
                             adversarial_examples, attack_to_dict)
from atmc_tf.constraints.accounting import budget_for_ratio
from atmc_tf.data import load_dataset
from atmc_tf.export import atomic
from atmc_tf.export.atomic import write_json_atomic as write_json
from atmc_tf.export.surgery import count_macs
from atmc_tf.layers import UnsupportedLayerError, strip_model, wrap_model
from atmc_tf.models import build_model, classifier_problem
from atmc_tf.checkpoint_files import find_checkpoint
from atmc_tf.training import (ATMCTrainer, compressible_layers, dense_weight_count, method_config, model_size,
                              output_layers, wrap_for_method)
from atmc_tf.training.checkpoint import ResumableCheckpoint
from atmc_tf.training.data_order import replay, resumable_batches
from atmc_tf.training.diagnostics import LayerCutWarning
from atmc_tf.training.overfitting import CatastrophicOverfittingGuard
from atmc_tf.training.structure import channel_cost_model, uncuttable_layers
from pipelines import console, faults, methods_table, signals
from pipelines.flags_def import UsageError


def path(cfg, *parts):
    return os.path.join(cfg.workdir, *parts)


def read_json(file):
    with open(file) as fh:
        return json.load(fh)


def _first_line(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


# --- data -----------------------------------------------------------------------
def load_data(cfg):
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed,
                        limit_train=cfg.limit_train, limit_test=cfg.limit_test)
    logging.info("data: %s", data.summary())
    return data


_STRATEGY = []


def make_strategy(cfg):
    """Create the tf.distribute strategy once, at program start (MultiWorkerMirroredStrategy
    must exist before any other TF op). Every training stage then builds in its scope."""
    import tensorflow as tf
    if _STRATEGY:
        return _STRATEGY[0]
    if cfg.strategy == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy=multiworker needs TF_CONFIG in the environment of every worker "
                             "(see README, 'Several machines')")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif cfg.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("strategy: %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    _STRATEGY.append(strategy)
    return strategy


def strategy_scope():
    import tensorflow as tf
    return (_STRATEGY[0] if _STRATEGY else tf.distribute.get_strategy()).scope()


def train_attack(cfg):
    """The adversarial stages' training attack (--train_attack); evaluation is always eval_attack's PGD."""
    kind = getattr(cfg, "train_attack", "pgd")
    if kind == "fgsm_rs":
        return FGSMRSConfig(eps=cfg.eps)
    if kind == "n_fgsm":
        return NFGSMConfig(eps=cfg.eps)
    if kind == "free":
        return FreeATConfig(eps=cfg.eps, replays=cfg.free_replays, batch_size=cfg.batch_size)
    return PGDConfig(eps=cfg.eps, steps=cfg.pgd_steps, step_size=cfg.pgd_step_size)


def threat_attacks(cfg, evaluation=False):
    """--threats as {name: PGDConfig} (empty without them): training (--pgd_steps; --pgd_step_size for linf) or
    evaluation (--eval_pgd_steps, --eval_restarts) settings, each at its own radius."""
    from atmc_tf.choices import THREAT_NORMS
    radii = {"linf": cfg.eps if cfg.eps_linf is None else cfg.eps_linf, "l2": cfg.eps_l2, "l1": cfg.eps_l1}
    out = {}
    for name in cfg.threats:
        norm = THREAT_NORMS[name]
        if evaluation:
            out[name] = PGDConfig(eps=radii[name], steps=cfg.eval_pgd_steps, restarts=cfg.eval_restarts, norm=norm)
        else:
            out[name] = PGDConfig(eps=radii[name], steps=cfg.pgd_steps, norm=norm,
                                  step_size=cfg.pgd_step_size if norm == "inf" else None)
    return out


def threat_settings(cfg):
    """ATMCConfig settings of --threats (none without them): the adversarial term becomes MultiThreatLoss."""
    if not cfg.threats:
        return {}
    return {"threats": tuple(threat_attacks(cfg).values()), "domain_weighting": cfg.domain_weighting,
            "minmax_gamma": cfg.minmax_gamma, "minmax_step": cfg.minmax_step}


# Catastrophic overfitting watch of the fast training attacks: PGD-10 accuracy on the first 256 validation
# images after every epoch; below half its best (once that reached 20%) the stage stops with the best epoch's
# weights, and the next stage (if any) starts from them. No PGD rerun: the fallback is the restored weights.
CO_CHECK_EXAMPLES, CO_PGD_STEPS, CO_FRACTION, CO_MIN_BEST = 256, 10, 0.5, 0.2


def overfitting_guard(cfg, config, data):
    """A CatastrophicOverfittingGuard for a stage trained with a fast attack, else None."""
    if not config.adversarial or isinstance(config.attack, PGDConfig):
        return None
    return CatastrophicOverfittingGuard(data.x_val[:CO_CHECK_EXAMPLES], data.y_val[:CO_CHECK_EXAMPLES],
                                        PGDConfig(eps=cfg.eps, steps=CO_PGD_STEPS), fraction=CO_FRACTION,
                                        min_best=CO_MIN_BEST)


def eval_attack(cfg, eps=None):
    eps = cfg.eps if eps is None else eps
    return PGDConfig(eps=eps, steps=cfg.eval_pgd_steps, restarts=cfg.eval_restarts,
                     step_size=2.5 * eps / cfg.eval_pgd_steps if eps > 0 else None)


# --- training stages -------------------------------------------------------------
def make_optimizer(cfg, lr):
    """--optimizer: Adam, or SGD with momentum (the ATMC reference); decoupled weight decay."""
    wd = cfg.weight_decay or None
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=wd)
    return keras.optimizers.Adam(lr, weight_decay=wd)


def with_dtype_policy(model, policy):
    """A copy of the plain Keras model `model` (same weights) whose layers compute with the dtype policy
    `policy`, except its output layers, which stay float32 (Keras' advice for mixed precision: logits
    and the loss in float32). Variables are float32 under every policy used here."""
    outputs = {t._keras_history[0].name for t in model.outputs}

    def clone(layer):
        dtype = "float32" if layer.name in outputs else policy
        return layer.__class__.from_config({**layer.get_config(), "dtype": dtype})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _plain(cfg, net):
    """The stage's plain float32 model, whatever arithmetic trained it (--compute_dtype)."""
    plain = strip_model(net)
    return with_dtype_policy(plain, "float32") if cfg.compute_dtype != "float32" else plain


def train_stage(cfg, name, start, data, method, config, epochs, lr, teacher=None, **wrap_kwargs):
    """Train `start` (a plain Keras model) with one method; returns (plain, wrapped_net, result).
    teacher: the frozen model of a distillation term (config.distill), copied into the strategy's scope.

    Resumes: a finished stage is loaded from <workdir>/<name>/; an interrupted
    one continues from its last epoch checkpoint.
    """
    d = path(cfg, name)
    model_file, result_file = os.path.join(d, "model.keras"), os.path.join(d, "result.json")
    if os.path.exists(model_file) and os.path.exists(result_file):
        logging.info("stage %s: done already, loading %s", name, model_file)
        retrain = f"delete {d}{os.sep} to retrain stage {name} (and the stages after it), or use a new --workdir"
        try:
            net = keras.models.load_model(model_file, safe_mode=True)  # never load code from a file
        except Exception as err:  # noqa: BLE001 -- Keras raises many types for a damaged file
            raise UsageError(f"{model_file} cannot be loaded ({_first_line(err)}); {retrain}") from None
        try:
            result = read_json(result_file)
        except (OSError, ValueError) as err:
            raise UsageError(f"{result_file} is corrupt ({_first_line(err)}); {retrain}") from None
        return _plain(cfg, net), net, result
    os.makedirs(d, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.compute_dtype == "bfloat16":
        start = with_dtype_policy(start, "mixed_bfloat16")
    with strategy_scope():
        net = wrap_for_method(start, config, **wrap_kwargs)
        if teacher is not None:
            copy = keras.models.clone_model(teacher)
            copy.set_weights(teacher.get_weights())
            teacher = copy
        trainer = ATMCTrainer(net, config, teacher=teacher)
        trainer.compile(optimizer=make_optimizer(cfg, lr))
    logging.info("stage %s: method=%s epochs=%d budget=%s bits=%s", name, method, epochs,
                 config.nnz_budget, config.bits)
    history, seconds, overfitting = {}, 0.0, None
    backup_dir = os.path.join(d, "backup")
    checkpoint = None
    if epochs > 0:
        # Every epoch is checkpointed atomically (ResumableCheckpoint); the batches of epoch e
        # are a function of (seed, e) and the attack's random starts of (seed, step), so a run
        # resumed from the checkpoint trains exactly as an uninterrupted one would have.
        checkpoint = ResumableCheckpoint(backup_dir)
        found = find_checkpoint(backup_dir)  # intact: check_resume_files ran at start-up
        first_epoch = found[1]["epoch"] if found else 0
        batches, steps = resumable_batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed, first_epoch)
        if isinstance(config.attack, FreeATConfig):
            # Free training: each batch m times in a row, epochs / m (rounded up): plain training's step count.
            replays = config.attack.replays
            batches, steps, epochs = replay(batches, replays), steps * replays, -(-epochs // replays)
        guard = overfitting_guard(cfg, config, data)
        # The guard first: after it restores the best weights, the checkpoint saves those.
        callbacks = [c for c in (guard, checkpoint, faults.KillAt(name), signals.stop_callback()) if c is not None]
        if console.epoch_lines(cfg.verbose):
            callbacks.append(console.epoch_line(name, epochs))
        if cfg.tensorboard:
            # Epoch curves only: no graph, no profiler, nothing that changes what is trained.
            callbacks.append(keras.callbacks.TensorBoard(path(cfg, "tensorboard", name), write_graph=False,
                                                         profile_batch=0, update_freq="epoch"))
        with warnings.catch_warnings(record=True) as caught:  # the library's one-line warnings, as log lines
            warnings.simplefilter("always", LayerCutWarning)
            trainer.fit(batches, steps_per_epoch=steps, epochs=epochs, shuffle=False,
                        validation_data=(data.x_val, data.y_val), callbacks=callbacks,
                        verbose=console.fit_verbosity(cfg.verbose))
        for w in caught:
            if issubclass(w.category, LayerCutWarning):
                logging.warning("stage %s: %s", name, w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        history, seconds = checkpoint.history, checkpoint.seconds
        if guard is not None and guard.event is not None:
            overfitting = {**guard.event, "line": guard.line()}
    else:
        trainer.prepare_constraints()
        trainer.finalize()
    ste_next = config.quant_method == "admm" and getattr(cfg, "ste_epochs", 0) > 0  # the stage on the set follows
    projection = projection_cost(name, config, trainer, data, history, ste_next)
    # "seconds": training wall time of the finished epochs summed over every run of the stage
    # (the epoch a kill cut short is redone and not counted); "history": every epoch's logs.
    result = {"stage": name, "method": method, "epochs": epochs, "seconds": seconds,
              "history": history, "constraints": trainer.constraint_report(),
              "train_attack": None if config.attack is None else attack_to_dict(config.attack)["kind"],
              "catastrophic_overfitting": overfitting, "compute_dtype": cfg.compute_dtype,
              "projection": projection}
    faults.point(f"{name}:save")
    with atomic.atomic_path(model_file, ".tmp.keras") as tmp:
        net.save(tmp)
    faults.point(f"{name}:saved")
    write_json(result_file, result)
    # Only now, with the result saved, is the checkpoint no longer needed.
    if checkpoint is not None:
        checkpoint.delete()
    return _plain(cfg, net), net, result


PROJECTION_WARN = 0.05  # validation accuracy the final projection onto the b-bit set may cost before we warn


def projection_cost(name, config, trainer, data, history, ste_next=False):
    """What the end of a quantization stage costs: ADMM trains W next to its b-bit copy Z and the
    stage ends with W <- Q_b(W); where ADMM left W far from the set (measured: ATMC-2, w_z_dist flat
    through the stage), that last step loses accuracy that no epoch line showed. Measured with the
    epochs' own validation metrics (trainer.evaluate: clean and, where the stage attacks, adversarial
    accuracy), the last epoch's being the weights before the projection. Returns {"val_clean_before",
    "val_clean_after", "val_adv_before", "val_adv_after", "drop" (the larger of the two drops), "w_z_dist",
    "line" (a warning, or None)} for a stage with bits and a finished epoch, else None. No warning when
    ste_next (the fine-tune on the b-bit set, --ste_epochs, starts from these weights: its own row is the
    figure that ships)."""
    history = history or {}
    if config.bits is None or not history.get("val_clean_acc"):
        return None
    after = trainer.evaluate(data.x_val, data.y_val, batch_size=256, verbose=0, return_dict=True)
    out = {"val_clean_before": history["val_clean_acc"][-1], "val_clean_after": float(after["clean_acc"]),
           "val_adv_before": None, "val_adv_after": None,
           "w_z_dist": (history.get("w_z_dist") or [None])[-1], "line": None}
    if history.get("val_adv_acc") and "adv_acc" in after:
        out["val_adv_before"], out["val_adv_after"] = history["val_adv_acc"][-1], float(after["adv_acc"])
    drops = {kind: out[f"val_{kind}_before"] - out[f"val_{kind}_after"] for kind in ("clean", "adv")
             if out[f"val_{kind}_before"] is not None}
    kind = max(drops, key=drops.get)
    out["drop"] = drops[kind]
    if out["drop"] > PROJECTION_WARN and not ste_next:
        what = "validation accuracy" if kind == "clean" else "adversarial validation accuracy"
        dist = out["w_z_dist"]
        out["line"] = (f"stage {name}: the final projection onto the {config.bits}-bit set cost "
                       f"{100 * out['drop']:.1f} points of {what} ({100 * out[f'val_{kind}_before']:.1f}% -> "
                       f"{100 * out[f'val_{kind}_after']:.1f}%): ADMM left the weights far from it"
                       + (f" (w_z_dist {dist:.3g} at the last epoch)" if dist is not None else "")
                       + "; fine-tune on the set after it (--ste_epochs) or use more bits (--bits): "
                       "docs/admm_low_bits.md")
        logging.warning("%s", out["line"])
    return out


def load_user_model(file):
    """A user's .keras model, loaded with safe_mode on; UsageError (one line) if it cannot be."""
    try:
        # safe_mode=True: a model file never runs code (Keras refuses serialized Python lambdas).
        return keras.models.load_model(file, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001 -- Keras raises ValueError, TypeError, OSError, ...
        text = str(err)
        if "Lambda" in text and "safe_mode" in text:
            raise UsageError(
                f"--model_file={file} contains a Lambda layer; safe_mode forbids loading code from a model "
                "file, so it stays on: rebuild the model with built-in layers (e.g. keras.layers.Rescaling, "
                "Activation, Reshape) instead of Lambda") from None
        raise UsageError(f"--model_file={file} cannot be loaded by Keras ({_first_line(err)}); save a Keras 3 "
                         "Sequential or Functional model of built-in layers with model.save('name.keras')") from None


def check_user_model(model, data, file):
    """UsageError unless `model` fits the data set and ATMC can compress every layer of it."""
    where = f"--model_file={file}"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(f"{where} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "ATMC needs one image input and one logits output")
    in_shape = tuple(model.inputs[0].shape[1:])
    if in_shape != tuple(data.input_shape):
        raise UsageError(f"{where} takes inputs shaped {in_shape}, but --dataset={data.name} images are "
                         f"{tuple(data.input_shape)}; build the model with keras.Input({tuple(data.input_shape)})")
    out_shape = tuple(model.outputs[0].shape[1:])
    if out_shape != (data.num_classes,):
        raise UsageError(f"{where} outputs shape {out_shape}, but --dataset={data.name} has {data.num_classes} "
                         f"classes; end the model with Dense({data.num_classes}) returning logits")
    problem = classifier_problem(model)
    if problem:
        raise UsageError(f"{where}: {problem}")
    try:
        wrap_model(model)
    except UnsupportedLayerError as err:
        raise UsageError(f"{where}: {err}") from None
    except ValueError as err:  # e.g. an unbuilt model
        raise UsageError(f"{where}: {_first_line(err)}") from None


def initial_model(cfg, data):
    """The plain model dense training starts from: --model_file (checked) or a fresh --model."""
    if cfg.model_file:
        model = load_user_model(cfg.model_file)
        check_user_model(model, data, cfg.model_file)
    else:
        model = build_model(cfg.model, data.input_shape, data.num_classes, seed=cfg.seed)
    if activation_sparsity(cfg):
        # Before DA (not before compression): the weights learn around the winners from the start, DA
        # ramps the density from dense to the target, and every later stage trains at the target.
        from atmc_tf.layers import insert_activation_sparsity
        # threshold: starts at 0 (every nonzero passes); the schedule calibrates it to the density
        model = insert_activation_sparsity(model, cfg.activation_sparsity, cfg.activation_density, threshold=0.0)
    return model


def activation_sparsity(cfg):
    """--activation_sparsity wta or threshold (a config recorded before the flag: off)."""
    return getattr(cfg, "activation_sparsity", "off") in ("wta", "threshold")


def activation_ramp(cfg, data, stage_epochs, ramp=True):
    """ATMCConfig settings of a stage for --activation_sparsity: the density ramp over the first half of
    the stage's steps (DA), or 0 (the target from the first step: the compression stages); {} when off."""
    if not activation_sparsity(cfg):
        return {}
    steps = -(-len(data.y_train) // cfg.batch_size) * stage_epochs
    settings = {"activation_ramp_steps": int(round(0.5 * steps)) if ramp else 0}
    if cfg.activation_sparsity == "threshold":
        settings["activation_threshold_density"] = cfg.activation_density
    return settings


def dense_stage(cfg, data, natural=False):
    """Dense adversarial training (DA), or natural training for the NAP baseline."""
    keras.utils.set_random_seed(cfg.seed)
    model = initial_model(cfg, data)
    method = "natural" if natural else "da"
    config = dataclasses.replace(dense_config(cfg, method), **activation_ramp(cfg, data, cfg.da_epochs))
    return train_stage(cfg, method, model, data, method, config, cfg.da_epochs, cfg.da_lr)


def dense_config(cfg, method="da"):
    """ATMCConfig of dense training: adversarial ("da", --clean_weight mix) or "natural"."""
    return method_config(method, attack=train_attack(cfg), clean_weight=cfg.clean_weight,
                         adv_weight=1 - cfg.clean_weight, **(threat_settings(cfg) if method != "natural" else {}))


def nnz_budget(cfg, dense_model):
    """k from --nnz_budget, or from --size_ratio with the codebooks' own bits paid first."""
    if cfg.nnz_budget:
        return cfg.nnz_budget
    tensors = len(compressible_layers(dense_model))
    try:
        return budget_for_ratio(cfg.size_ratio, dense_weight_count(dense_model), cfg.bits, tensors)
    except ValueError as err:
        raise UsageError(f"--size_ratio={cfg.size_ratio:g} with --bits={cfg.bits}: {err}") from None


def channel_budget(cfg, dense_model):
    """--structure=channel: ATMCConfig settings for at most --size_ratio of the dense compressible
    parameters (or, with --mac_ratio, of the dense model's MACs) in the exported model. The classifier
    (its channels are the classes) is kept whole, and so are the layers whose channels reach a residual
    Add or another merge (structure.uncuttable_layers); the budget holds the exact count of the cut model,
    the weights (MACs) between two kept channels counted once (atmc_tf.training.structure.
    channel_cost_model: per-channel linear costs plus the pairs of adjacent prunable layers)."""
    classifier = output_layers(dense_model)
    whole = [n for n in uncuttable_layers(dense_model) if n not in classifier]
    keep = classifier + whole
    by_macs = getattr(cfg, "mac_ratio", None) is not None
    if by_macs:
        flag, ratio, what = f"--mac_ratio={cfg.mac_ratio:g}", cfg.mac_ratio, "MACs"
        total = count_macs(dense_model)
    else:
        flag, ratio, what = f"--size_ratio={cfg.size_ratio:g}", cfg.size_ratio, "parameters"
        total = dense_weight_count(dense_model)
    prunable = [l.name for l in compressible_layers(dense_model) if l.name not in keep]
    linear, pairs, constant = channel_cost_model(dense_model, prunable, unit="macs" if by_macs else "params")
    budget = int(ratio * total - constant)
    least = sum(linear.values()) + sum(pairs.values())  # one channel in every layer
    if prunable and budget >= 1 and budget < least:
        raise UsageError(f"{flag} with --structure=channel is below one channel per layer "
                         f"({int(least + constant)} of {total} {what}): raise {flag.split('=')[0]}")
    if budget < 1 or not prunable:
        kept = f"the classifier {', '.join(classifier)}" + (
            f"; {', '.join(whole)}, whose channels feed a residual Add or another merge" if whole else "")
        raise UsageError(f"{flag} with --structure=channel keeps {int(ratio * total)} of {total} {what}, but "
                         f"{int(constant)} of them are in layers kept whole that no pruned channel shrinks ({kept}); "
                         f"raise {flag.split('=')[0]}")
    return {"structure": "channel", "group_budget": budget, "group_budget_unit": "macs" if by_macs else "costs",
            "group_costs": {k: float(v) for k, v in linear.items()},
            "group_pairs": tuple((p, c, float(w)) for (p, c), w in sorted(pairs.items())), "keep_layers": tuple(keep)}


def structure_budget(cfg, masked, cut_model, cut):
    """--structure=channel: the budget asked for and what the cut model achieved, in its unit: MACs
    (--mac_ratio) or compressible parameters (--size_ratio); `cut` is shrink_model's report."""
    if getattr(cfg, "mac_ratio", None) is not None:
        return {"flag": "mac_ratio", "unit": "MACs", "ratio": cfg.mac_ratio,
                "achieved": cut["macs_after"] / max(cut["macs_before"], 1)}
    return {"flag": "size_ratio", "unit": "compressible parameters", "ratio": cfg.size_ratio,
            "achieved": dense_weight_count(cut_model) / max(dense_weight_count(masked), 1)}


def clean_value(model, data, form):
    """The model's clean error (1 - accuracy) or mean cross-entropy on the validation split."""
    import numpy as np
    logits = model.predict(data.x_val, verbose=0, batch_size=256).astype("float64")
    if form == "error":
        return float(np.mean(logits.argmax(-1) != data.y_val))
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(data.y_val)), data.y_val]))


def resolve_clean_target(cfg, data, da_plain):
    """--clean_target (absolute) or --clean_target_drop (the DA model's validation value + the drop) as
    {"kappa", "form", "source", ...}; None without either. UsageError for a target no model can meet."""
    from atmc_tf.training.terms.geco import check_target
    absolute, drop = getattr(cfg, "clean_target", None), getattr(cfg, "clean_target_drop", None)
    if absolute is None and drop is None:
        return None
    form = getattr(cfg, "clean_target_form", "error")
    out = {"form": form, "dense_val": clean_value(da_plain, data, form)}
    if absolute is not None:
        out.update(source="absolute", kappa=float(absolute), flag=f"--clean_target={absolute:g}")
    else:
        out.update(source="dense", drop=float(drop), kappa=out["dense_val"] + float(drop),
                   flag=f"--clean_target_drop={drop:g}")
    try:
        check_target(out["kappa"], form)
    except ValueError as err:
        raise UsageError(f"{out['flag']} (--clean_target_form={form}, the dense model's validation value "
                         f"{out['dense_val']:.4f}): {err}") from None
    logging.info("clean target: %s <= %.4f on every compression stage's clean batches (%s; dense model %.4f)",
                 form, out["kappa"], out["flag"], out["dense_val"])
    return out


def compress_stages(cfg, data, da_plain, clean_target=None):
    """The stages of --method after DA (methods_table.STAGES), each warm-started from the one before.
    clean_target: resolve_clean_target's answer (resolved here if None). Returns (plain, net, [results], scheme)."""
    if clean_target is None:
        clean_target = resolve_clean_target(cfg, data, da_plain)
    total = dense_weight_count(da_plain)
    if cfg.structure == "channel":
        budget = channel_budget(cfg, da_plain)
        k = cfg.nnz_budget  # optional: unstructured L0 inside the kept channels
    else:
        k = nnz_budget(cfg, da_plain)
    if cfg.structure == "none" and k >= total and methods_table.stages(cfg.method, cfg.bits, cfg.ste_epochs):
        logging.warning("the nonzero budget k=%d covers all %d compressible weights (--size_ratio=%g%s): nothing "
                        "is pruned, the run only %s; lower --size_ratio (or --nnz_budget) to prune", k, total,
                        cfg.size_ratio, f" with {cfg.bits}-bit codes" if cfg.bits else "",
                        "quantizes" if cfg.bits else "fine-tunes")
    plain, net, results, scheme = da_plain, None, [], None
    ramped = False  # --l0_ramp applies to the first stage that leaves the dense model (AL0)
    steps_per_epoch = -(-len(data.y_train) // cfg.batch_size)
    for stage in methods_table.stages(cfg.method, cfg.bits, cfg.ste_epochs):
        if stage.natural:
            plain, net, res = dense_stage(cfg, data, natural=True)
            results.append(res)
            continue
        settings = dict(nnz_budget=k, l0_scoring=cfg.l0_scoring)
        if cfg.structure == "channel":
            settings.update(budget)
        if stage.method in ("al0", "atmc") and not ramped:
            settings["l0_ramp_steps"] = int(round(cfg.l0_ramp * getattr(cfg, stage.epochs) * steps_per_epoch))
            ramped = True
        if stage.adversarial:
            settings.update(attack=train_attack(cfg), clean_weight=cfg.clean_weight, adv_weight=1 - cfg.clean_weight,
                            distill=cfg.distill, distill_temperature=cfg.distill_temperature,
                            **threat_settings(cfg))
            if clean_target is not None:
                settings.update(clean_target=clean_target["kappa"], clean_target_form=clean_target["form"],
                                geco_rate=cfg.geco_rate)
            if cfg.class_feedback != "off":  # the trainer measures it on the validation split fit is given
                settings.update(class_feedback=cfg.class_feedback, class_feedback_rate=cfg.class_feedback_rate)
        if stage.quantized:
            scheme = cfg.quant_scheme
            settings.update(bits=cfg.bits, quant_scheme=scheme, rho=cfg.rho, quant_interval=cfg.quant_interval,
                            zero_in_levels=cfg.zero_in_levels)
        wrap_kwargs = {}
        if stage.wrap == "factorization":
            wrap_kwargs["factorization"] = cfg.factorization
        elif stage.wrap == "param_budget":
            wrap_kwargs["param_budget"] = k
        settings.update(activation_ramp(cfg, data, getattr(cfg, stage.epochs), ramp=False))
        config = method_config(stage.method, **settings)
        if stage.ste:  # on the b-bit set: the support (and channels) of the ADMM stage held, no ADMM
            config = dataclasses.replace(config, quant_method="ste", sparsity="fixed" if config.sparsity != "none"
                                         else "none", group_support="fixed")
        plain, net, res = train_stage(cfg, stage.name, plain, data, stage.method, config,
                                      getattr(cfg, stage.epochs), cfg.lr,
                                      teacher=da_plain if config.distill != "off" else None, **wrap_kwargs)
        results.append(res)
    return plain, net, results, scheme


def collapse_check(data, dense, final, net):
    """Whether compression destroyed the model (atmc_tf.training.diagnostics): the layers it
    emptied, whether a path still reaches the output, and validation accuracy dense vs compressed."""
    import numpy as np

    from atmc_tf.training.diagnostics import collapse_problem, path_report

    def val_acc(model):
        return float(np.mean(model.predict(data.x_val, verbose=0, batch_size=256).argmax(-1) == data.y_val))

    out = {"dense_val_acc": val_acc(dense), "compressed_val_acc": val_acc(final), "problem": None}
    if net is None:  # --method=da: nothing was compressed
        return out
    paths = path_report(net)
    out.update(paths, empty_channels={k: list(v) for k, v in paths["empty_channels"].items()})
    out["problem"] = collapse_problem(paths, out["dense_val_acc"], out["compressed_val_acc"], data.num_classes)
    if out["problem"]:
        logging.warning("%s", out["problem"])
    return out


# --- evaluation ------------------------------------------------------------------
def accuracy_vs_eps(cfg, model, data):
    fn = lambda z: model(z, training=False)  # noqa: E731
    return accuracy_curve(fn, data.x_test, data.y_test, eval_attack(cfg), [float(e) for e in cfg.plot_eps])


def craft_adversarial(cfg, model, x, y, batch_size=256):
    """PGD examples crafted on the Keras (float) model, for the transfer check on the .tflite."""
    return adversarial_examples(lambda z: model(z, training=False), x, y, eval_attack(cfg), batch_size)


def robustness(cfg, model, lite, data):
    """The headline robustness figures, as attackers and reviewers measure them.

    Keras (white box): PGD (--eval_pgd_steps x --eval_restarts), APGD-CE and APGD-DLR (AutoAttack's, the
    same number of steps) and the per-example worst case over the three (RobustBench's rule). The int8
    .tflite: the PGD examples transferred from Keras, Square Attack on the .tflite itself (score-based,
    --square_queries) and the worst case of both. Gradient-masking checks, each stated with its figures:
    PGD at eps 0.5 brings accuracy near 0; 5x the PGD steps do not raise accuracy; the black-box attack
    does not beat the white-box worst case by more than 2 points."""
    import numpy as np

    from atmc_tf.attacks import APGDConfig, PGDConfig, robust_accuracy, worst_case_accuracy
    from atmc_tf.export import square_attack

    x, y = data.x_test, data.y_test
    fn = lambda z: model(z, training=False)  # noqa: E731
    eps, steps = float(cfg.eps), cfg.eval_pgd_steps
    attacks = {"pgd": eval_attack(cfg), "apgd-ce": APGDConfig(eps=eps, steps=steps, loss="ce"),
               "apgd-dlr": APGDConfig(eps=eps, steps=steps, loss="dlr")}
    keras_wc = worst_case_accuracy(fn, x, y, attacks)
    lite_clean = lite.predict(x).argmax(-1) == y
    transfer = lite.predict(craft_adversarial(cfg, model, x, y)).argmax(-1) == y
    x_sq, queries = square_attack(lite.predict, x, y, eps, n_queries=cfg.square_queries, seed=cfg.seed)
    square = lite.predict(x_sq).argmax(-1) == y
    lite_worst = lite_clean & transfer & square
    big = robust_accuracy(fn, x, y, PGDConfig(eps=0.5, steps=steps, restarts=cfg.eval_restarts,
                                              step_size=2.5 * 0.5 / steps))
    more = robust_accuracy(fn, x, y, PGDConfig(eps=eps, steps=5 * steps, restarts=cfg.eval_restarts,
                                               step_size=2.5 * eps / (5 * steps)))
    keras_clean = model.predict(x, batch_size=256, verbose=0).argmax(-1) == y
    per_class = per_class_robustness(y, data.num_classes, keras_clean=keras_clean, keras_robust=keras_wc.robust,
                                     tflite_clean=lite_clean, tflite_transfer=transfer, tflite_robust=lite_worst)
    pgd = keras_wc.per_attack["pgd"]
    checks = {
        "large_eps": {"eps": 0.5, "pgd_acc": big, "ok": big <= 0.1,
                      "rule": "PGD at eps 0.5 leaves at most 10% accuracy"},
        "more_steps": {"steps": 5 * steps, "pgd_acc": more, "pgd_acc_default": pgd, "ok": more <= pgd + 0.01,
                       "rule": "5x the PGD steps do not raise accuracy by more than 1 point"},
        "black_box": {"square_acc": float(square.mean()), "white_box_worst": keras_wc.worst_case,
                      "ok": float(square.mean()) >= keras_wc.worst_case - 0.02,
                      "rule": "Square on the .tflite does not beat the Keras white-box worst case by > 2 points"},
    }
    return {
        "eps": eps,
        "keras": {**keras_wc.as_dict(), "steps": steps, "restarts_pgd": cfg.eval_restarts},
        "tflite": {"clean": float(lite_clean.mean()), "transfer": float(transfer.mean()),
                   "square": float(square.mean()), "square_queries_mean": float(np.mean(queries)),
                   "square_queries_max": int(np.max(queries)), "square_query_budget": cfg.square_queries,
                   "worst_case": float(lite_worst.mean())},
        "masking_checks": checks,
        "masking_checks_ok": all(c["ok"] for c in checks.values()),
        "per_class": per_class,
    }


def activation_report(cfg, model, data):
    """--activation_sparsity: per winners-take-all layer the density on clean and on PGD test inputs, the
    effective MACs (dense MACs of each layer scaled by its input's density) on both, and PGD through the
    layers' straight-through (BPDA) surrogate next to plain PGD, the robust figure the lower; None when off."""
    if not activation_sparsity(cfg):
        return None
    from atmc_tf.export import activation_densities, effective_macs, masking_aware_robustness
    x, y = data.x_test, data.y_test
    x_adv = craft_adversarial(cfg, model, x, y)
    clean, adv = activation_densities(model, x), activation_densities(model, x_adv)
    (macs_clean, per_clean), (macs_adv, per_adv) = effective_macs(model, x), effective_macs(model, x_adv)
    dense_macs = sum(v["macs"] for v in per_clean.values())
    return {"mode": cfg.activation_sparsity, "target_density": cfg.activation_density,
            "layers": {name: {"target": clean[name]["target"], "clean": clean[name], "adversarial": adv[name]}
                       for name in clean},
            "macs": {"dense": dense_macs, "effective_clean": macs_clean, "effective_adversarial": macs_adv,
                     "per_layer_clean": per_clean, "per_layer_adversarial": per_adv},
            "pgd": masking_aware_robustness(model, x, y, eval_attack(cfg)),
            "litert_latency_ms": sparsity_latency(model, data)}


def sparsity_latency(model, data):
    """LiteRT latency (ms, 1 thread, batch 1, median of 300 invocations, same run) of the int8 model with
    its sparsity layers and of the same weights without them: LiteRT skips no zero, so the masks cost time
    on this CPU; the effective MACs are what a zero-skipping kernel could save."""
    from atmc_tf.export import LiteRTModel, to_int8_tflite
    from atmc_tf.layers import without_activation_sparsity
    rep_x = data.x_train[:300]   # as the export calibrates (pipelines.atmc)
    with console.quiet_native(0):
        files = {"with": to_int8_tflite(model, rep_x, batch_size=1),
                 "without": to_int8_tflite(without_activation_sparsity(model), rep_x, batch_size=1)}
        return {k: LiteRTModel(b, num_threads=1).latency_ms(data.x_test, runs=300) for k, b in files.items()}


def per_class_robustness(y, num_classes, **masks):
    """Per class: the test count and, for each per-example mask (name=bool array), its accuracy on that
    class (None for a class with no test image); and the worst class by the robust masks (the Keras
    worst case, the .tflite worst case): the class whose robust accuracy is lowest."""
    import numpy as np

    from atmc_tf.attacks import per_class_accuracy

    def listed(values):
        return [None if not np.isfinite(v) else float(v) for v in values]

    out = {"classes": list(range(num_classes)),
           "count": [int(c) for c in np.bincount(np.asarray(y, np.int64), minlength=num_classes)[:num_classes]]}
    out.update({name: listed(per_class_accuracy(mask, y, num_classes)) for name, mask in masks.items()})
    worst = {}
    for name in ("keras_robust", "tflite_robust"):
        if name in out:
            acc = np.array([np.nan if v is None else v for v in out[name]])
            c = int(np.nanargmin(acc))
            worst[name.split("_")[0]] = {"class": c, "robust_acc": float(acc[c])}
    out["worst_class"] = worst
    return out


def threat_robustness(cfg, model, lite, data):
    """--threats: accuracy per threat model and under their union (an example counts only if it is right
    clean and every threat's attack fails on it), on the Keras model (white box: PGD in each norm's ball,
    --eval_pgd_steps x --eval_restarts) and on the int8 .tflite (the same examples, transferred). None
    without --threats."""
    from atmc_tf.attacks import union_accuracy
    if not cfg.threats:
        return None
    x, y = data.x_test, data.y_test
    fn = lambda z: model(z, training=False)  # noqa: E731
    attacks = threat_attacks(cfg, evaluation=True)
    examples = {name: adversarial_examples(fn, x, y, a) for name, a in attacks.items()}
    keras_acc = union_accuracy(lambda z: model.predict(z, verbose=0, batch_size=256), x, y, examples)
    lite_acc = union_accuracy(lite.predict, x, y, examples)
    return {"names": list(attacks),
            "threats": {n: {"norm": a.norm, "eps": a.eps, "steps": a.steps, "restarts": a.restarts}
                        for n, a in attacks.items()},
            "domain_weighting": cfg.domain_weighting, "keras": keras_acc.as_dict(), "tflite": lite_acc.as_dict()}


def domain_weights(cfg, results):
    """Per training stage with logged domain weights (w_<threat>: --domain_weighting avg or minmax), the
    weights at the end of every epoch, from the stage's history."""
    out = []
    for r in results:
        history = r.get("history") or {}
        names = [n for n in cfg.threats if f"w_{n}" in history]
        if names:
            out.append({"stage": r["stage"], "weights": {n: history[f"w_{n}"] for n in names}})
    return out


def size_summary(cfg, net, plain, scheme, bits):
    """Paper-style and honest bits of the final model (factors counted as trained)."""
    if net is None:
        net = wrap_for_method(plain, method_config("da", attack=train_attack(cfg)))
    return model_size(net, scheme, bits).as_dict()
