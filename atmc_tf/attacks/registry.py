"""Threat models by name. Each is a frozen dataclass with `attack(model_fn, x, y, seed=None) -> x_adv`
(gradient-stopped, inside the threat's ball and the data box; N-FGSM, a training attack, only inside
the box and (k + 1) eps of x; FreeATConfig a setting of the free training term, its attack() a stand-in)
and an `eps`. A training-only attack names, as `validation_attack`, the attack the trainer's validation
metrics use instead (PGD). A new one is a module with such a class plus one entry here."""
import dataclasses

from atmc_tf.attacks.apgd import APGDConfig
from atmc_tf.attacks.fast import FGSMRSConfig, NFGSMConfig
from atmc_tf.attacks.free import FreeATConfig
from atmc_tf.attacks.msd import MSDConfig
from atmc_tf.attacks.pgd import PGDConfig

ATTACKS = {"pgd": PGDConfig, "apgd": APGDConfig, "msd": MSDConfig, "fgsm_rs": FGSMRSConfig, "n_fgsm": NFGSMConfig,
           "free": FreeATConfig}


def attack_to_dict(attack):
    kind = next((k for k, cls in ATTACKS.items() if type(attack) is cls), None)
    if kind is None:
        raise ValueError(f"{type(attack).__name__} is not a registered attack ({sorted(ATTACKS)})")
    return {"kind": kind, **dataclasses.asdict(attack)}


def attack_from_dict(d):
    """The attack a dict from attack_to_dict describes (a dict without "kind" is PGD)."""
    d = dict(d)
    kind = d.pop("kind", "pgd")
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; registered: {sorted(ATTACKS)}")
    return ATTACKS[kind](**d)
