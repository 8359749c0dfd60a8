"""The boosted ensemble as ONE Keras model: the learners as branches of one graph, their softmax outputs
combined by the boosting weights.

    scores(x) = sum_t w_t softmax(learner_t(x)),   w_t = alpha_t / sum_s alpha_s

Each learner is a nested model (its layer names never clash with another's), its logits go through a
Softmax (AdaBoost.MM's confidence-rated learner lies on the simplex: atmc_tf.boosting.costs) and
WeightedSum adds them. The weights are normalised (mixture_weights): the same argmax as the boosting
scores F = sum_t alpha_t softmax_t (F = sum alpha x the output), and an output in [0, 1] whatever the
scale of the alphas. That output (F / sum alpha) is what attacks differentiate (atmc_tf.attacks treat
it as logits) and what the int8 .tflite computes; its argmax is the ensemble's prediction.
"""
import keras


@keras.saving.register_keras_serializable(package="atmc_tf")
class WeightedSum(keras.layers.Layer):
    """sum_t coefficients[t] * inputs[t]: fixed coefficients (constants of the graph, not weights)."""

    def __init__(self, coefficients, **kwargs):
        super().__init__(**kwargs)
        self.coefficients = [float(c) for c in coefficients]
        if not self.coefficients:
            raise ValueError("WeightedSum needs at least one coefficient")

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if len(inputs) != len(self.coefficients):
            raise ValueError(f"WeightedSum has {len(self.coefficients)} coefficients for {len(inputs)} inputs")
        total = inputs[0] * self.coefficients[0]
        for c, x in zip(self.coefficients[1:], inputs[1:]):
            total = total + x * c
        return total

    def compute_output_shape(self, input_shape):
        return input_shape[0] if isinstance(input_shape, list) else input_shape

    def get_config(self):
        return {**super().get_config(), "coefficients": list(self.coefficients)}


def mixture_weights(alphas):
    """alpha_t / sum alpha (the alphas are >= 0); uniform while no learner has a positive weight yet."""
    alphas = [float(a) for a in alphas]
    if min(alphas) < 0:
        raise ValueError(f"boosting weights must be >= 0, got {alphas}")
    total = sum(alphas)
    return [a / total for a in alphas] if total > 0 else [1.0 / len(alphas)] * len(alphas)


def build_ensemble(learners, alphas, name="boosted_ensemble"):
    """One functional model from plain learner models (logits out) and their boosting weights (>= 0)."""
    if len(learners) != len(alphas) or not learners:
        raise ValueError(f"need as many weights as learners (>= 1), got {len(learners)} and {len(alphas)}")
    alphas = mixture_weights(alphas)
    inputs = keras.Input(shape=tuple(learners[0].input_shape[1:]), name="image")
    branches = [keras.layers.Softmax(name=f"softmax_{t}")(learner(inputs)) for t, learner in enumerate(learners)]
    scores = WeightedSum(alphas, name="weighted_sum")(branches if len(branches) > 1 else branches[0])
    return keras.Model(inputs, scores, name=name)


def named_learner(model, index):
    """The learner as a model named learner_<index>: unique among the ensemble's branches."""
    return keras.Model(model.inputs[0], model.outputs[0], name=f"learner_{index}")
