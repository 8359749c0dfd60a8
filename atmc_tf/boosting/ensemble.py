"""The boosted ensemble as ONE Keras model: the learners as branches of one graph, their softmax outputs
combined by the boosting weights.

    scores(x) = sum_t alpha_t softmax(learner_t(x))

Each learner is a nested model (its layer names never clash with another's), its logits go through a
Softmax (AdaBoost.MM's confidence-rated learner lies on the simplex: atmc_tf.boosting.costs) and
WeightedSum adds them. The output, the ensemble's class scores F, is what attacks differentiate
(atmc_tf.attacks treat it as logits) and what the int8 .tflite computes; argmax F is the prediction.
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


def build_ensemble(learners, alphas, name="boosted_ensemble"):
    """One functional model from plain learner models (logits out) and their weights."""
    if len(learners) != len(alphas) or not learners:
        raise ValueError(f"need as many weights as learners (>= 1), got {len(learners)} and {len(alphas)}")
    inputs = keras.Input(shape=tuple(learners[0].input_shape[1:]), name="image")
    branches = [keras.layers.Softmax(name=f"softmax_{t}")(learner(inputs)) for t, learner in enumerate(learners)]
    scores = WeightedSum(alphas, name="weighted_sum")(branches if len(branches) > 1 else branches[0])
    return keras.Model(inputs, scores, name=name)


def named_learner(model, index):
    """The learner as a model named learner_<index>: unique among the ensemble's branches."""
    return keras.Model(model.inputs[0], model.outputs[0], name=f"learner_{index}")
