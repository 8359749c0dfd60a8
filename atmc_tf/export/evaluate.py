"""The deployment check: the int8 .tflite against its Keras model on the same (adversarial) images.

The pipeline, the benchmark (its cells, its strong attack and its TFMOT peer)
and pipelines.check_tflite all report these numbers through `evaluate_deployment`.
The .tflite is not differentiable, so its robust accuracy is a transfer attack:
the adversarial images are crafted on the float Keras model by the caller and
fed to both. No TensorFlow import: the Keras model is only asked for
`predict(x, batch_size=..., verbose=0)`, so a tf_keras model (the TFMOT peer)
serves as well, and a .tflite alone (check_tflite) needs no Keras at all.
"""
import dataclasses

import numpy as np

from atmc_tf.export.tflite import LiteRTModel


@dataclasses.dataclass(frozen=True)
class DeploymentEval:
    """Top-1 accuracies and agreement on `samples` images; None where the input was not given
    (no Keras model, or no adversarial images)."""

    samples: int
    tflite_clean_acc: float
    tflite_robust_acc: float | None = None
    keras_clean_acc: float | None = None
    keras_robust_acc: float | None = None
    top1_agreement: float | None = None  # .tflite and Keras predict the same class, clean images
    top1_agreement_adv: float | None = None  # the same, on the adversarial images

    def as_dict(self):
        return dataclasses.asdict(self)


def evaluate_deployment(tflite, x, y, x_adv=None, keras_model=None, batch_size=256):
    """Accuracy of the .tflite (bytes or a LiteRTModel) on x and x_adv, and of keras_model, with agreement.

    x: float test images, y: integer labels; x_adv: the same images after an
    attack crafted on keras_model, or a function (x, y) -> those images that is
    called after the clean predictions (None: clean numbers only); keras_model:
    the float model the .tflite was exported from (None: the .tflite alone).
    """
    lite = tflite if isinstance(tflite, LiteRTModel) else LiteRTModel(tflite)
    y = np.asarray(y).reshape(-1)

    def top1(images):
        lite_pred = lite.predict(images, batch_size=batch_size).argmax(-1)
        if keras_model is None:
            return lite_pred, None
        return lite_pred, keras_model.predict(images, batch_size=batch_size, verbose=0).argmax(-1)

    def rate(a, b):
        return None if a is None or b is None else float(np.mean(a == b))

    lite_clean, keras_clean = top1(x)
    if callable(x_adv):
        x_adv = x_adv(x, y)
    lite_adv, keras_adv = top1(x_adv) if x_adv is not None else (None, None)
    return DeploymentEval(samples=int(len(y)), tflite_clean_acc=rate(lite_clean, y),
                          tflite_robust_acc=rate(lite_adv, y), keras_clean_acc=rate(keras_clean, y),
                          keras_robust_acc=rate(keras_adv, y), top1_agreement=rate(lite_clean, keras_clean),
                          top1_agreement_adv=rate(lite_adv, keras_adv))
