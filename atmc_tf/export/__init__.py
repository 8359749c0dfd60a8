"""Export of plain Keras models to full-integer int8 TFLite, and the checks on the result.

- `tflite`: conversion, the exported kernels vs the trained ones, a LiteRT
  runner (phones), a C array for TFLite Micro firmware, gzip size.
- `micro`: the TFLite Micro check (ops, smallest arena, outputs vs LiteRT),
  run in a child process so that a bad model cannot crash the caller.
- `micro_compress`: the batch-1 model for TFLite Micro with few-valued kernels
  stored as per-channel look-up-table indices (TFLM_DECODE), and the check that
  TFLM's outputs stay bit-identical.
- `litert_packed`: the int8 .tflite for LiteRT (phones) with uniform low-bit FULLY_CONNECTED /
  CONV_2D kernels stored as packed int4 (docs/device_bytes_litert.md).
- `litert_sparse`: the int8 .tflite for LiteRT with sparse kernels in TFLite's sparse tensor
  format (the converter's EXPERIMENTAL_SPARSITY; DENSIFY where an op has no sparse kernel).
- `evaluate`: the .tflite against its Keras model on the same adversarial
  images (accuracy, top-1 agreement).
- `blackbox`: the Square Attack, a score-based black-box attack that only queries logits (an
  int8 .tflite through LiteRTModel.predict), L_inf or L2.
- `twin`: `fake_quant_twin`, a differentiable float twin read from an int8 .tflite (dequantized
  kernels, fake-quantized int8 tensors, straight-through gradients) for gradient attacks on the
  file itself (`twin_attack`); TensorFlow is imported only when a twin is built.
- `winners`: the O(n) int8 form of wide winners-take-all layers (a threshold search over a table
  aligned with the scores' int8 grid), which `to_int8_tflite` converts them in.
- `atomic`: file writes that never leave a half-written file.
- `activations`: per-layer activation density (clean / adversarial), effective MACs, and
  robustness measured both with plain PGD and through a BPDA surrogate of the sparsity layers.
- `surgery`: a smaller Keras model without the channels that do nothing (all-zero or
  foldable constant channels), same outputs; `count_macs` (`layer_macs`: per layer).

Importing this package does not import TensorFlow; only conversion and the
kernel comparison do.
"""
from atmc_tf.export import atomic
from atmc_tf.export.activations import activation_densities, effective_macs, masking_aware_robustness
from atmc_tf.export.atomic import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic
from atmc_tf.export.blackbox import square_attack
from atmc_tf.export.evaluate import DeploymentEval, evaluate_deployment
from atmc_tf.export.litert_packed import pack_int4_kernels, to_litert_packed
from atmc_tf.export.litert_sparse import sparse_summary, sparse_tensors, to_litert_sparse
from atmc_tf.export.micro import MicroCheck, check_micro
from atmc_tf.export.micro_compress import (
    CompressedMicroCheck,
    MicroCompressionError,
    compress_for_micro,
    device_bytes,
    micro_file,
    micro_outputs_equal,
)
from atmc_tf.export.surgery import SurgeryError, count_macs, layer_macs, shrink_model
from atmc_tf.export.tflite import (
    KERNEL_OPS,
    LiteRTModel,
    c_header,
    c_source,
    gzip_size,
    int8_problem,
    kernel_codes_match,
    op_names,
    parse_check,
    strip_names,
    tflite_kernels,
    to_int8_tflite,
)
from atmc_tf.export.twin import FakeQuantTwin, fake_quant_twin, twin_agreement, twin_attack

__all__ = [n for n in dir() if not n.startswith("_")]
