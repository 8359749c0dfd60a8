"""Every workaround for a Keras / TensorFlow limitation, in one place.

Each shim says what it works around, names the upstream report where one exists,
is gated on the versions it was measured with or probes for the limitation itself,
and has a test in tests/test_compat.py that fails once upstream changes, so that a
shim never outlives its reason. Everything else in atmc_tf uses public APIs only.
"""
import keras
import tensorflow as tf

KERAS_VERSION = tuple(int(p) for p in keras.version().split(".")[:3] if p.isdigit())


# --- 1. keras.Model has no public way to tell a Functional model from a subclassed one ------
# Keras 3 exports no `Functional` class; keras.src.models.functional.Functional is private.
# Sequential and Functional models expose their layer graph (clone_model rebuilds them);
# subclassed models do not.
try:
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # a Keras that moved it: then only Sequential is recognised, loudly (see the test)
    _Functional = None


def is_graph_model(model):
    """True for a keras.Sequential or Functional model (one that clone_model can rebuild layer by layer)."""
    return isinstance(model, keras.Sequential) or (_Functional is not None and isinstance(model, _Functional))


# --- 2. Keras 3 multi-worker step outputs: scalars cannot be reduced ---------------------------
# In multi-worker mode Keras' reduce_per_replica calls strategy.reduce("MEAN", v, axis=0) on
# every step output, which fails on scalars (tensorflow/tensorflow#72388). A leading axis of
# length 1 makes that reduce the mean over workers.
def _multi_worker(strategy):
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(v) if isinstance(v, (list, dict)) else 1 for k, v in spec.items()
               if k in ("worker", "chief")) > 1


def step_outputs(outputs, strategy):
    """train_step / test_step outputs that Keras can reduce under every strategy."""
    if _multi_worker(strategy):
        return {k: tf.reshape(v, [1]) for k, v in outputs.items()}
    return outputs


# --- 3. Keras 3 symbolic build under MultiWorkerMirroredStrategy --------------------------------
# Before the first step, Keras' TF trainer (_maybe_symbolic_build) MEAN-reduces one distributed
# input batch across replicas to build the model symbolically; under MultiWorkerMirroredStrategy
# that reduce fails on the PerReplica batch (no upstream report found; reproduced by
# tests/test_training.py::test_multiworker_two_processes_end_identical_and_constrained). A model
# whose layers are all built and that has no compiled loss or metrics of Keras' own needs only
# its optimizer built, which needs no data.
def needs_symbolic_build(model):
    return not (model.built and all(l.built for l in model.layers)
                and model._compile_metrics is None and model._compile_loss is None)


# --- 4. Keras 3 scales a mean-reduced Loss by 1 / replicas under tf.distribute -----------------
# keras.src.losses.loss.reduce_values ends with scale_loss_for_distribution, made for Keras' own
# train_step, which then sums the replicas' gradients. ATMCTrainer's train_step divides its whole
# loss (terms and constraint penalties) by the replicas itself, so a term's Keras loss must be its
# replica's plain mean: with 2 replicas every step was half a one-device run's and the logged
# losses half the true ones (measured: weight movement 0.685 vs 1.369 after one identical step).
_SCALED_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def per_replica_loss(loss):
    """A keras.losses.Loss as (y, logits, sample_weight) -> the mean over this replica's examples."""
    def per_replica_mean(y, logits, sample_weight=None):
        value = loss(y, logits, sample_weight=sample_weight)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1 and loss.reduction in _SCALED_REDUCTIONS:
            value = value * tf.cast(replicas, value.dtype)
        return value
    return per_replica_mean
