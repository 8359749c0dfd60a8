"""The boosted ensemble shipped as ONE int8 file, checked on LiteRT and TFLite Micro.

The whole ensemble graph (every learner, its Softmax, the weighted sum: ensemble.build_ensemble) goes
through atmc_tf.export.to_int8_tflite once, so a phone and a microcontroller run one .tflite whose
output is the ensemble's scores. The microcontroller file is micro_file's (LUT / PRUNE kernels where
they pay, no tensor names, checked bit-identical on TFLite Micro); device bytes are counted as for one
model.
"""
import numpy as np

from atmc_tf.export import LiteRTModel, check_micro, device_bytes, micro_file, micro_outputs_equal, to_int8_tflite


def export_ensemble(ensemble, representative_x):
    """{"tflite", "tflite_b1", "tflite_mcu": bytes, "mcu_plan": compress_for_micro's report}."""
    tfl = to_int8_tflite(ensemble, representative_x)
    tfl_b1 = to_int8_tflite(ensemble, representative_x, batch_size=1)
    tfl_mcu, plan = micro_file(tfl_b1)
    return {"tflite": tfl, "tflite_b1": tfl_b1, "tflite_mcu": tfl_mcu, "mcu_plan": plan}


# TFLite's int8 Softmax output has the fixed scale 1/256.
SOFTMAX_SCALE = 1.0 / 256


def micro_step_tolerance(output_scale):
    """How many output steps TFLM may differ from LiteRT on an ensemble file whose output has `output_scale`.

    TFLM's Softmax may differ from LiteRT's by one of its 1/256 steps (atmc_tf.export.micro); the weighted
    sum scales learner t's by c_t with sum c_t = 1, so the branches together move the scores by at most one
    softmax step, 1/256, plus one step of the output's own rounding. The output's scale is calibrated on
    the scores' range, which is narrow for an ensemble of uncertain learners (0.00095 was seen: a top score
    of 0.24), so one softmax step is several output steps there. One model (one Softmax at most, quantized
    to 1/256) keeps the single step of check_micro's default."""
    return 1 + int(np.ceil(SOFTMAX_SCALE / float(output_scale) - 1e-9))


def check_ensemble(ensemble, files, x, y, micro_samples=20):
    """The Keras ensemble against its int8 file on LiteRT (clean accuracy of both, top-1 agreement on x)
    and on TFLite Micro (check_micro on micro_samples images: outputs within micro_step_tolerance of
    LiteRT's, which is recorded as "max_step_diff"; the compressed microcontroller file bit-identical to
    the plain batch-1 one on the same images)."""
    y = np.asarray(y).reshape(-1)
    keras_pred = np.argmax(ensemble.predict(x, batch_size=256, verbose=0), axis=-1)
    lite = LiteRTModel(files["tflite"])
    lite_pred = np.argmax(lite.predict(x), axis=-1)
    lite_b1 = LiteRTModel(files["tflite_b1"])
    x_int8 = lite_b1.quantize_input(x[:micro_samples])
    tolerance = micro_step_tolerance(lite_b1.output_scale)
    micro = check_micro(files["tflite_b1"], x_int8, lite_b1.predict_int8(x_int8), max_step_diff=tolerance).as_dict()
    micro["max_step_diff"] = tolerance
    mcu = micro_outputs_equal(files["tflite_b1"], files["tflite_mcu"], x_int8,
                              arena_original=micro["arena_bytes"] if micro["ok"] else None).as_dict()
    return {"keras_clean_acc": float(np.mean(keras_pred == y)), "tflite_clean_acc": float(np.mean(lite_pred == y)),
            "top1_agreement": float(np.mean(keras_pred == lite_pred)), "ops": lite.op_names(),
            "micro": micro, "micro_compressed": mcu,
            "device_bytes": device_bytes(files["tflite"], files["tflite_mcu"], files["tflite_b1"])}
