"""The user's programs (absl): the main ATMC job, the .tflite check, the benchmark.

They check flags, files and data before TensorFlow is loaded, and import what they use
from atmc_tf's submodules; atmc_tf's top-level API therefore stays lazy in them
(ATMC_TF_LIGHT_IMPORT, see atmc_tf/__init__.py).
"""
import os
import sys

os.environ.setdefault("ATMC_TF_LIGHT_IMPORT", "1")
# TensorFlow's C++ log lines (CUDA probing on a CPU machine, oneDNN notices, graph warnings) are noise
# for a user of these programs; --verbose=3 (or TF_CPP_MIN_LOG_LEVEL in the environment) shows those
# that this setting filters (set before TensorFlow loads, so read from the command line here).
if "--verbose=3" not in sys.argv[1:]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
