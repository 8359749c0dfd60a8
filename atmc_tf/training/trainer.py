"""ATMCTrainer: the constrained min-max problem as a composition run by Keras' own fit.

A training run composes loss terms (atmc_tf.training.terms: the clean loss, the
adversarial loss, ...) and constraint sets (atmc_tf.constraints: the global L0 budget,
a fixed support, ADMM quantization, ...). One step:

    terms prepare (craft adversarial inputs)  ->  loss = terms + constraint penalties
    -> optimizer step (with loss scaling under mixed precision)
    -> constraints project, in order, in cross-replica context  ->  terms after_step

fit() sets the constraints up before the first step (once per run; a resumed run does
not redo it) and ends with a hard projection, so the weights satisfy every constraint
exactly. Everything else (callbacks, validation, History, progress bars, distribution
strategies, compile(loss=, metrics=)) is Keras' own. The step itself never names a
method: a new constraint or term is a new module plus a registry entry.

Projections and state updates run in cross-replica context (the public
ReplicaContext.merge_call + extended.update), as Keras' optimizer applies its own
updates, so they are correct under MirroredStrategy and MultiWorkerMirroredStrategy:
every replica receives the same projected value.
"""
import contextlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from atmc_tf import compat
from atmc_tf import constraints as C
from atmc_tf.constraints import TensorInfo, constraint_from_config, constraint_to_config
from atmc_tf.layers import atmc_wrappers, constraint_scope
from atmc_tf.training.callbacks import StopOnNonFiniteLoss
from atmc_tf.training.config import ATMCConfig
from atmc_tf.training.metrics import LastValue
from atmc_tf.training.structure import ChannelSilencer, depthwise_ties
from atmc_tf.training.terms import StepContext, term_from_config, term_to_config

# String losses whose Keras default expects probabilities: the trainer's nets output logits.
_PROBABILITY_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy")


def _in_cross_replica(fn):
    """Run fn(strategy) once in cross-replica context, from replica context (a step) or outside it."""
    context = tf.distribute.get_replica_context()
    if context is None:  # already cross-replica
        return fn(tf.distribute.get_strategy())
    return context.merge_call(fn)


def _update(strategy, variable, value):
    """variable <- value on every replica (cross-replica context), as Keras' optimizer writes."""
    strategy.extended.update(variable.value, lambda v, t: v.assign(t), args=(value,), group=False)


def _as_loss(loss):
    """compile(loss=...) as a callable (y, logits, sample_weight) -> weighted mean."""
    if loss is None:
        return compat.per_replica_loss(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if isinstance(loss, str) and loss in _PROBABILITY_LOSSES:
        raise ValueError(f"compile(loss={loss!r}) expects probabilities, but ATMCTrainer's net outputs logits; "
                         "pass keras.losses.SparseCategoricalCrossentropy(from_logits=True) (the default)")
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return compat.per_replica_loss(loss)

    def weighted(y, logits, sample_weight=None):
        per_example = loss(y, logits)
        if sample_weight is None:
            return tf.reduce_mean(per_example)
        w = tf.cast(tf.reshape(sample_weight, tf.shape(per_example)), per_example.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(per_example * w), tf.reduce_sum(w))
    return weighted


def _as_metric(identifier, prefix=""):
    """One compile(metrics=...) entry as a Metric named prefix + its name ("accuracy" on labels)."""
    if isinstance(identifier, str) and identifier in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name=prefix + identifier)
    if isinstance(identifier, keras.metrics.Metric):
        if not prefix:
            return identifier
        return type(identifier).from_config({**identifier.get_config(), "name": prefix + identifier.name})
    metric = keras.metrics.get(identifier)
    if isinstance(metric, keras.metrics.Metric):
        return _as_metric(metric, prefix)
    name = identifier if isinstance(identifier, str) else getattr(metric, "__name__", "metric")
    return keras.metrics.MeanMetricWrapper(metric, name=prefix + name)


@keras.saving.register_keras_serializable(package="atmc_tf")
class ATMCTrainer(keras.Model):
    """Trains a model built by atmc_tf.layers.wrap_model under a composition of terms and constraints.

    ATMCTrainer(net, config) runs an ATMCConfig recipe (method_config); ATMCTrainer(net,
    terms=[...], constraints=[...]) runs any composition. teacher: the frozen model a
    distillation term (terms.RobustDistillation, ATMCConfig(distill=...)) learns from. Build it (and the wrapped net)
    inside strategy.scope() to train on several devices. Save `trainer.net` with
    .save("x.keras"); the trainer also round-trips through get_config.
    """

    def __init__(self, net, config=None, terms=None, constraints=None, seed=None, teacher=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(teacher, dict):
            teacher = keras.saving.deserialize_keras_object(teacher)
        if teacher is not None:
            teacher.trainable = False  # a distillation term's frozen teacher, carried by checkpoints
        self.teacher = teacher
        if isinstance(config, dict):
            config = ATMCConfig.from_dict(config)
        if config is not None and (terms is not None or constraints is not None):
            raise ValueError("pass either an ATMCConfig or terms= and constraints=, not both")
        if config is None and terms is None and constraints is None:
            config = ATMCConfig()
        self.net = net
        self.config = config
        if config is not None:
            terms, constraints = config.components()
        self.terms = [term_from_config(t) if isinstance(t, dict) else t for t in (terms or [])]
        self.constraints = [constraint_from_config(c) if isinstance(c, dict) else c for c in (constraints or [])]
        if not self.terms:
            raise ValueError("ATMCTrainer needs at least one loss term")
        self.wrappers = atmc_wrappers(net)
        if self.constraints and not self.wrappers:
            raise ValueError("constraints need a model wrapped with atmc_tf.layers.wrap_model")
        reads = depthwise_ties(net) if self.wrappers else {}
        infos = [TensorInfo(name=v.path, shape=tuple(v.shape), channel_axes=w.channel_axes, layer=w.layer.name,
                            kind=type(w.layer).__name__,
                            reads=reads.get(w.layer.name, "") if w.factorization == "none" else "")
                 for w in self.wrappers for v in w.compressed_variables]
        # 1 once the constraints were set up, so resuming from a checkpoint never redoes it.
        self._constraints_ready = self.add_weight(name="constraints_ready", shape=(), dtype="int32",
                                                  initializer="zeros", trainable=False)
        # The base of every training step's stateless seed (StepContext.seed): drawn from NumPy's
        # global RNG (keras.utils.set_random_seed fixes it) unless given, and checkpointed, so the
        # attack's random starts of a resumed run are those of an uninterrupted one.
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self._seed = int(seed)
        self._rng_seed = self.add_weight(name="rng_seed", shape=(), dtype="int64",
                                         initializer=keras.initializers.Constant(self._seed), trainable=False)
        # Steps of constraint enforcement (ADMM's update interval counts these).
        self._constraint_steps = self.add_weight(name="constraint_steps", shape=(), dtype="int64",
                                                 initializer="zeros", trainable=False)
        for i, c in enumerate(self.constraints):
            c.build(infos, self._state_factory(f"c{i}_{c.kind}"))
        for t in self.terms:
            t.build(self)
        # Structured constraints: a pruned channel's bias and BatchNorm go with its kernel slice.
        silenced = [t.layer for c in self.constraints if getattr(c, "structured", False) for t in c.tensors]
        self._silencer = ChannelSilencer(net, silenced) if silenced else None
        self._loss_tracker = keras.metrics.Mean(name="loss")
        names = ["nnz", "budget"] + [n for c in self.constraints for n in c.metric_names if n != "budget"]
        self._constraint_trackers = {n: LastValue(n) for n in dict.fromkeys(names)}
        self._loss_fn = _as_loss(None)
        self._user_metrics = {}
        self._prepared = False  # prepare_constraints() ran (or found them ready) in this process
        # The wrapped net is built already; so is the trainer (BackupAndRestore checks).
        self.built = bool(net.built)

    def _state_factory(self, prefix):
        def make_variable(name, shape, dtype, initializer):
            return self.add_weight(name=f"{prefix}_{name}", shape=tuple(shape), dtype=dtype,
                                   initializer=initializer, trainable=False)
        return make_variable

    # --- Keras plumbing ---------------------------------------------------
    def call(self, x, training=False):
        return self.net(x, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                **kwargs):
        """keras.Model.compile. loss: used by every loss term on the net's logits (default
        SparseCategoricalCrossentropy(from_logits=True)); metrics: computed on the clean
        predictions under their own names and on adversarial ones as adv_<name>."""
        if loss_weights is not None:
            raise ValueError("ATMCTrainer does not take loss_weights (one output); weight the clean and "
                             "adversarial terms instead (method_config(clean_weight=..., adv_weight=...))")
        if weighted_metrics:
            raise ValueError("ATMCTrainer does not take weighted_metrics; fit's sample_weight / class_weight "
                             "weight the loss, and metrics= are computed unweighted")
        self._loss_fn = _as_loss(loss)
        adversarial = any(t.adv_user_metrics for t in self.terms)
        metrics = list(metrics or [])
        self._user_metrics = {"clean": [_as_metric(m) for m in metrics],
                              "adv": [_as_metric(m, "adv_") for m in metrics] if adversarial else []}
        super().compile(optimizer=optimizer, **kwargs)

    @property
    def metrics(self):
        out = [self._loss_tracker]
        for t in self.terms:
            out.extend(t.metrics)
        for group in self._user_metrics.values():
            out.extend(group)
        return out + list(self._constraint_trackers.values())

    def get_config(self):
        config = {**super().get_config(), "net": keras.saving.serialize_keras_object(self.net), "seed": self._seed}
        if self.teacher is not None:
            config["teacher"] = keras.saving.serialize_keras_object(self.teacher)
        if self.config is not None:
            return {**config, "config": self.config.to_dict()}
        return {**config, "terms": [term_to_config(t) for t in self.terms],
                "constraints": [constraint_to_config(c) for c in self.constraints]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        net = keras.saving.deserialize_keras_object(config.pop("net"), custom_objects=custom_objects)
        return cls(net, **config)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if compat.needs_symbolic_build(self):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def make_train_function(self, force=False):
        # fit and train_on_batch both come here first: set the constraints up before any step.
        self.prepare_constraints()
        return super().make_train_function(force=force)

    # --- the step -------------------------------------------------------------
    def compute_term_loss(self, y, logits, sample_weight=None):
        """The compiled loss on (labels, float32 logits); what every loss term calls."""
        return self._loss_fn(y, logits, sample_weight=sample_weight)

    @property
    def _compressed(self):
        # A property, not an attribute: Keras would track a list of the net's variables as the trainer's own.
        return [v for w in self.wrappers for v in w.compressed_variables]

    def _values(self):
        return [v.value for v in self._compressed]

    def train_step(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        ctx = StepContext(self, x, y, sw, training=True)
        with constraint_scope():
            for t in self.terms:
                t.prepare(ctx)
            with tf.GradientTape() as tape:
                tape.watch(list(ctx.watched.values()))
                parts = [p for p in (t.loss(ctx) for t in self.terms) if p is not None]
                parts = [p * ctx.term_scale for p in parts]  # after every term's loss(): see StepContext
                values = self._values()
                parts += [p for p in (c.penalty(values) for c in self.constraints) if p is not None]
                parts += [tf.cast(l, tf.float32) for l in self.net.losses]
                loss = tf.add_n(parts)
                # Loss scaling (mixed precision; a no-op otherwise); gradients are summed over
                # replicas, so scale by 1/replicas to make the sum the mean.
                scaled = self.optimizer.scale_loss(loss)
                scaled = scaled / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, scaled.dtype)
            variables = self.trainable_variables
            grads = tape.gradient(scaled, variables + list(ctx.watched.values()))
            ctx.input_grads = dict(zip(ctx.watched, grads[len(variables):]))
            self.optimizer.apply(grads[:len(variables)], variables)
            self.enforce_constraints()
            for t in self.terms:
                t.after_step(ctx)
        self._loss_tracker.update_state(loss)
        self._update_user_metrics(ctx)
        self._update_constraint_metrics()
        return compat.step_outputs({m.name: m.result() for m in self.metrics}, self.distribute_strategy)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        ctx = StepContext(self, x, y, training=False)
        parts = [p for p in (t.evaluate(ctx) for t in self.terms) if p is not None]
        parts = [p * ctx.term_scale for p in parts]
        self._loss_tracker.update_state(tf.add_n(parts))
        self._update_user_metrics(ctx)
        self._update_constraint_metrics()
        return compat.step_outputs({m.name: m.result() for m in self.metrics}, self.distribute_strategy)

    def _update_user_metrics(self, ctx):
        for name, group in self._user_metrics.items():
            if name in ctx.logits:
                for m in group:
                    m.update_state(ctx.y, ctx.logits[name])

    def _update_constraint_metrics(self):
        t = self._constraint_trackers
        values = self._values()
        if values:
            t["nnz"].update_state(tf.cast(C.count_nonzero(values), tf.float32))
        for c in self.constraints:
            for name, value in c.metrics(values).items():
                t[name].update_state(value)

    # --- enforcing the constraints (cross-replica) ------------------------------
    def assign_state(self, variable, value):
        """Assign a state variable (a constraint's or a term's) on every replica; any context."""
        _in_cross_replica(lambda strategy: _update(strategy, variable, value))

    def enforce_constraints(self):
        """Project onto every constraint set once (after an optimizer step); any context."""
        if self.constraints:
            _in_cross_replica(self._enforce_cross_replica)

    def _enforce_cross_replica(self, strategy):
        def assign(variable, value):
            _update(strategy, variable, value)

        step = self._constraint_steps.value + 1
        assign(self._constraint_steps, step)
        before = [tf.convert_to_tensor(v) for v in self._values()]
        values = before
        for c in self.constraints:
            values = c.project(values, step, assign)
            if getattr(c, "structured", False) and self._silencer is not None:
                values = self._silencer.zero_read_slices(self._compressed, values)
        for var, old, new in zip(self._compressed, before, values):
            if new is not old:  # only constraints that moved the weights write them back
                assign(var, new)
        if self._silencer is not None:
            self._silencer.silence(assign)

    @contextlib.contextmanager
    def custom_step(self):
        """One step of a custom training loop, with the constraints kept:

            trainer.prepare_constraints()
            for x, y in data:
                with trainer.custom_step():
                    with tf.GradientTape() as tape:
                        loss = loss_fn(y, net(x, training=True))
                    optimizer.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
            trainer.finalize()

        The wrapped net may run in training mode inside it; on leaving, every constraint projects.
        """
        if tf.executing_eagerly():
            self.prepare_constraints()
        elif not self._prepared:
            raise RuntimeError("call trainer.prepare_constraints() before the custom loop's tf.function is traced")
        with constraint_scope():
            yield self
        self.enforce_constraints()

    # --- before and after training --------------------------------------------
    def _apply_constraints(self, method, constrained):
        """Run every constraint's `method` (initialize or finalize) in order, eagerly, and write the
        result back; mark the wrappers constrained (1) or in training (0)."""
        with self.distribute_strategy.scope():
            values = [tf.convert_to_tensor(v) for v in self._values()]
            for c in self.constraints:
                values = getattr(c, method)(values, lambda var, value: var.assign(value))
                if getattr(c, "structured", False) and self._silencer is not None:
                    values = self._silencer.zero_read_slices(self._compressed, values)
            for var, val in zip(self._compressed, values):
                var.assign(val)
            if self._silencer is not None:
                self._silencer.silence(lambda var, value: var.assign(value))
            for w in self.wrappers:
                w.constrained.assign(constrained)

    def prepare_constraints(self):
        """Once per training run: set every constraint up (AP's support, ADMM's Z = Q(W), U = 0)."""
        if int(self._constraints_ready.numpy()) != 1:
            self._apply_constraints("initialize", constrained=0)
            self._constraints_ready.assign(1)
        self._prepared = True

    def finalize(self):
        """Hard projection onto every constraint set; afterwards they hold exactly."""
        self._apply_constraints("finalize", constrained=1)

    def fit(self, *args, **kwargs):
        """keras.Model.fit, plus: constraints set up before, hard projection after.

        A NaN/Inf loss stops training and raises TrainingDivergedError; the
        weights are then left as they are (no final projection), and any
        BackupAndRestore checkpoint still holds the last good epoch.
        """
        self.prepare_constraints()
        callbacks, first = list(kwargs.get("callbacks") or []), []
        for t in self.terms:  # a term's own callbacks (terms.LossTerm.fit_callbacks) run before the user's
            needed, callbacks = t.fit_callbacks(self, callbacks, kwargs)
            first += needed
        kwargs["callbacks"] = [StopOnNonFiniteLoss()] + first + callbacks
        history = super().fit(*args, **kwargs)
        self.finalize()
        self._warn_cut_layers()
        return history

    def _warn_cut_layers(self):
        """A global budget may empty a small layer (a magnitude-scored budget empties depthwise kernels and
        stems first): say so once fit is done, in one line that names the layers and the fix."""
        if not any(getattr(c, "sparsifying", False) for c in self.constraints):
            return
        from atmc_tf.training.diagnostics import LayerCutWarning, cut_layers_line, path_report
        try:
            line = cut_layers_line(path_report(self.net))
        except Exception:  # noqa: BLE001 -- a graph the diagnostic cannot read (e.g. subclassed): no warning
            return
        if line:
            warnings.warn(line, LayerCutWarning, stacklevel=3)

    # --- reporting -------------------------------------------------------------
    @property
    def quantization(self):
        """The Quantization constraint of this run, or None."""
        return next((c for c in self.constraints if isinstance(c, C.Quantization)), None)

    @property
    def nnz_budget(self):
        # The unstructured budget (nonzero weights); a channel budget (GroupL0) counts groups or parameters.
        return next((c.budget for c in self.constraints
                     if c.sparsifying and getattr(c, "budget_unit", "entries") == "entries"), None)

    def constraint_report(self):
        """nnz vs budget, the constraints, and the size accounting, as plain Python."""
        from atmc_tf.training.summary import model_size
        q = self.quantization
        size = model_size(self.net, q.scheme if q else None, q.bits if q else None)
        return {"nnz": size.nnz, "budget": self.nnz_budget, "size": size.as_dict(),
                "constraints": [c.report() for c in self.constraints]}
