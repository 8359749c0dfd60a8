"""The names a user picks from: data sets, model architectures, training methods, quantization
sets and kernel factorizations.

Dependency-free on purpose: the library modules that implement each choice and the
programs' flags (pipelines/flags_def.py, pipelines/check_tflite.py) import them from
here, so a flag accepts exactly what the library implements, and a program can list
them without loading TensorFlow. The order is the one the flags' --help shows.
"""

DATASETS = ("digits", "fashion_mnist", "mnist_npz")  # atmc_tf.data.load_dataset
MODELS = ("small_cnn", "lenet", "mlp")  # atmc_tf.models.build_model
# atmc_tf.training.method_config; the pipeline's --method choices are pipelines/methods_table.py's.
METHODS = ("natural", "da", "nap", "ap", "al0", "alr", "atmc")
QUANT_SCHEMES = ("codebook_int8", "codebook", "uniform_int8")  # atmc_tf.constraints.quantize
FACTORIZATIONS = ("none", "abc", "lowrank")  # atmc_tf.layers.ATMCWrapper
