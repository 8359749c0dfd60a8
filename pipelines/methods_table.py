"""Which training stages each --method of the pipeline runs: the one table that the flags
(--method's choices), PipelineConfig.stage_names (resume checks before TensorFlow loads)
and stages.compress_stages (the training itself) read. No TensorFlow here.

Every method first trains the dense adversarial model (stage DENSE_STAGE); STAGES lists
what follows, in order, each stage warm-started from the one before it.
"""
import dataclasses

DENSE_STAGE = "da"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: its folder under --workdir and how it trains.

    name: the folder ("{bits}" stands for --bits); method: the atmc_tf training method;
    epochs: the PipelineConfig field with its epoch count; natural: natural (not
    adversarial) dense training from the initial model, with --da_epochs and --da_lr, the
    start of NAP; adversarial: trained with the PGD attack and the --clean_weight mix;
    quantized: ATMC-b (--bits, --quant_scheme, --rho, --quant_interval), left out when
    --bits is off; wrap: the wrapper setting it passes, "factorization" (--factorization)
    or "param_budget" (the nonzero budget, as ALR's parameter budget); ste: the fine-tune ON the b-bit set
    that follows ADMM (--ste_epochs; the support of the stage before held fixed, the kernels Q_b of a float
    shadow at every step: atmc_tf.constraints.QuantizedShadow), left out when --ste_epochs is 0.
    """

    name: str
    method: str
    epochs: str
    natural: bool = False
    adversarial: bool = True
    quantized: bool = False
    wrap: str | None = None
    ste: bool = False


# The keys, in this order, are --method's choices.
STAGES = {
    "atmc": (Stage("al0", "al0", "al0_epochs"),
             Stage("atmc32", "atmc", "atmc32_epochs", wrap="factorization"),
             Stage("atmc{bits}", "atmc", "atmcb_epochs", quantized=True),
             Stage("atmc{bits}_ste", "atmc", "ste_epochs", quantized=True, ste=True)),
    "al0": (Stage("al0", "al0", "al0_epochs"),),
    "ap": (Stage("ap", "ap", "finetune_epochs"),),
    "nap": (Stage("natural", "natural", "da_epochs", natural=True),
            Stage("nap", "nap", "finetune_epochs", adversarial=False)),
    "alr": (Stage("alr", "alr", "finetune_epochs", wrap="param_budget"),),
    "da": (),
    # Robust boosting (pipelines/boost.py): no dense stage, no compression stages; its rounds run in the
    # folder BOOST_STAGE (atmc_tf.boosting.loop's per-round checkpoint).
    "boost": (),
}
BOOST_STAGE = "boost"
METHODS = tuple(STAGES)


def stages(method, bits, ste_epochs=0):
    """The stages after DENSE_STAGE that --method runs with --bits (None: off) and --ste_epochs, names filled in."""
    return [dataclasses.replace(s, name=s.name.format(bits=bits)) for s in STAGES[method]
            if not (s.quantized and bits is None) and not (s.ste and not ste_epochs)]


def stage_names(method, bits, ste_epochs=0):
    """Every training stage's folder under --workdir, in the order they run."""
    if method == "boost":
        return [BOOST_STAGE]
    return [DENSE_STAGE] + [s.name for s in stages(method, bits, ste_epochs)]
