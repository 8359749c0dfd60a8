"""ATMCConfig: every choice of the constrained min-max training, validated once."""
import dataclasses

from atmc_tf.attacks import PGDConfig
from atmc_tf.constraints import QUANT_SCHEMES

SPARSITY_MODES = ("none", "dynamic", "fixed")


@dataclasses.dataclass(frozen=True)
class ATMCConfig:
    """What the trainer does in each step.

    attack:        PGD inner max; None trains on clean data only.
    clean_weight, adv_weight: the loss mix (reference: 0.5 / 0.5).
    sparsity:      "dynamic" re-selects the global top-k after every step (AL0,
                   ATMC); "fixed" keeps the support chosen when training starts
                   (AP, NAP); "none" leaves weights dense.
    nnz_budget:    k, the ONE nonzero budget over all compressed tensors.
    bits, quant_scheme: Q_b (see atmc_tf.constraints.quantize), enforced by
                   ADMM every quant_interval steps with penalty rho/2 ||W-Z+U||^2.
    attack_bn_training: run BatchNorm in training mode while crafting PGD
                   examples (default False: the attack must not move BN statistics).
    """

    attack: PGDConfig | None = None
    clean_weight: float = 0.5
    adv_weight: float = 0.5
    sparsity: str = "none"
    nnz_budget: int | None = None
    bits: int | None = None
    quant_scheme: str = "codebook_int8"
    rho: float = 0.1
    quant_interval: int = 5
    kmeans_iters: int = 20
    attack_bn_training: bool = False

    def __post_init__(self):
        if self.sparsity not in SPARSITY_MODES:
            raise ValueError(f"sparsity must be one of {SPARSITY_MODES}, got {self.sparsity!r}")
        if self.sparsity != "none" and (self.nnz_budget is None or int(self.nnz_budget) < 1):
            raise ValueError(f"sparsity={self.sparsity!r} needs nnz_budget >= 1, got {self.nnz_budget}")
        if self.bits is not None:
            if not 1 <= int(self.bits) <= 8:
                raise ValueError(f"bits must be in 1..8, got {self.bits}")
            if self.quant_scheme not in QUANT_SCHEMES:
                raise ValueError(f"quant_scheme must be one of {QUANT_SCHEMES}, got {self.quant_scheme!r}")
            if self.quant_scheme == "uniform_int8" and int(self.bits) < 2:
                raise ValueError("quant_scheme='uniform_int8' needs bits >= 2")
        if self.rho < 0 or self.quant_interval < 1 or self.kmeans_iters < 1:
            raise ValueError("rho must be >= 0, quant_interval >= 1 and kmeans_iters >= 1")
        if self.clean_weight < 0 or self.adv_weight < 0:
            raise ValueError("clean_weight and adv_weight must be >= 0")
        if self.attack is not None and self.clean_weight + self.adv_weight == 0:
            raise ValueError("clean_weight + adv_weight must be > 0")

    @property
    def adversarial(self):
        return self.attack is not None and self.adv_weight > 0

    @property
    def quantized(self):
        return self.bits is not None

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["attack"] = None if self.attack is None else dataclasses.asdict(self.attack)
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        if d.get("attack") is not None:
            d["attack"] = PGDConfig(**d["attack"])
        return cls(**d)
