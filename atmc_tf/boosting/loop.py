"""The robust boosting loop: rounds of cost-sensitive adversarial training of small compressed learners.

Round t (0-based), given the costs C_t (round 0: those of the empty ensemble, F = 0, uniform):

  1. A weak learner (make_learner(seed), logits out) is wrapped and trained for `epochs` epochs by
     ATMCTrainer with terms.CostSensitiveAdversarialLoss (adversarial training against the costs) under
     the constraints of method_config("atmc" with bits, else "al0") at nnz_budget = size_ratio x its
     compressible weights: an ATMC-compressed learner. The learners start from a random init, so the
     budget is scored layer-adaptively by default (l0_scoring="lamp"): the paper's magnitude top-k,
     applied to an untrained LeNet at size ratio 0.005, gives fc1 (whose Glorot init is the smallest)
     no weight at all, every path to the logits is cut and the learner stays at chance (measured on
     Fashion-MNIST: 10.6% clean after 2 epochs; with "lamp" 70.8%, at 0.00125 61.3%).
  2. Its robust edge: the edge (costs.edge) of softmax(learner) at PGD examples against the learner
     itself, on the training set; weight alpha_t = costs.learner_weight(edge), 0 when the edge is <= 0
     (a learner worse than the costs' chance level is kept in the graph but does not vote; the round
     logs a warning naming the learner's layers left with no weight, recorded as "cut").
  3. The ensemble (ensemble.build_ensemble) with the new learner; its robust margins: its scores at PGD
     examples crafted against the WHOLE ensemble (its combined scores); C_{t+1} = costs.cost_matrix.
  4. The ensemble is evaluated on the test split, attacked as a whole (eval_attacks through its
     combined scores): clean accuracy, accuracy under each attack and their per-example worst case.

Checkpoints: after each round the learner is saved (<workdir>/learner_<t>.keras, atomically), then
<workdir>/boost.json (atomically; written last, so it is the commit point) with every finished round's
edge, weight and figures and the costs of the next round. A run killed anywhere resumes at the first
round boost.json does not hold; each round seeds Python, NumPy and TF from (seed, t) and draws its
attacks' random starts statelessly from them, so (with TF op determinism on) a resumed run gives the
same learners, weights and figures as an uninterrupted one.
"""
import dataclasses
import json
import os
import time

import keras
import numpy as np

from atmc_tf.attacks import PGDConfig
from atmc_tf.attacks.evaluate import worst_case_accuracy
from atmc_tf.boosting import costs as boosting_costs
from atmc_tf.boosting.ensemble import build_ensemble, named_learner
from atmc_tf.export.atomic import atomic_path, write_json_atomic

STATE_FILE = "boost.json"


@dataclasses.dataclass(frozen=True)
class BoostConfig:
    """What every round does. The same config resumes a workdir (`rounds` may grow); another is refused."""

    rounds: int = 3
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    size_ratio: float = 0.25          # each learner's nnz budget over its compressible weights
    bits: int | None = None           # None: ATMC-32 (al0's global budget); b: ATMC-b (ADMM codes)
    attack: PGDConfig = PGDConfig(eps=0.1, steps=7)       # training and the costs' robust margins
    seed: int = 0
    l0_scoring: str = "lamp"          # how weights compete for a learner's budget (constraints.sparsity)
    l0_ramp: float = 0.0              # the budget falls from dense to k over this fraction of a learner's steps

    def __post_init__(self):
        from atmc_tf.constraints.sparsity import check_scoring
        check_scoring(self.l0_scoring)
        if self.rounds < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"rounds, epochs and batch_size must be >= 1, got {self.rounds}, {self.epochs}, "
                             f"{self.batch_size}")
        if not 0 < self.size_ratio <= 1:
            raise ValueError(f"size_ratio must be in (0, 1], got {self.size_ratio}")
        if not 0 <= self.l0_ramp <= 1:
            raise ValueError(f"l0_ramp must be in [0, 1] (a fraction of a learner's steps), got {self.l0_ramp}")

    def identity(self):
        """The fields a resumed run must share (rounds may grow)."""
        d = dataclasses.asdict(self)
        d.pop("rounds")
        d["attack"] = dataclasses.asdict(self.attack)
        return d


@dataclasses.dataclass
class BoostResult:
    ensemble: keras.Model
    learners: list
    rounds: list          # per round: edge, alpha, clean, per_attack, worst_case, seconds


def _seed(config, t):
    return int(config.seed) * 1000 + t


def _softmax(model, x, batch_size=256):
    return keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x, batch_size=batch_size, verbose=0)))


def _adversarial(model, x, y, attack, seed, batch_size=256):
    """PGD examples against model (its outputs as logits), random starts a function of `seed` alone."""
    import tensorflow as tf
    y = np.asarray(y).reshape(-1)
    craft = tf.function(lambda xb, yb, s: attack.attack(lambda z: model(z, training=False), xb, yb, seed=s),
                        reduce_retracing=True)
    return np.concatenate([craft(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                                 tf.constant([seed, i], tf.int64)).numpy()
                           for i in range(0, len(y), batch_size)])


def train_learner(make_learner, x, y, costs, config, t):
    """Round t's weak learner: ATMC-compressed, adversarially trained against `costs`. A plain model."""
    from atmc_tf.layers import strip_model, wrap_model
    from atmc_tf.training import ATMCTrainer, dense_weight_count, method_config
    from atmc_tf.training.terms import CostSensitiveAdversarialLoss, pack_costs
    keras.utils.set_random_seed(_seed(config, t))
    plain = make_learner(_seed(config, t))
    budget = max(1, int(round(config.size_ratio * dense_weight_count(plain))))
    method = "atmc" if config.bits else "al0"
    steps = config.epochs * -(-len(y) // config.batch_size)
    recipe = method_config(method, attack=config.attack, nnz_budget=budget, bits=config.bits,
                           l0_scoring=config.l0_scoring, l0_ramp_steps=int(round(config.l0_ramp * steps)))
    net = wrap_model(plain)
    trainer = ATMCTrainer(net, terms=[CostSensitiveAdversarialLoss(config.attack)],
                          constraints=recipe.components()[1], seed=_seed(config, t))
    trainer.compile(optimizer=keras.optimizers.Adam(config.lr))
    trainer.fit(x, pack_costs(y, costs), epochs=config.epochs, batch_size=config.batch_size, verbose=0)
    return named_learner(strip_model(net), t)


def cut_layers(model):
    """Names of a plain model's layers whose kernel is all zero: they pass only their bias (a constant)."""
    return [l.name for l in model.layers
            if getattr(l, "kernel", None) is not None and not np.any(keras.ops.convert_to_numpy(l.kernel))]


def evaluate_ensemble(ensemble, x, y, eval_attacks, batch_size=256):
    """The ensemble attacked as a whole: {clean, per_attack, worst_case}."""
    return worst_case_accuracy(lambda z: ensemble(z, training=False), x, np.asarray(y).reshape(-1),
                               eval_attacks, batch_size=batch_size).as_dict()


def _load_state(workdir, config):
    path = os.path.join(workdir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        state = json.load(f)
    if state["config"] != json.loads(json.dumps(config.identity())):
        raise ValueError(f"{path} was written by another boosting config: {state['config']} (now "
                         f"{config.identity()}); use another workdir")
    return state


def boost(make_learner, x, y, x_test, y_test, config, workdir, eval_attacks=None, log=print):
    """Run (or resume) config.rounds rounds in `workdir`. make_learner(seed) -> a plain Keras model with
    logits out. eval_attacks: {name: attack} for the per-round evaluation (default: config.attack).
    Returns a BoostResult; every finished round is in <workdir>/boost.json."""
    os.makedirs(workdir, exist_ok=True)
    eval_attacks = eval_attacks or {"pgd": config.attack}
    y = np.asarray(y).reshape(-1).astype(np.int64)
    state = _load_state(workdir, config)
    if state is None:
        num_classes = int(make_learner(0).output_shape[-1])
        state = {"config": config.identity(), "rounds": [],
                 "costs": boosting_costs.cost_matrix(np.zeros((len(y), num_classes)), y).tolist()}
    learners = [keras.saving.load_model(os.path.join(workdir, r["learner"])) for r in state["rounds"]]
    done = len(state["rounds"])
    if done >= config.rounds:
        log(f"boost: the {config.rounds} rounds are done already ({workdir}); loading their learners")
    elif done:
        log(f"boost: resuming at round {done + 1} of {config.rounds}")
    for t in range(len(state["rounds"]), config.rounds):
        start = time.time()
        costs = np.asarray(state["costs"])
        learner = train_learner(make_learner, x, y, costs, config, t)
        x_adv = _adversarial(learner, x, y, config.attack, _seed(config, t))
        edge = boosting_costs.edge(costs, _softmax(learner, x_adv), y)
        alpha = max(boosting_costs.learner_weight(edge), 0.0)
        cut = cut_layers(learner)
        if alpha <= 0:
            log(f"warning: boost round {t + 1}: the learner has no robust edge ({edge:.4f} <= 0), so it gets weight 0 "
                "and does not vote" + (f"; its budget left {', '.join(cut)} with no weight" if cut else "")
                + "; give each learner more weights (size_ratio) or epochs"
                + (", or score its budget layer-adaptively (l0_scoring='lamp')" if config.l0_scoring != "lamp" else ""))
        learners.append(learner)
        alphas = [r["alpha"] for r in state["rounds"]] + [alpha]
        ensemble = build_ensemble(learners, alphas)
        x_ens = _adversarial(ensemble, x, y, config.attack, _seed(config, t) + 500)
        # The boosting scores F = sum alpha x the ensemble's (normalised) output, at its own PGD examples.
        scores = sum(alphas) * ensemble.predict(x_ens, batch_size=256, verbose=0)
        next_costs = boosting_costs.cost_matrix(scores, y)
        train_seconds = time.time() - start
        figures = evaluate_ensemble(ensemble, x_test, y_test, eval_attacks)
        name = f"learner_{t}.keras"
        with atomic_path(os.path.join(workdir, name), suffix=".keras") as tmp:
            learner.save(tmp)
        record = {"round": t + 1, "learner": name, "edge": edge, "alpha": alpha, "cut": cut,
                  "train_seconds": round(train_seconds, 2), **figures}
        state["rounds"].append(record)
        state["costs"] = next_costs.tolist()
        write_json_atomic(os.path.join(workdir, STATE_FILE), state)
        log(f"boost round {t + 1}/{config.rounds}: edge {edge:.3f} alpha {alpha:.3f} clean {figures['clean']:.3f} "
            f"robust {figures['worst_case']:.3f} ({train_seconds:.1f} s)")
    rounds = state["rounds"][:config.rounds]
    ensemble = build_ensemble(learners[:config.rounds], [r["alpha"] for r in rounds])
    return BoostResult(ensemble, learners[:config.rounds], rounds)
