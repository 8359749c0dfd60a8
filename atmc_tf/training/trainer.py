"""ATMCTrainer: the constrained min-max problem as a thin custom train_step.

One step: PGD inner max -> clean/adversarial loss mix + ADMM penalty ->
optimizer step -> projection onto the global L0 ball (or the fixed support)
-> every quant_interval steps Z <- Q_b(mask(W) * (W + U)), U <- U + W - Z.
fit() ends with a hard projection so the weights satisfy every constraint
exactly. Everything else (callbacks, validation, History, progress bars,
distribution strategies) is Keras' own.

Projections and ADMM updates run in cross-replica context through
maybe_merge_call + extended.update, exactly as Keras' own optimizer applies
its updates, so they are correct under MirroredStrategy and
MultiWorkerMirroredStrategy: every replica receives the same projected value.
"""
import keras
import tensorflow as tf

from atmc_tf import constraints as C
from atmc_tf.layers import atmc_wrappers
from atmc_tf.training.callbacks import StopOnNonFiniteLoss
from atmc_tf.training.config import ATMCConfig
from atmc_tf.training.metrics import LastValue

_merge_call = tf.__internal__.distribute.interim.maybe_merge_call


def _xent(y, logits, sample_weight=None):
    """Mean softmax cross-entropy; with sample weights (fit's sample_weight or class_weight)
    the weighted mean."""
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, tf.float32))
    if sample_weight is None:
        return tf.reduce_mean(per_example)
    w = tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example * w), tf.reduce_sum(w))


@keras.saving.register_keras_serializable(package="atmc_tf")
class ATMCTrainer(keras.Model):
    """Wraps a model built by atmc_tf.layers.wrap_model and trains it under ATMCConfig.

    Build it (and the wrapped net) inside strategy.scope() to train on several
    devices. Save `trainer.net` (a plain Functional model of wrappers) with
    .save("x.keras"); the trainer itself also round-trips through get_config.
    """

    def __init__(self, net, config=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = ATMCConfig.from_dict(config)
        self.net = net
        self.config = config or ATMCConfig()
        self.wrappers = atmc_wrappers(net)
        cfg = self.config
        if (cfg.sparsity != "none" or cfg.quantized) and not self.wrappers:
            raise ValueError("sparsity or quantization needs a model wrapped with atmc_tf.layers.wrap_model")
        if cfg.quantized and not all(w.admm for w in self.wrappers):
            raise ValueError("quantization (bits) needs wrap_model(..., admm=True) for the Z and U variables")
        self._vars = [(w, i, v) for w in self.wrappers for i, v in enumerate(w.compressed_variables)]
        # 1 once masks / Z were set up, so resuming from a checkpoint never redoes it.
        self._constraints_ready = self.add_weight(name="constraints_ready", shape=(), dtype="int32",
                                                  initializer="zeros", trainable=False)
        # The last k-th largest |w| of the dynamic L0 projection: warm-starts the next
        # one (sparsity.project_l0_hinted, exact for any value; 0 = no hint yet).
        self._l0_threshold = self.add_weight(name="l0_threshold", shape=(), dtype="float32",
                                             initializer="zeros", trainable=False)
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss", "clean_loss", "adv_loss")}
        self._trackers["clean_acc"] = keras.metrics.SparseCategoricalAccuracy(name="clean_acc")
        self._trackers["adv_acc"] = keras.metrics.SparseCategoricalAccuracy(name="adv_acc")
        for n in ("nnz", "budget", "w_z_dist"):
            self._trackers[n] = LastValue(n)
        # The wrapped net is built already; so is the trainer (BackupAndRestore checks).
        self.built = bool(net.built)

    # --- Keras plumbing ---------------------------------------------------
    def call(self, x, training=False):
        return self.net(x, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def get_config(self):
        return {**super().get_config(), "net": keras.saving.serialize_keras_object(self.net),
                "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        net = keras.saving.deserialize_keras_object(config.pop("net"), custom_objects=custom_objects)
        return cls(net, **config)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' version MEAN-reduces one input batch across replicas to build the
        # model symbolically; under MultiWorkerMirroredStrategy that reduce fails on
        # the PerReplica batch. The wrapped net is built before fit and the trainer
        # has no compiled loss or metrics, so only the optimizer needs building.
        if not (self.built and self.net.built and self._compile_metrics is None
                and self._compile_loss is None):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    # --- the step -------------------------------------------------------------
    def train_step(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        cfg = self.config
        if cfg.adversarial:
            x_adv = cfg.attack.attack(lambda z: self.net(z, training=cfg.attack_bn_training), x, y)
        with tf.GradientTape() as tape:
            terms = []
            if not cfg.adversarial or cfg.clean_weight > 0:
                logits = self.net(x, training=True)
                clean_loss = _xent(y, logits, sw)
                terms.append((cfg.clean_weight if cfg.adversarial else 1.0) * clean_loss)
            if cfg.adversarial:
                logits_adv = self.net(x_adv, training=True)
                adv_loss = _xent(y, logits_adv, sw)
                terms.append(cfg.adv_weight * adv_loss)
            if cfg.quantized:
                terms.append(0.5 * cfg.rho * self._admm_residual())
            terms.extend(self.net.losses)
            loss = tf.add_n(terms)
            # Gradients are summed over replicas: scale so the sum is the mean.
            scaled = loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        _merge_call(self._project_cross_replica, self.distribute_strategy)

        if cfg.adversarial and cfg.clean_weight == 0:
            logits = self.net(x, training=False)
            clean_loss = _xent(y, logits)
        t = self._trackers
        t["loss"].update_state(loss)
        t["clean_loss"].update_state(clean_loss)
        t["clean_acc"].update_state(y, logits)
        if cfg.adversarial:
            t["adv_loss"].update_state(adv_loss)
            t["adv_acc"].update_state(y, logits_adv)
        self._update_constraint_metrics()
        return self._step_outputs()

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        cfg = self.config
        logits = self.net(x, training=False)
        t = self._trackers
        clean_loss = _xent(y, logits)
        t["clean_loss"].update_state(clean_loss)
        t["clean_acc"].update_state(y, logits)
        loss = clean_loss
        if cfg.adversarial:
            x_adv = cfg.attack.attack(lambda z: self.net(z, training=False), x, y)
            logits_adv = self.net(x_adv, training=False)
            adv_loss = _xent(y, logits_adv)
            t["adv_loss"].update_state(adv_loss)
            t["adv_acc"].update_state(y, logits_adv)
            loss = cfg.clean_weight * clean_loss + cfg.adv_weight * adv_loss
        t["loss"].update_state(loss)
        self._update_constraint_metrics()
        return self._step_outputs()

    def _step_outputs(self):
        outputs = {m.name: m.result() for m in self.metrics}
        strategy = self.distribute_strategy
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
                strategy.extended._in_multi_worker_mode():
            # Keras 3 reduces step outputs with strategy.reduce("MEAN", v, axis=0) in
            # multi-worker mode, which fails on scalars (tensorflow/tensorflow#72388).
            # A leading axis of length 1 makes that reduce the mean over workers.
            outputs = {k: tf.reshape(v, [1]) for k, v in outputs.items()}
        return outputs

    def _update_constraint_metrics(self):
        t = self._trackers
        if self._vars:
            t["nnz"].update_state(tf.cast(C.count_nonzero([v.value for _, _, v in self._vars]), tf.float32))
        t["budget"].update_state(float(self.config.nnz_budget or 0))
        if self.config.quantized:
            t["w_z_dist"].update_state(tf.sqrt(self._admm_residual(with_dual=False)))

    def _admm_residual(self, with_dual=True):
        """sum ||W - Z + U||^2 (or ||W - Z||^2) over compressed tensors."""
        total = []
        for w, i, v in self._vars:
            r = v.value - w.admm_z[i].value
            if with_dual:
                r = r + w.admm_u[i].value
            total.append(tf.reduce_sum(tf.square(r)))
        return tf.add_n(total)

    # --- projections (cross-replica) ---------------------------------------
    @staticmethod
    def _assign(strategy, variables, values):
        for var, value in zip(variables, values):
            strategy.extended.update(var.value, lambda v, t: v.assign(t), args=(value,), group=False)

    def _project_cross_replica(self, strategy):
        cfg = self.config
        variables = [v for _, _, v in self._vars]
        if cfg.sparsity == "none" or not variables:
            projected = [tf.convert_to_tensor(v.value) for v in variables]
        elif cfg.sparsity == "dynamic":
            projected, kth = C.project_l0_hinted([tf.convert_to_tensor(v.value) for v in variables],
                                                 cfg.nnz_budget, self._l0_threshold.value)
            self._assign(strategy, variables + [self._l0_threshold], projected + [kth])
        else:
            projected = self._project_support([tf.convert_to_tensor(v.value) for v in variables])
            self._assign(strategy, variables, projected)
        if cfg.quantized:
            step = self.optimizer.iterations
            # Every replica takes the same branch: `step` is a mirrored counter.
            tf.cond(tf.equal(step % cfg.quant_interval, 0),
                    lambda: self._admm_update(strategy, projected),
                    lambda: tf.constant(False))

    def _project_support(self, values):
        if self.config.sparsity == "dynamic":
            return C.project_l0(values, self.config.nnz_budget)
        masks = [tf.convert_to_tensor(w.masks[i].value) for w, i, _ in self._vars]
        return C.apply_masks(values, masks)

    def _quantize(self, wrapper, value):
        cfg = self.config
        return C.quantize(value, cfg.quant_scheme, cfg.bits, wrapper.channel_axes, cfg.kmeans_iters)

    def _admm_update(self, strategy, weights):
        zs, us = [], []
        for (w, i, _), wt in zip(self._vars, weights):
            u = tf.convert_to_tensor(w.admm_u[i].value)
            support = tf.cast(tf.not_equal(wt, 0), wt.dtype) if self.config.sparsity != "none" else 1.0
            z = self._quantize(w, (wt + u) * support)
            zs.append(z)
            us.append(u + wt - z)
        self._assign(strategy, [w.admm_z[i] for w, i, _ in self._vars], zs)
        self._assign(strategy, [w.admm_u[i] for w, i, _ in self._vars], us)
        return tf.constant(True)

    # --- before and after training --------------------------------------------
    def prepare_constraints(self):
        """Once per training run: fix the AP/NAP support, start ADMM at Z = Q(W), U = 0."""
        if int(self._constraints_ready.numpy()) == 1:
            return
        cfg = self.config
        with self.distribute_strategy.scope():
            values = [tf.convert_to_tensor(v.value) for _, _, v in self._vars]
            if cfg.sparsity == "fixed":
                masks = C.topk_masks(values, cfg.nnz_budget)
                for (w, i, _), m in zip(self._vars, masks):
                    w.masks[i].assign(m)
                values = C.apply_masks(values, masks)
            if cfg.sparsity == "dynamic":
                values = C.project_l0(values, cfg.nnz_budget)
            for (w, i, v), val in zip(self._vars, values):
                v.assign(val)
                if cfg.quantized:
                    w.admm_z[i].assign(self._quantize(w, val))
                    w.admm_u[i].assign(tf.zeros_like(val))
            self._constraints_ready.assign(1)

    def finalize(self):
        """Hard projection onto every constraint set; afterwards they hold exactly."""
        cfg = self.config
        with self.distribute_strategy.scope():
            values = [tf.convert_to_tensor(v.value) for _, _, v in self._vars]
            if cfg.sparsity != "none":
                values = self._project_support(values)
            for (w, i, v), val in zip(self._vars, values):
                if cfg.quantized:
                    # Q_b keeps zeros at zero, so the L0 constraint still holds.
                    val = self._quantize(w, val)
                    w.admm_z[i].assign(val)
                    w.admm_u[i].assign(tf.zeros_like(val))
                v.assign(val)

    def fit(self, *args, **kwargs):
        """keras.Model.fit, plus: constraints set up before, hard projection after.

        A NaN/Inf loss stops training and raises TrainingDivergedError; the
        weights are then left as they are (no final projection), and any
        BackupAndRestore checkpoint still holds the last good epoch.
        """
        self.prepare_constraints()
        kwargs["callbacks"] = [StopOnNonFiniteLoss()] + list(kwargs.get("callbacks") or [])
        history = super().fit(*args, **kwargs)
        self.finalize()
        return history

    # --- reporting -------------------------------------------------------------
    def constraint_report(self):
        """nnz vs budget, per-tensor levels, and the size accounting, as plain Python."""
        from atmc_tf.training.summary import model_size
        cfg = self.config
        size = model_size(self.net, cfg.quant_scheme if cfg.quantized else None, cfg.bits)
        return {"nnz": size.nnz, "budget": cfg.nnz_budget, "size": size.as_dict()}
