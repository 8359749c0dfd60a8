"""ATMCConfig: the paper's training recipe as one validated, serialisable record.

It is a shorthand for a composition of loss terms and constraint sets (components()):
the trainer runs the composition; ATMCTrainer(net, terms=..., constraints=...) takes
one directly for anything the record does not spell.
"""
import dataclasses

from atmc_tf.attacks import PGDConfig, attack_from_dict, attack_to_dict
from atmc_tf.choices import CLASS_FEEDBACK_MODES, CLEAN_TARGET_FORMS, DISTILL_MODES
from atmc_tf.constraints import FixedGroupSupport, FixedSupport, GlobalL0, GroupL0, Quantization, QuantizedShadow

SPARSITY_MODES = ("none", "dynamic", "fixed")
GROUP_SUPPORTS = ("dynamic", "fixed")
STRUCTURES = ("none", "channel")


@dataclasses.dataclass(frozen=True)
class ATMCConfig:
    """What the trainer does in each step.

    attack:        the inner max (a registered attack config: PGDConfig, FGSMRSConfig, NFGSMConfig; or
                   FreeATConfig: free adversarial training, terms.FreeAdversarialLoss, whose batches
                   the caller replays: data_order.replay); None trains on clean data only.
    clean_weight, adv_weight: the loss mix (reference: 0.5 / 0.5).
    sparsity:      "dynamic" re-selects the global top-k after every step (AL0,
                   ATMC); "fixed" keeps the support chosen when training starts
                   (AP, NAP); "none" leaves weights dense.
    nnz_budget:    k, the ONE nonzero budget over all compressed tensors.
    l0_scoring:    how entries compete for it: "magnitude" (the paper's, |w|) or
                   "lamp" (layer-adaptive: no layer is emptied; constraints.sparsity).
    l0_ramp_steps: lower the dynamic budget from dense to k over this many steps (0: at once).
    activation_ramp_steps: None (default) leaves the net's activation sparsity layers as they are;
                   an integer >= 0 adds terms.ActivationBudgetSchedule, which ramps every
                   WinnersTakeAll density / ActivationThreshold threshold from dense to its target
                   over this many steps (cubic, like l0_ramp_steps). A record from before the field
                   loads with None.
    activation_threshold_density: with activation_ramp_steps, ActivationThreshold thresholds are set
                   to keep this fraction of their inputs (ActivationBudgetSchedule's threshold_density).
    activation_l1: > 0 adds terms.ActivationL1 (JPnet's joint activation regulariser: this weight
                   times the L1 of the activations before the sparsity layers, on clean and
                   adversarial batches); 0 (default, and records from before the field): none.
    bits, quant_scheme: Q_b (see atmc_tf.constraints.quantize), enforced by
                   ADMM every quant_interval steps with penalty rho/2 ||W-Z+U||^2
                   (quant_method "admm", the default), or held exactly at every step, the kernels
                   being Q_b of a float shadow that takes the optimizer's steps (quant_method "ste":
                   constraints.QuantizedShadow; the pipeline's ATMC-b fine-tune after ADMM).
    zero_in_levels: 0 is one of the 2^b values (default), so a b-bit kernel needs b-bit indices
                   on the device; False: the paper's 2^b nonzero values + 0.
    structure:     "channel" adds structured sparsity (constraints.GroupL0): at most group_budget
                   (in group_budget_unit, with group_costs and group_pairs: see GroupL0) in whole output channels /
                   neurons, re-selected after every step
                   (ramped like l0_ramp_steps), size-fair `group_scoring`; keep_layers (the
                   classifier) are never pruned. Composes with sparsity (unstructured L0 inside
                   the kept channels) and bits. "none": no channel constraint.
    distill:       "off", or robust distillation from the trainer's teacher (the dense adversarially
                   trained model: ATMCTrainer(..., teacher=)) in place of the adversarial cross-entropy:
                   "ard" (clean CE x clean_weight + T^2 KL x adv_weight, T = distill_temperature) or
                   "rslad" (soft labels only: the clean term is measured, not trained on); see
                   terms.RobustDistillation.
    clean_target:  None (the fixed clean_weight / adv_weight mix), or a target kappa the clean batch's
                   `clean_target_form` must meet: "error" (a fraction, e.g. 0.05) or "xent" (nats). The
                   clean term is then terms.CleanTarget (GECO): adversarial term (weight adv_weight) +
                   lambda * clean cross-entropy, lambda starting at clean_weight and updated after every
                   step, log lambda += geco_rate * EMA(C - kappa) (EMA decay geco_decay), clipped to
                   [geco_lambda_min, geco_lambda_max]; the terms' sum is normalised by
                   (adv_weight + clean_weight) / (adv_weight + lambda), so lambda moves the clean share,
                   not the step size. Needs an attack.
    class_feedback: "off", or per-class weights fed back from per-class robust error on the validation
                   split once per epoch (terms.ClassBalancedAdversarialLoss in place of the adversarial
                   term; fit needs validation_data): "reweight" weights the adversarial loss per class,
                   "resample" attacks each class's examples with a probability that follows its weight
                   (class_feedback_share of the batch in expectation). w_c *= exp(class_feedback_rate *
                   (err_c - mean err)), normalised to mean 1, within [1/class_feedback_bound,
                   class_feedback_bound]. Needs the adversarial cross-entropy (an attack, distill off).
    group_support: with structure="channel", "dynamic" re-selects the channels after every step
                   (GroupL0: AL0, ATMC); "fixed" chooses them once when training starts, by the
                   same scoring and budget, and keeps them (FixedGroupSupport: structured AP).
    attack_bn_training: run BatchNorm in training mode while crafting PGD
                   examples (default False: the attack must not move BN statistics).
    threats:       None (the one `attack`), or several attacks (PGDConfig / registered attacks, or their
                   dicts), e.g. L_inf, L2 and L1 PGD: the adversarial term is then terms.MultiThreatLoss
                   over them (weight adv_weight) in place of AdversarialLoss, weighed by
                   `domain_weighting`: "avg" (1/K), "max" (per example the worst attack), "msd" (one MSD
                   attack over their norms) or "minmax" (simplex weights by APGDA with minmax_gamma and
                   minmax_step). `attack` may then be None. Not with distill.
    method:        the preset this record came from (method_config), or None.
    """

    attack: PGDConfig | None = None
    clean_weight: float = 0.5
    adv_weight: float = 0.5
    sparsity: str = "none"
    nnz_budget: int | None = None
    l0_scoring: str = "magnitude"
    l0_ramp_steps: int = 0
    activation_ramp_steps: int | None = None
    activation_l1: float = 0.0
    activation_threshold_density: float | None = None
    bits: int | None = None
    quant_scheme: str = "codebook_int8"
    zero_in_levels: bool = True
    rho: float = 0.1
    quant_interval: int = 5
    quant_method: str = "admm"
    kmeans_iters: int = 20
    attack_bn_training: bool = False
    distill: str = "off"
    distill_temperature: float = 1.0
    structure: str = "none"
    group_budget: int | None = None
    group_scoring: str = "lamp"
    group_budget_unit: str = "params"
    group_costs: dict | None = None
    group_pairs: tuple | None = None
    keep_layers: tuple = ()
    group_support: str = "dynamic"
    threats: tuple | None = None
    domain_weighting: str = "minmax"
    minmax_gamma: float = 4.0
    minmax_step: float = 0.05
    clean_target: float | None = None
    clean_target_form: str = "error"
    geco_rate: float = 1.0
    geco_decay: float = 0.9
    geco_lambda_min: float = 0.01
    geco_lambda_max: float = 100.0
    class_feedback: str = "off"
    class_feedback_rate: float = 0.5
    class_feedback_bound: float = 5.0
    class_feedback_share: float = 0.5
    method: str | None = None

    def __post_init__(self):
        if self.sparsity not in SPARSITY_MODES:
            raise ValueError(f"sparsity must be one of {SPARSITY_MODES}, got {self.sparsity!r}")
        if self.quant_method not in ("admm", "ste"):
            raise ValueError(f"quant_method must be 'admm' or 'ste', got {self.quant_method!r}")
        if self.sparsity != "none" and (self.nnz_budget is None or int(self.nnz_budget) < 1):
            raise ValueError(f"sparsity={self.sparsity!r} needs nnz_budget >= 1, got {self.nnz_budget}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.structure == "channel" and (self.group_budget is None or int(self.group_budget) < 1):
            raise ValueError(f"structure='channel' needs group_budget >= 1 (parameters), got {self.group_budget}")
        if self.group_support not in GROUP_SUPPORTS:
            raise ValueError(f"group_support must be one of {GROUP_SUPPORTS}, got {self.group_support!r}")
        object.__setattr__(self, "keep_layers", tuple(self.keep_layers))
        if self.group_pairs is not None:
            object.__setattr__(self, "group_pairs", tuple(tuple(p) for p in self.group_pairs))
        if self.threats is not None:
            threats = tuple(attack_from_dict(a) if isinstance(a, dict) else a for a in self.threats)
            if not threats:
                raise ValueError("threats must name at least one attack (or be None)")
            object.__setattr__(self, "threats", threats)
            if self.distill != "off":
                raise ValueError(f"distill={self.distill!r} takes one attack; it does not combine with threats")
        if self.clean_weight < 0 or self.adv_weight < 0:
            raise ValueError("clean_weight and adv_weight must be >= 0")
        if self.distill not in ("off",) + DISTILL_MODES:
            raise ValueError(f"distill must be one of {('off',) + DISTILL_MODES}, got {self.distill!r}")
        if self.distill != "off" and self.attack is None:
            raise ValueError(f"distill={self.distill!r} needs an attack (robust distillation crafts adversarial inputs)")
        if self.distill != "off" and type(self.attack).__name__ == "FreeATConfig":
            raise ValueError(f"distill={self.distill!r} needs an attack run per step, not free training's FreeATConfig")
        from atmc_tf.training.terms.geco import check_multiplier, check_target  # it imports Keras
        check_multiplier(self.geco_rate, self.geco_decay, self.geco_lambda_min, self.geco_lambda_max)
        from atmc_tf.training.terms.multi_threat import check_weighting
        check_weighting(self.domain_weighting, self.minmax_gamma, self.minmax_step)
        if self.clean_target is not None:
            object.__setattr__(self, "clean_target", check_target(self.clean_target, self.clean_target_form))
            if not self.adversarial:
                raise ValueError("clean_target needs an adversarial objective (an attack and adv_weight > 0): it "
                                 "holds the clean term to a target while the adversarial loss is minimised")
        elif self.clean_target_form not in CLEAN_TARGET_FORMS:
            raise ValueError(f"clean_target_form must be one of {CLEAN_TARGET_FORMS}, got {self.clean_target_form!r}")
        if self.class_feedback not in ("off",) + CLASS_FEEDBACK_MODES:
            raise ValueError(f"class_feedback must be one of {('off',) + CLASS_FEEDBACK_MODES}, "
                             f"got {self.class_feedback!r}")
        from atmc_tf.training.terms.class_feedback import check_feedback  # it imports Keras
        check_feedback(self.class_feedback_rate, self.class_feedback_bound, self.class_feedback_share)
        if self.class_feedback != "off" and not (self.adversarial and self.distill == "off" and self.threats is None):
            raise ValueError(f"class_feedback={self.class_feedback!r} needs the one-attack adversarial cross-entropy "
                             "term (an attack, adv_weight > 0, distill='off', no threats): it balances that term "
                             "over the classes")
        if self.attacked and self.clean_weight + self.adv_weight == 0:
            raise ValueError("clean_weight + adv_weight must be > 0")
        self.components()  # every component validates its own settings (bits, rho, ...)

    @property
    def attacked(self):
        """An attack or threats are set."""
        return self.attack is not None or self.threats is not None

    @property
    def adversarial(self):
        return self.attacked and self.adv_weight > 0

    @property
    def quantized(self):
        return self.bits is not None

    def components(self):
        """(loss terms, constraint sets) of this recipe, in the order the trainer applies them."""
        from atmc_tf.attacks import FreeATConfig
        from atmc_tf.training.terms import (AdversarialLoss, ClassBalancedAdversarialLoss, CleanLoss,  # Keras
                                            CleanTarget, FreeAdversarialLoss, MultiThreatLoss, RobustDistillation)
        if self.clean_target is not None:  # GECO: the clean term's weight is a multiplier holding the target
            clean = CleanTarget(self.clean_target, self.clean_target_form, self.geco_rate, self.geco_decay,
                                lambda_init=self.clean_weight, lambda_min=self.geco_lambda_min,
                                lambda_max=self.geco_lambda_max,
                                adv_weight=1.0 if self.distill == "rslad" else self.adv_weight)
        if self.distill == "ard":
            terms = [clean if self.clean_target is not None else CleanLoss(self.clean_weight),
                     RobustDistillation(self.attack, self.adv_weight, "ard", self.distill_temperature)]
        elif self.distill == "rslad":
            terms = [clean if self.clean_target is not None else CleanLoss(0.0),
                     RobustDistillation(self.attack, 1.0, "rslad", self.distill_temperature)]
        elif self.adversarial:
            free = isinstance(self.attack, FreeATConfig)  # free training's persistent perturbation, not an attack
            if self.threats is not None:
                adv = MultiThreatLoss(self.threats, self.domain_weighting, self.adv_weight, self.minmax_gamma,
                                      self.minmax_step, bn_training=self.attack_bn_training)
            elif self.class_feedback != "off":
                if free:
                    raise ValueError(f"class_feedback={self.class_feedback!r} needs an attack run per step; free "
                                     "adversarial training replays one perturbation")
                adv = ClassBalancedAdversarialLoss(self.attack, self.adv_weight, self.attack_bn_training,
                                                   self.class_feedback, self.class_feedback_rate,
                                                   self.class_feedback_bound, self.class_feedback_share)
            else:
                adv = (FreeAdversarialLoss if free else AdversarialLoss)(self.attack, self.adv_weight,
                                                                         bn_training=self.attack_bn_training)
            terms = [clean if self.clean_target is not None else CleanLoss(self.clean_weight), adv]
        else:
            terms = [CleanLoss(1.0)]
        if self.activation_ramp_steps is not None:
            from atmc_tf.training.terms import ActivationBudgetSchedule
            terms = [ActivationBudgetSchedule(self.activation_ramp_steps, self.activation_threshold_density), *terms]
        if self.activation_l1 > 0:
            from atmc_tf.training.terms import ActivationL1
            terms = [*terms, ActivationL1(self.activation_l1)]
        constraints = []
        if self.structure == "channel" and self.group_support == "fixed":
            constraints.append(FixedGroupSupport(self.group_budget, self.group_scoring, self.group_budget_unit,
                                                 group_costs=self.group_costs, keep_layers=self.keep_layers,
                                                 group_pairs=self.group_pairs))
        elif self.structure == "channel":
            constraints.append(GroupL0(self.group_budget, self.group_scoring, self.group_budget_unit,
                                       group_costs=self.group_costs, ramp_steps=self.l0_ramp_steps,
                                       keep_layers=self.keep_layers, group_pairs=self.group_pairs))
        if self.sparsity == "dynamic":
            constraints.append(GlobalL0(self.nnz_budget, self.l0_scoring, self.l0_ramp_steps))
        elif self.sparsity == "fixed":
            constraints.append(FixedSupport(self.nnz_budget, self.l0_scoring))
        if self.quantized and self.quant_method == "ste":
            constraints.append(QuantizedShadow(self.bits, self.quant_scheme, self.kmeans_iters, self.zero_in_levels))
        elif self.quantized:
            constraints.append(Quantization(self.bits, self.quant_scheme, self.rho, self.quant_interval,
                                            self.kmeans_iters, self.zero_in_levels))
        return terms, constraints

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["attack"] = None if self.attack is None else attack_to_dict(self.attack)
        d["keep_layers"] = list(self.keep_layers)
        d["group_pairs"] = None if self.group_pairs is None else [list(p) for p in self.group_pairs]
        d["threats"] = None if self.threats is None else [attack_to_dict(a) for a in self.threats]
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d.setdefault("zero_in_levels", False)  # a record from before the field: the paper's count
        # The GECO fields (clean_target, ...) default to None / their defaults: a record from before
        # them trains with the fixed clean_weight / adv_weight mix, as it did; likewise the class_feedback
        # fields ("off": the plain adversarial term) and the threat fields (no `threats`: its one attack).
        if d.get("attack") is not None:
            d["attack"] = attack_from_dict(d["attack"])
        return cls(**d)
