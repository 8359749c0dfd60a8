"""The benchmark (`python -m benchmarks.benchmark`, see benchmarks/README.md): ATMC against its
baselines and TensorFlow Model Optimization. Not part of the library: pipelines/ and atmc_tf
never import it; it runs on top of both.

Like pipelines/, its programs check flags before TensorFlow is loaded and its TFMOT process
runs on tf_keras, so atmc_tf's top-level API stays lazy here (ATMC_TF_LIGHT_IMPORT, see
atmc_tf/__init__.py).
"""
import os

os.environ.setdefault("ATMC_TF_LIGHT_IMPORT", "1")
