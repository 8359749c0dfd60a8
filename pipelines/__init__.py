"""The user's programs (absl): the main ATMC job, the .tflite check, the benchmark.

They check flags, files and data before TensorFlow is loaded, and import what they use
from atmc_tf's submodules; atmc_tf's top-level API therefore stays lazy in them
(ATMC_TF_LIGHT_IMPORT, see atmc_tf/__init__.py).
"""
import os

os.environ.setdefault("ATMC_TF_LIGHT_IMPORT", "1")
