"""atmc_tf: adversarially trained model compression (ATMC) on TensorFlow / Keras 3.

The main user API in one import::

    import atmc_tf
    net = atmc_tf.wrap_model(plain)
    config = atmc_tf.method_config("atmc", attack=atmc_tf.PGDConfig(eps=0.1), nnz_budget=k, bits=4)
    trainer = atmc_tf.ATMCTrainer(net, config)    # or terms=[...], constraints=[...]
    trainer.compile(optimizer=...); trainer.fit(...)
    tflite_bytes = atmc_tf.to_int8_tflite(atmc_tf.strip_model(net), representative_x)

`import atmc_tf` registers its Keras classes (ATMCWrapper, ATMCTrainer), so a saved
wrapped model loads with a plain `keras.saving.load_model(path)`; that import loads
Keras and TensorFlow. Programs that only read or run a .tflite (the TFLite Micro
check's child process, pipelines.check_tflite) set ATMC_TF_LIGHT_IMPORT=1 before the
import: the names below are then resolved on first use and TensorFlow is never loaded
unless one of them needs it.
"""
import importlib
import os

__version__ = "0.4.0"

# name -> submodule that defines it
_API = {
    "PGDConfig": "atmc_tf.attacks", "adversarial_examples": "atmc_tf.attacks", "fgsm": "atmc_tf.attacks",
    "pgd": "atmc_tf.attacks", "robust_accuracy": "atmc_tf.attacks",
    "LiteRTModel": "atmc_tf.export", "check_micro": "atmc_tf.export", "to_int8_tflite": "atmc_tf.export",
    "ATMCWrapper": "atmc_tf.layers", "strip_model": "atmc_tf.layers", "wrap_model": "atmc_tf.layers",
    "ATMCConfig": "atmc_tf.training", "ATMCTrainer": "atmc_tf.training", "METHODS": "atmc_tf.training",
    "dense_weight_count": "atmc_tf.training", "method_config": "atmc_tf.training",
    "CleanLoss": "atmc_tf.training", "AdversarialLoss": "atmc_tf.training", "MultiThreatLoss": "atmc_tf.training",
    "GlobalL0": "atmc_tf.constraints", "FixedSupport": "atmc_tf.constraints", "Quantization": "atmc_tf.constraints",
    "GroupL0": "atmc_tf.constraints", "FixedGroupSupport": "atmc_tf.constraints", "shrink_model": "atmc_tf.export",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atmc_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))


if os.environ.get("ATMC_TF_LIGHT_IMPORT") != "1":
    for _name in _API:
        __getattr__(_name)
    del _name
