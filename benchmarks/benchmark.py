"""Benchmark: robust accuracy at a given size, ATMC against its baselines and TFMOT, on Fashion-MNIST.

    python -m benchmarks.benchmark                      # the full run: many hours on 2 CPU cores, resumable
    python -m benchmarks.benchmark --quick              # smoke test: a few minutes
    python -m benchmarks.benchmark --render_only        # docs/BENCHMARKS.md + docs/benchmark_tradeoff.png

One shared DA checkpoint; then, per size ratio (paper-style bits / dense fp32 bits),
NAP, AP, AL0, ATMC-32, ATMC-8, ATMC-4, ATMC-2 and AL0 / ATMC-8 with LAMP scoring of
the L0 budget, with the same number of compression epochs, each exported to an int8
.tflite and attacked with PGD-20 x 5 restarts (Keras white-box; the .tflite on the
same images) and measured in device bytes (TFLite Micro: the batch-1 int8 model,
LUT / PRUNE-compressed); TFMOT's prune + QAT in its own
process at ATMC-8's gzipped size; PGD-100 on the best model; step-time and
ResNet-50-size constraint costs. Learning rates are picked on the validation split.

Everything lands in <workdir>/results.json as it finishes (atomic writes), and each
rendering copies it beside the page (docs/benchmark_results.json, to commit with it); run the
same command again to resume: finished cells are skipped and an interrupted
training stage continues from its last epoch. The pipeline's flags (--eps,
--pgd_steps, --batch_size, --da_epochs, ...) apply; --helpfull lists them.
"""
import dataclasses
import datetime
import gc
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags, logging

from benchmarks import bench_report as R
from benchmarks.pipeline_cells import quick_defaults
from pipelines import flags_def
from pipelines.flags_def import PipelineConfig, UsageError, check_workdir, config_defaults, config_diff, fail
from pipelines.provenance import machine, package_versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F = flags.FLAGS


# Issue 16's structured cells: (the plain method whose epoch split and learning rate they take, description).
STRUCTURED = {"sap": ("ap", "structured AP (channels chosen once by norm on the DA model, adversarial fine-tuning)"),
              "satmc": ("atmc32", "structured ATMC (the global channel budget re-selected every step, fp32)"),
              "satmc8": ("atmc8", "structured ATMC with the 8-bit codebook"),
              "satmc4": ("atmc4", "structured ATMC with the 4-bit codebook (4-bit LUT indices on TFLite Micro)"),
              "satmc2": ("atmc2", "structured ATMC with the 2-bit codebook (2-bit LUT indices on TFLite Micro)")}


@dataclasses.dataclass(frozen=True)
class Variant:
    """Pipeline settings layered on the benchmark's cells (issues 20-22). own_da: a DA trained from scratch with
    them (da~<name>; else the shared DA); cells: the (method, ratio) cells trained from that DA with them,
    compared with the plain cells of the same (method, ratio)."""

    overrides: dict
    own_da: bool
    cells: tuple
    doc: str


_A8 = (("atmc8", 0.01),)
# Issue 20's objectives: on ATMC-8 at 0.003 and structured ATMC-8 (issue 16) at kept ratio 0.25, the report's bases.
_OBJ = tuple((method, ratio) for method, ratio, _ in R.OBJ_BASES)
VARIANTS = {
    "fgsm_rs": Variant({"train_attack": "fgsm_rs"}, True, _A8, "DA and ATMC-8@0.01 trained with "
                       "FGSM + random start (--train_attack=fgsm_rs)"),
    "n_fgsm": Variant({"train_attack": "n_fgsm"}, True, _A8, "... with N-FGSM"),
    "free": Variant({"train_attack": "free"}, True, _A8, "... with free adversarial training"),
    "wta50": Variant({"activation_sparsity": "wta", "activation_density": 0.5}, True, _A8,
                     "DA and ATMC-8@0.01 with winners-take-all activations at density 0.5"),
    "wta25": Variant({"activation_sparsity": "wta", "activation_density": 0.25}, True, _A8,
                     "... at density 0.25"),
    "ard": Variant({"distill": "ard"}, False, _OBJ,
                   "ATMC-8@0.003 and structured ATMC-8@0.25 distilled from the shared DA (--distill=ard)"),
    "feedback": Variant({"class_feedback": "reweight"}, False, _OBJ,
                        "... with --class_feedback=reweight"),
    "clean_target": Variant({"clean_target_drop": 0.02}, False, _OBJ,
                            "... with the clean error held at DA's + 2 points (--clean_target_drop=0.02)"),
    # Class feedback balances the adversarial cross-entropy term, which distillation replaces: the two do not
    # compose (the pipeline refuses --class_feedback with --distill), so "together" is ard + the clean target.
    "objectives": Variant({"distill": "ard", "clean_target_drop": 0.02}, False,
                          _OBJ, "... with ard + clean target (class feedback does not compose with "
                          "distillation)"),
}
flags.DEFINE_bool("quick", False, "Smoke-test settings (a few hundred images, one epoch per stage, tiny attacks, "
                  "ratio 0.01, DA/AP/ATMC-8, TFMOT 1+1 epochs): minutes, not the benchmark. Explicit flags win.")
flags.DEFINE_bool("render_only", False, "Only render BENCHMARKS.md and the PNG from <workdir>/results.json or, "
                  f"when the workdir has none, from the copy {R.RESULTS_COPY} in the docs folder.")
flags.DEFINE_list("ratios", ["0.003", "0.01", "0.03", "0.1"], "Size ratios (paper-style bits / dense fp32 bits).")
flags.DEFINE_list("methods", list(R.METHODS), f"Methods, from {', '.join(R.METHODS)} (DA always runs).")
flags.DEFINE_integer("compress_epochs", 6, "Epochs of every compressed method from the DA checkpoint (ATMC-b: "
                     "a third each for AL0 -> ATMC-32 -> ATMC-b; ATMC-32: half each for AL0 -> ATMC-32).")
flags.DEFINE_bool("tune", True, "Pick the DA and compression learning rates on the validation split.")
flags.DEFINE_list("da_lr_grid", ["0.05", "0.02"], "DA learning rates tried (unless --da_lr is given).")
flags.DEFINE_list("lr_grid", ["0.01", "0.003"], "Compression learning rates tried per method family "
                  "(NAP, AP, AL0, ATMC) at ratio 0.01 (unless --lr is given).")
flags.DEFINE_integer("tune_train", 12000, "Training images of the tuning runs (the first N of the train split).")
flags.DEFINE_integer("tune_val", 3000, "Validation images scored in the tuning runs.")
flags.DEFINE_integer("tune_da_epochs", 3, "Epochs of each DA tuning run.")
flags.DEFINE_integer("tune_compress_epochs", 3, "Compression epochs of each tuning run.")
flags.DEFINE_bool("tfmot", True, "Run the TFMOT prune + QAT peer (own process) at ATMC-8's gzipped size.")
flags.DEFINE_integer("tfmot_prune_epochs", 4, "TFMOT pruning fine-tuning epochs.")
flags.DEFINE_integer("tfmot_qat_epochs", 2, "TFMOT quantization-aware training epochs.")
flags.DEFINE_integer("tfmot_search_iters", 10, "Bisection steps matching TFMOT's gzipped size.")
flags.DEFINE_integer("pgd100_steps", 100, "PGD steps of the strong attack on the best model.")
flags.DEFINE_integer("pgd100_restarts", 1, "Restarts of the strong attack (one: PGD-100 x 5 on 10k images "
                     "would cost as much as a compressed cell's training).")
flags.DEFINE_integer("timing_steps", 20, "Train steps per timing round (rounded to whole ADMM periods).")
flags.DEFINE_integer("timing_rounds", 3, "Alternating timing rounds (median).")
flags.DEFINE_bool("resnet", True, "Measure the L0 projection + codebook fit cost on a ResNet-50-size weight set "
                  "(a few minutes; off with --quick, where it alone would take two).")
flags.DEFINE_integer("resnet_input", 224, "ResNet-50 input size for its training-step time.")
flags.DEFINE_integer("resnet_batch", 4, "ResNet-50 batch for its training-step time.")
flags.DEFINE_integer("resnet_reps", 3, "Timed repetitions (median) of each ResNet-50 measurement.")
flags.DEFINE_bool("resnet_pgd_step", True, "Also time one PGD adversarial training step of ResNet-50.")
flags.DEFINE_bool("retime", False, "Measure the step-time ratio and the ResNet-50-size cost again (after a change "
                  "to the constraint code); the cells are kept, the old figures move to timing_history.")
flags.DEFINE_integer("apgd_steps", 100, "Steps of APGD-CE and of APGD-DLR (one restart each; AutoAttack's standard 100) "
                     "in every cell's attack evaluation (issue 18).")
flags.DEFINE_integer("square_n", 1000, "Square Attack on the int8 .tflite runs on the first N test images (LiteRT in "
                     "the loop: every query is an interpreter call).")
flags.DEFINE_bool("attacks_only", False, "Only attack the finished cells (APGD-CE/DLR, worst case, the .tflite's twin "
                  "and Square) where that is missing or was measured with other attack settings; nothing trained.")
flags.DEFINE_list("structured_ratios", [], "Issue 16: structured (channel) cells at these kept-parameter ratios "
                  "(--structure=channel --size_ratio), e.g. 0.5,0.25,0.1: " + "; ".join(
                      f"{k}: {v[1]}" for k, v in STRUCTURED.items()) + ". Each is cut to the smaller model it "
                  "ships as (atmc_tf.export.shrink_model) and exported from it.")
flags.DEFINE_list("structured_methods", list(STRUCTURED), "The structured methods --structured_ratios trains, of "
                  f"{', '.join(STRUCTURED)}.")
flags.DEFINE_list("variants", [], "Cells of the neighbouring methods against the plain PGD cells, each a set of "
                  "pipeline settings: " + "; ".join(f"{k}: {v.doc}" for k, v in VARIANTS.items()) + ". Cell keys: "
                  "<base>~<variant> (da~<variant> where the variant trains its own DA).")
flags.DEFINE_bool("remeasure_device_bytes", False, "Only fill in the device bytes (TFLite Micro flash: the batch-1 "
                  "int8 model, LUT / PRUNE-compressed) of finished cells recorded without them, from each cell's saved "
                  "model (TFMOT: its .tflite), then re-render; give the run's own flags. Nothing is trained.")
flags.DEFINE_bool("reexport_activation_sparsity", False, "Only re-export the finished winners-take-all cells whose "
                  "int8 files predate the O(n) deployed form of wide layers (atmc_tf.export.winners), from each "
                  "cell's saved model: .tflite and TFLM files, their accuracies, LiteRT latency and attacks; the "
                  "old export's figures stay in the cell (pairwise_export). Give the run's own flags.")
flags.DEFINE_string("docs_dir", None, "Where BENCHMARKS.md and the PNG go (default: docs/, or <workdir>/docs "
                    "with --quick so that a smoke test never overwrites the real benchmark page).")

# The benchmark's own defaults. SGD + momentum + weight decay is the ATMC reference's optimizer; with
# Adam the DA weights of the large fc1 layer grow until global magnitude pruning at ratio 0.01 leaves
# conv1 with 9 of its 500 weights (measured: docs/why_sgd.md).
for _name, _value in dict(dataset="fashion_mnist", model="lenet", workdir="runs/bench", eval_restarts=5,
                          da_epochs=12, batch_size=128, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                          da_lr=0.05, lr=0.01, verbose=2, square_queries=5000).items():
    F.set_default(_name, _value)

QUICK = dict(limit_train=600, limit_test=200, da_epochs=1, pgd_steps=2, eval_pgd_steps=3, eval_restarts=1,
             ratios=["0.01"], methods=["da", "ap", "atmc8"], compress_epochs=3, da_lr_grid=["0.05"],
             lr_grid=["0.01"], tune_train=300, tune_val=60, tune_da_epochs=1, tune_compress_epochs=3,
             tfmot_prune_epochs=1, tfmot_qat_epochs=1, tfmot_search_iters=4, pgd100_steps=5, pgd100_restarts=1,
             timing_steps=5, timing_rounds=2, resnet=False, apgd_steps=3, square_n=40, square_queries=20,
             variants=["fgsm_rs"], structured_ratios=["0.5"], structured_methods=["satmc8"],
             workdir="runs/bench_quick", verbose=0)
# Flags of pipelines.atmc that the benchmark sets per cell itself.
PIPELINE_ONLY = ("method", "size_ratio", "mac_ratio", "nnz_budget", "bits", "bits_enabled", "factorization",
                 "rank", "al0_epochs", "atmc32_epochs", "atmcb_epochs", "finetune_epochs", "micro_samples", "plot_eps",
                 "model_file", "strategy", "rounds", "boost_epochs")  # boosting: its own benchmark (bench_boost)
# Settings that may change between a run and its resume (cells are keyed by method and ratio).
# The attack settings (a cell records its own and is attacked again when they change) may too.
RERUN_SAFE = ("verbose", "docs_dir", "render_only", "retime", "remeasure_device_bytes", "attacks_only",
              "reexport_activation_sparsity", "apgd_steps",
              "square_n", "square_queries", "variants", "structured_ratios", "structured_methods", "ratios", "methods", "tfmot",
              "workdir", "timing_steps", "timing_rounds", "resnet", "resnet_input", "resnet_batch", "resnet_reps",
              "resnet_pgd_step",
              "pgd100_steps", "pgd100_restarts", "tfmot_search_iters")
# The headline comparison first; the methods added since (issue 17's ATMC-2, issue 14's LAMP scoring) last.
METHOD_ORDER = ("atmc8", "ap", "al0", "atmc4", "atmc32", "nap", "atmc2", "al0_lamp", "atmc8_lamp")
FAMILY = {"nap": "nap", "ap": "ap", "al0": "al0", "atmc32": "atmc", "atmc8": "atmc", "atmc4": "atmc",
          "atmc2": "atmc", "al0_lamp": "al0", "atmc8_lamp": "atmc"}
# Methods that are another method with the global L0 budget scored by LAMP (--l0_scoring=lamp).
LAMP = {"al0_lamp": "al0", "atmc8_lamp": "atmc8"}
BENCH_FLAGS = ("quick", "ratios", "methods", "compress_epochs", "tune", "da_lr_grid", "lr_grid", "tune_train",
               "tune_val", "tune_da_epochs", "tune_compress_epochs", "tfmot", "tfmot_prune_epochs",
               "tfmot_qat_epochs", "tfmot_search_iters", "pgd100_steps", "pgd100_restarts", "timing_steps",
               "timing_rounds", "resnet", "resnet_input", "resnet_batch", "resnet_reps", "resnet_pgd_step", "apgd_steps",
               "square_n", "variants", "structured_ratios", "structured_methods")


# How the cells' winners-take-all layers are exported: a cell recorded without this mark was exported in the
# pairwise form at every width (--reexport_activation_sparsity redoes it).
WTA_EXPORT = "O(n) radix-16 threshold search for layers wider than 32 units (atmc_tf.export.winners)"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- settings --------------------------------------------------------------------------------

def _floats(name, values, lo, hi):
    try:
        out = [float(v) for v in values]
    except ValueError:
        fail(f"--{name} must be numbers, got {','.join(values)}")
    if not out or not all(lo < v <= hi for v in out):
        fail(f"--{name} must be numbers in ({lo:g}, {hi:g}], got {','.join(values)}")
    return out


def settings_from_flags():
    """(PipelineConfig, bench dict) after --quick defaults and validation; exits 2 on a bad flag."""
    for name in PIPELINE_ONLY:
        if F[name].present:
            fail(f"--{name} is a flag of pipelines.atmc; the benchmark sets it per cell (see --helpfull)")
    if F.quick:
        quick_defaults(F, QUICK)
    bench = {name: F[name].value for name in BENCH_FLAGS}
    bench["ratios"] = sorted(set(_floats("ratios", F.ratios, 0, 1)))
    bench["da_lr_grid"] = _floats("da_lr_grid", F.da_lr_grid, 0, 10)
    bench["lr_grid"] = _floats("lr_grid", F.lr_grid, 0, 10)
    bad = [m for m in F.methods if m not in R.METHODS]
    if bad or not F.methods:
        fail(f"--methods must be among {', '.join(R.METHODS)}, got {','.join(F.methods)}")
    bench["methods"] = ["da"] + [m for m in R.METHODS if m in F.methods and m != "da"]
    # in the order given (the first ratio's cells train first), each once
    bench["structured_ratios"] = list(dict.fromkeys(_floats("structured_ratios", F.structured_ratios, 0, 1))) \
        if F.structured_ratios else []
    bad = [m for m in F.structured_methods if m not in STRUCTURED]
    if bad:
        fail(f"--structured_methods must be among {', '.join(STRUCTURED)}, got {','.join(F.structured_methods)}")
    bench["structured_methods"] = [m for m in STRUCTURED if m in F.structured_methods]
    bad = [v for v in F.variants if v not in VARIANTS]
    if bad:
        fail(f"--variants must be among {', '.join(VARIANTS)}, got {','.join(F.variants)}")
    bench["variants"] = [v for v in VARIANTS if v in F.variants]
    for name, least in (("compress_epochs", 3), ("tune_train", 1), ("tune_val", 1), ("tune_da_epochs", 1),
                        ("tune_compress_epochs", 3), ("tfmot_prune_epochs", 0), ("tfmot_qat_epochs", 0),
                        ("tfmot_search_iters", 1), ("pgd100_steps", 1), ("pgd100_restarts", 1),
                        ("timing_steps", 1), ("timing_rounds", 1), ("resnet_input", 32), ("resnet_batch", 1),
                        ("resnet_reps", 1), ("apgd_steps", 1), ("square_n", 1)):
        if F[name].value < least:
            fail(f"--{name} must be >= {least}")
    if F.tfmot and F.model not in ("lenet", "mlp"):
        fail(f"--tfmot rebuilds the model in tf_keras and supports --model=lenet or mlp, not {F.model}")
    bench["lr_fixed"] = F["lr"].present
    bench["da_lr_fixed"] = F["da_lr"].present
    cfg = PipelineConfig.from_flags()
    cfg = dataclasses.replace(cfg, method="da", bits=None, nnz_budget=None, factorization="none")
    docs = F.docs_dir or (os.path.join(cfg.workdir, "docs") if F.quick else os.path.join(REPO, "docs"))
    return cfg, bench, docs


def identity(cfg, bench):
    """What a resumed run must share with the run that made the workdir."""
    d = {k: v for k, v in cfg.as_dict().items()
         if k not in RERUN_SAFE + PIPELINE_ONLY + ("da_lr", "lr", "l0_scoring")}  # cell_cfg sets l0_scoring
    d.update({k: v for k, v in bench.items() if k not in RERUN_SAFE})
    return json.loads(json.dumps(d))


def identity_diff(mine, theirs):
    """Settings that differ (flags_def.config_diff). One the workdir's run did not know yet counts
    as what that run did: a PipelineConfig field's default, else the benchmark flag's default; one
    since removed from the program is ignored."""
    defaults = {k: F[k].default for k in mine if k in F} | config_defaults()
    return config_diff(mine, {k: v for k, v in theirs.items() if k in mine}, defaults)


def versions():
    return package_versions(("tensorflow", "keras", "tf-keras", "tensorflow-model-optimization",
                             "ai-edge-litert", "numpy", "matplotlib"))


def command_line():
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd() + os.sep) else "python"
    nice = os.nice(0)
    env = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} " if os.environ.get("PYTHONPATH") else ""
    return (f"cd {os.getcwd()} && " + env + (f"nice -n {nice} " if nice else "")
            + shlex.join([exe, "-m", "benchmarks.benchmark"] + sys.argv[1:]))


# --- results file -----------------------------------------------------------------------------

class Results:
    """<workdir>/results.json, written atomically after every change; docs re-rendered each time."""

    def __init__(self, file, docs_dir):
        self.file = file
        self.docs_dir = docs_dir
        self.data = {}
        if os.path.exists(self.file):
            try:
                with open(self.file) as fh:
                    self.data = json.load(fh)
            except (OSError, ValueError):
                fail(f"{self.file} is unreadable or corrupt; move it away or use a new --workdir")
        self.data.setdefault("cells", {})

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def cell(self, key):
        return self.data["cells"].get(key)

    def done(self, key):
        c = self.cell(key)
        return c is not None and c.get("status") in ("done", "infeasible")

    def set(self, key, value, cell=False):
        (self.data["cells"] if cell else self.data)[key] = value
        self.save()

    def save(self):
        from atmc_tf.export import atomic
        self.data["updated"] = _now()
        atomic.write_json_atomic(self.file, self.data)
        self.render()

    def render(self):
        try:
            R.render(self.data, self.docs_dir)
        except Exception:  # a rendering bug must not stop a run of many hours
            logging.exception("rendering %s failed; results.json is intact", self.docs_dir)


# --- training and evaluation of one cell ---------------------------------------------------------

def tuned_families(methods, structured_methods=()):
    """The method families whose learning rate the run needs: those of --methods and of the structured methods
    (structured AP trains with AP's; a structured cell read the family's rate before it was ever chosen)."""
    needed = {FAMILY[m] for m in methods if m != "da"} | {FAMILY[STRUCTURED[m][0]] for m in structured_methods}
    return [f for f in ("nap", "ap", "al0", "atmc") if f in needed]


def cell_cfg(cfg, workdir, method, ratio, lr, epochs):
    """The PipelineConfig for one (method, ratio): its own workdir, budget and epoch split."""
    t = int(epochs)
    per = {"nap": dict(method="nap", finetune_epochs=t), "ap": dict(method="ap", finetune_epochs=t),
           "al0": dict(method="al0", al0_epochs=t),
           "atmc32": dict(method="atmc", al0_epochs=t // 2, atmc32_epochs=t - t // 2)}
    for b in (8, 4, 2):
        per[f"atmc{b}"] = dict(method="atmc", bits=b, al0_epochs=t // 3, atmc32_epochs=t // 3,
                               atmcb_epochs=t - 2 * (t // 3))
    for m in list(per):  # the plain methods are the paper's: its |w| top-k, whatever the pipeline's default
        per[m]["l0_scoring"] = "magnitude"
    for lamp, plain_method in LAMP.items():
        per[lamp] = dict(per[plain_method], l0_scoring="lamp")
    base = dict(workdir=workdir, size_ratio=float(ratio), nnz_budget=None, lr=float(lr), bits=None,
                factorization="none", al0_epochs=0, atmc32_epochs=0, atmcb_epochs=0, finetune_epochs=0)
    return dataclasses.replace(cfg, **{**base, **per[method]})


def train_method(ccfg, method, data, da_plain):
    """Train one method from the DA model; returns (plain, net, stage results, scheme, k).

    Raises UsageError when the ratio cannot pay for the codebooks (infeasible).
    """
    from atmc_tf.training import method_config
    from pipelines import stages
    k = stages.nnz_budget(ccfg, da_plain)
    if method == "nap":  # from the shared DA checkpoint, fine-tuned without attack
        config = method_config("nap", nnz_budget=k)
        plain, net, res = stages.train_stage(ccfg, "nap", da_plain, data, "nap", config, ccfg.finetune_epochs,
                                             ccfg.lr)
        return plain, net, [res], None, k
    plain, net, results, scheme = stages.compress_stages(ccfg, data, da_plain)
    return plain, net, results, scheme, k


def evaluate(cfg, plain, data, rep_x, out_dir):
    """Clean and PGD accuracy of the Keras model and of its int8 .tflite on the same adversarial images."""
    from atmc_tf.export import atomic, evaluate_deployment, gzip_size, kernel_codes_match, to_int8_tflite
    from pipelines import stages
    t = time.time()
    x_adv = stages.craft_adversarial(cfg, plain, data.x_test, data.y_test)
    tfl = to_int8_tflite(plain, rep_x)
    os.makedirs(out_dir, exist_ok=True)
    tfl_file = os.path.join(out_dir, "model_int8.tflite")
    atomic.write_bytes_atomic(tfl_file, tfl)
    ev = evaluate_deployment(tfl, data.x_test, data.y_test, x_adv, keras_model=plain)
    codes = kernel_codes_match(plain, tfl)
    seconds = time.time() - t  # the evaluation's own time, as before the device bytes were measured
    return {**R.accuracy_fields(ev), **device_bytes(plain, rep_x, out_dir, cfg.verbose),
            **phone_fields(plain, rep_x, tfl, ev.tflite_clean_acc, data, out_dir, cfg.verbose),
            "top1_agreement": ev.top1_agreement,
            "top1_agreement_adv": ev.top1_agreement_adv, "kernel_code_mismatches": int(codes["mismatches"]),
            "tflite_bytes": len(tfl), "tflite_gzip_bytes": gzip_size(tfl), "tflite_file": tfl_file,
            "eval_seconds": seconds,
            "attack": f"PGD-{cfg.eval_pgd_steps} x {cfg.eval_restarts} restarts, eps {cfg.eps}, white-box on "
                      "Keras; .tflite on the same images (transfer)"}


def micro_fields(b1, out_dir, source):
    """Device bytes of a TFLite Micro target from the int8 model `b1`: compress_for_micro (the pipeline's
    LUT compression) writes <out_dir>/model_int8_micro.tflite; returns the cell's tflm_* fields."""
    from atmc_tf.export import atomic, compress_for_micro
    mcu, plan = compress_for_micro(b1)
    os.makedirs(out_dir, exist_ok=True)
    file = os.path.join(out_dir, "model_int8_micro.tflite")
    atomic.write_bytes_atomic(file, mcu)
    keep = ("name", "op", "shape", "encoding", "index_bits", "values_per_channel_max", "bytes_before", "bytes_after",
            "reason")
    return {"tflm_bytes": len(mcu), "tflm_b1_bytes": len(b1), "tflm_file": file, "tflm_source": source,
            "tflm_compressed_tensors": plan["compressed_tensors"],
            "tflm_encoding": json.loads(json.dumps([{k: t.get(k) for k in keep} for t in plan["tensors"]]))}


def device_bytes(plain, rep_x, out_dir, verbose=0):
    """The TFLite Micro device bytes of a Keras model, as the pipeline makes its microcontroller file:
    the batch-1 int8 .tflite (to_int8_tflite(batch_size=1), kept as <out_dir>/model_int8_batch1.tflite),
    LUT- or PRUNE-compressed by compress_for_micro. A failure is recorded (tflm_error), never fatal: the cell's
    training and accuracies are worth more than this one measurement."""
    from atmc_tf.export import atomic, to_int8_tflite
    from pipelines import console
    try:
        with console.quiet_native(verbose):  # the converter prints its settings on every call
            b1 = to_int8_tflite(plain, rep_x, batch_size=1)
        os.makedirs(out_dir, exist_ok=True)
        atomic.write_bytes_atomic(os.path.join(out_dir, "model_int8_batch1.tflite"), b1)
        return micro_fields(b1, out_dir, "batch-1 int8 export of the cell's Keras model")
    except Exception as err:  # noqa: BLE001
        logging.exception("device bytes of %s failed", out_dir)
        return {"tflm_error": f"{type(err).__name__}: {err}"}


def _read_or_export(file, plain, rep_x, verbose=0):
    """The bytes of a cell's int8 .tflite, re-exported from its Keras model when the file is gone."""
    from atmc_tf.export import to_int8_tflite
    from pipelines import console
    if file and os.path.exists(file):
        with open(file, "rb") as f:
            return f.read()
    with console.quiet_native(verbose):
        return to_int8_tflite(plain, rep_x)


def phone_fields(plain, rep_x, tfl, int8_clean_acc, data, out_dir, verbose=0):
    """What a phone stores for a cell, as the pipeline chooses it (pipelines.phone.phone_model): the smallest
    of the int8 .tflite, its INT4-packed and its sparse form that LiteRT runs with the int8 model's answers on
    the test split; the chosen file is kept in out_dir. A failure is recorded (phone_error), never fatal."""
    from pipelines import console
    from pipelines.phone import phone_model
    try:
        os.makedirs(out_dir, exist_ok=True)
        files = {"tflite": os.path.join(out_dir, "model_int8.tflite")}
        with console.quiet_native(verbose):
            chosen, out = phone_model(plain, rep_x, tfl, int8_clean_acc, data, files, verbose)
        return {"phone_bytes": len(chosen), "phone_file": out["file"],
                "phone_int4_bytes": out["int4"]["bytes"], "phone_int4_reason": out["int4"].get("reason"),
                "phone_sparse_bytes": out["sparse"]["bytes"], "phone_sparse_reason": out["sparse"].get("reason"),
                "phone_sparse_agreement": out["sparse"].get("top1_agreement"),
                "phone_densified_bytes": out["sparse"]["densified_bytes"]}
    except Exception as err:  # noqa: BLE001
        logging.exception("phone bytes of %s failed", out_dir)
        return {"phone_error": f"{type(err).__name__}: {err}"}


def _last(history, key):
    v = history.get(key) or history.get(key.replace("val_", "")) or [None]
    return v[-1]


class Benchmark:
    def __init__(self, cfg, bench, results):
        self.cfg, self.b, self.res = cfg, bench, results
        self.root = cfg.workdir
        self.failed = {}  # cell label -> its error line, of the cells that raised this run

    def _guarded(self, label, fn, *args, **kwargs):
        """fn(*args, **kwargs): one cell (or one variant's cells). A cell that raises (a bug, an op a model
        cannot export, out of memory) must not end a run of many hours: its error goes to the log in one
        line, its traceback to <workdir>/failures/<label>.txt, and the run goes on with the next cell. The
        cell is not recorded, so the next run of the same command retries it; main() exits 1 naming it.
        Interrupts and the run-wide errors (bad data, bad flags) still end the run."""
        import traceback

        from atmc_tf.data import DataError
        from pipelines import faults
        try:
            faults.raise_at(f"cell:{label}")
            fn(*args, **kwargs)
        except (DataError, UsageError):
            raise
        except Exception as err:  # noqa: BLE001 (see the docstring)
            line = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            path = os.path.join(self.root, "failures", label.replace(os.sep, "_") + ".txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(traceback.format_exc())
            self.failed[label] = f"{line} (traceback: {path})"
            logging.error("cell %s failed, going on with the next cell: %s", label, self.failed[label])
        gc.collect()

    # --- stages of the run ---------------------------------------------------------------------
    def run(self):
        import tensorflow as tf

        from atmc_tf.training import dense_weight_count
        from pipelines import stages
        if self.cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.data = stages.load_data(self.cfg)
        self.rep_x = self.data.x_train[:300]
        meta = self.res.get("meta", {})
        meta.update({"settings": {**self.b, **{k: v for k, v in self.cfg.as_dict().items()
                                               if k not in PIPELINE_ONLY}},
                     "data": self.data.summary()})
        meta["settings"].update(train=len(self.data.y_train), val=len(self.data.y_val), test=len(self.data.y_test))
        self.res.set("meta", meta)

        self.tune_da()
        self.da_plain, _, da_res = stages.dense_stage(self.cfg, self.data)
        meta["dense_weights"] = dense_weight_count(self.da_plain)
        self.res.set("meta", meta)
        if not self.res.done("da"):
            size = stages.size_summary(self.cfg, None, self.da_plain, None, None)
            self._record("da", "da", None, self.da_plain, size, [da_res], self.cfg.da_lr, None,
                         os.path.join(self.root, "da", "model.keras"))
        self.fill_device_bytes()  # cells of a run resumed across the device-bytes change
        self.fill_attacks()  # ... and across the attacks of issue 18
        self.timing()
        self.tune_compression()
        self.da_more_cell()
        ratios = self.b["ratios"]
        ordered = ([R.HEADLINE_RATIO] if R.HEADLINE_RATIO in ratios else []) + \
                  [r for r in ratios if r != R.HEADLINE_RATIO]
        for ratio in ordered:
            for method in METHOD_ORDER:
                if method in self.b["methods"]:
                    self._guarded(R.cell_key(method, ratio), self.compressed_cell, method, ratio)
            if self.b["tfmot"] and "atmc8" in self.b["methods"]:
                self._guarded(R.cell_key("tfmot", ratio), self.tfmot_cell, ratio)
            if ratio == ordered[0]:
                self._guarded("pgd100", self.pgd100, ratio)
        for ratio in self.b["structured_ratios"]:
            for method in self.b["structured_methods"]:
                self._guarded(R.cell_key(method, ratio), self.structured_cell, method, ratio)
        for name in self.b["variants"]:
            self._guarded(f"variant {name}", self.variant_cells, name)
        self.res.save()

    def _cell(self, method, ratio, ev, size, stage_results, lr, k, model_file):
        return {"method": method, "ratio": 1.0 if ratio is None else ratio, "status": "done", **ev,
                "paper_bits": size["paper_bits"], "paper_ratio": size["paper_ratio"],
                "honest_bits": size["honest_bits"], "honest_ratio": size["honest_ratio"], "nnz": size["nnz"],
                "budget": k, "size": size, "lr": lr,
                "train_seconds": sum(r["seconds"] for r in stage_results),
                "stages": [{k2: r[k2] for k2 in ("stage", "method", "epochs", "seconds")} | {
                    "val_clean_acc": _last(r.get("history", {}), "val_clean_acc"),
                    "val_adv_acc": _last(r.get("history", {}), "val_adv_acc")} for r in stage_results],
                "model_file": model_file, "finished": _now(), "loadavg_at_finish": list(os.getloadavg())}

    def _record(self, key, method, ratio, plain, size, stage_results, lr, k, model_file, ccfg=None, **extra):
        """Evaluate `plain` and its int8 .tflite (files in <workdir>/cells/<key>), store the cell, log it.
        ccfg: the cell's own settings where they differ from the run's (a variant's): with activation sparsity
        the cell also gets the pipeline's activation report (densities, effective MACs, BPDA PGD, latency)."""
        from pipelines import stages
        ev = evaluate(self.cfg, plain, self.data, self.rep_x, os.path.join(self.root, "cells", key))
        if ccfg is not None and stages.activation_sparsity(ccfg):
            ev["activation"] = stages.activation_report(ccfg, plain, self.data)
            if ccfg.activation_sparsity == "wta":
                ev["wta_export"] = WTA_EXPORT
        cell = self._cell(method, ratio, ev, size, stage_results, lr, k, model_file) | extra
        self.res.set(key, cell, cell=True)
        self._log_cell(key)
        self.fill_attacks(only=key)

    def _log_cell(self, key):
        c = self.res.cell(key)
        logging.info("cell %s: clean %.4f robust %.4f | .tflite clean %.4f robust %.4f | %d bits (ratio %.4f) | "
                     "%d B, %d B gzipped, TFLM %s B | train %.0f s", key, c["clean_acc"], c["robust_acc"],
                     c["tflite_clean_acc"], c["tflite_robust_acc"], c["paper_bits"], c["paper_ratio"],
                     c["tflite_bytes"], c["tflite_gzip_bytes"], c.get("tflm_bytes", "n/a"), c["train_seconds"])

    # --- hyper-parameters on the validation split -------------------------------------------------
    def _tune_data(self):
        n, nv = min(self.b["tune_train"], len(self.data.y_train)), min(self.b["tune_val"], len(self.data.y_val))
        return dataclasses.replace(self.data, x_train=self.data.x_train[:n], y_train=self.data.y_train[:n],
                                   x_val=self.data.x_val[:nv], y_val=self.data.y_val[:nv])

    def _tuning(self):
        t = self.res.get("tuning") or {}
        t["note"] = (f"Each candidate trains on the first {min(self.b['tune_train'], len(self.data.y_train))} "
                     f"training images and is scored on {min(self.b['tune_val'], len(self.data.y_val))} validation "
                     f"images by its PGD-{self.cfg.pgd_steps} robust accuracy after the last epoch (NAP: clean "
                     f"accuracy); DA candidates {self.b['tune_da_epochs']} epochs, compression candidates "
                     f"{self.b['tune_compress_epochs']} epochs from the full DA checkpoint at ratio "
                     f"{self._tune_ratio():g}. The test set is never used for a choice.")
        return t

    def _tune_ratio(self):
        return R.HEADLINE_RATIO if R.HEADLINE_RATIO in self.b["ratios"] else self.b["ratios"][0]

    @staticmethod
    def _pick(grid, clean_only=False):
        def score(item):
            v = item[1]
            return (v["val_clean_acc"] or 0,) if clean_only else (v["val_adv_acc"] or 0, v["val_clean_acc"] or 0)
        return float(max(grid.items(), key=score)[0])

    def tune_da(self):
        from pipelines import stages
        tuning = self._tuning()
        if "da_lr" not in tuning:
            if self.b["da_lr_fixed"] or not self.b["tune"]:
                tuning["da_lr"] = {"grid": {}, "chosen": self.cfg.da_lr, "how": "fixed by --da_lr / --notune"}
            else:
                data, grid = self._tune_data(), {}
                for lr in self.b["da_lr_grid"]:
                    tcfg = dataclasses.replace(self.cfg, workdir=os.path.join(self.root, "tune", f"da_lr{lr:g}"),
                                               da_epochs=self.b["tune_da_epochs"], da_lr=lr)
                    _, _, r = stages.dense_stage(tcfg, data)
                    grid[f"{lr:g}"] = {"val_adv_acc": _last(r["history"], "val_adv_acc"),
                                       "val_clean_acc": _last(r["history"], "val_clean_acc"),
                                       "seconds": r["seconds"]}
                tuning["da_lr"] = {"grid": grid, "chosen": self._pick(grid), "how": "best val robust acc"}
            self.res.set("tuning", tuning)
            logging.info("tuning: DA lr %s", tuning["da_lr"]["chosen"])
        self.cfg = dataclasses.replace(self.cfg, da_lr=float(tuning["da_lr"]["chosen"]))

    def tune_compression(self):
        tuning = self._tuning()
        lrs = tuning.setdefault("lr", {})
        families = tuned_families(self.b["methods"], self.b["structured_methods"] if self.b["structured_ratios"]
                                  else ())
        rep = {"nap": "nap", "ap": "ap", "al0": "al0",
               "atmc": next((m for m in ("atmc8", "atmc4", "atmc32") if m in self.b["methods"]), "atmc8")}
        for fam in families:
            if fam in lrs:
                continue
            if self.b["lr_fixed"] or not self.b["tune"]:
                lrs[fam] = {"grid": {}, "chosen": self.cfg.lr, "how": "fixed by --lr / --notune"}
            else:
                data, grid, ratio = self._tune_data(), {}, self._tune_ratio()
                for lr in self.b["lr_grid"]:
                    wd = os.path.join(self.root, "tune", f"{fam}_lr{lr:g}")
                    ccfg = cell_cfg(self.cfg, wd, rep[fam], ratio, lr, self.b["tune_compress_epochs"])
                    try:
                        _, _, results, _, _ = train_method(ccfg, rep[fam], data, self.da_plain)
                    except UsageError as err:
                        logging.warning("tuning %s at ratio %g is infeasible (%s); using --lr", fam, ratio, err)
                        grid = {}
                        break
                    h = results[-1]["history"]
                    grid[f"{lr:g}"] = {"val_adv_acc": _last(h, "val_adv_acc"),
                                       "val_clean_acc": _last(h, "val_clean_acc"),
                                       "seconds": sum(r["seconds"] for r in results), "tuned_with": rep[fam]}
                    gc.collect()
                chosen = self._pick(grid, clean_only=fam == "nap") if grid else self.cfg.lr
                lrs[fam] = {"grid": grid, "chosen": chosen,
                            "how": (f"best val {'clean' if fam == 'nap' else 'robust'} acc, tuned with "
                                    f"{R.LABELS[rep[fam]]}") if grid else "fallback --lr"}
            self.res.set("tuning", tuning)
            logging.info("tuning: %s lr %s", fam, lrs[fam]["chosen"])

    # --- the cells ------------------------------------------------------------------------------
    def da_more_cell(self):
        """The fair dense ceiling: DA trained on for the compressed cells' epochs at their learning rate
        (every compressed cell gets those extra adversarial epochs on top of the shared DA)."""
        from pipelines import stages
        key = "da_more"
        if self.res.done(key):
            return
        lr = float(self.res["tuning"]["lr"].get("atmc", {}).get("chosen", self.cfg.lr))
        wd = os.path.join(self.root, "cells", key)
        logging.info("cell %s: DA + %d epochs (lr %g)", key, self.b["compress_epochs"], lr)
        plain, _, res = stages.train_stage(dataclasses.replace(self.cfg, workdir=wd), key, self.da_plain, self.data,
                                           "da", stages.dense_config(self.cfg), self.b["compress_epochs"], lr)
        self._record(key, key, None, plain, stages.size_summary(self.cfg, None, plain, None, None), [res], lr, None,
                     os.path.join(wd, key, "model.keras"))

    def structured_cell(self, method, ratio, variant=None):
        """Issue 16: one structured cell, trained from the shared DA with --structure=channel at `ratio` of the
        compressible parameters, cut to its smaller model (saved; attacked and exported from it), with MACs,
        batch-1 bytes and LiteRT latency against the DA model's in the same call. `variant`: a VARIANTS name whose
        settings the cell trains with (key <method>@<ratio>~<variant>; the shared DA)."""
        from atmc_tf.export import LiteRTModel, atomic, count_macs, shrink_model, to_int8_tflite
        from pipelines import console, stages
        key = R.cell_key(method, ratio) + (f"~{variant}" if variant else "")
        if self.res.done(key):
            return
        overrides = VARIANTS[variant].overrides if variant else {}
        base = STRUCTURED[method][0]
        lr = float(self.res["tuning"]["lr"][FAMILY[base]]["chosen"])
        wd = os.path.join(self.root, "cells", key)
        ccfg = dataclasses.replace(cell_cfg(self.cfg, wd, base, ratio, lr, self.b["compress_epochs"]),
                                   structure="channel", **overrides)
        logging.info("cell %s: %s, channels at %g of the parameters (lr %g)%s", key, STRUCTURED[method][1], ratio,
                     lr, f" with {overrides}" if overrides else "")
        try:
            plain, net, results, scheme = stages.compress_stages(ccfg, self.data, self.da_plain)
        except UsageError as err:
            self.res.set(key, {"method": method, "ratio": ratio, "status": "infeasible", "reason": str(err)},
                         cell=True)
            logging.warning("cell %s: infeasible: %s", key, err)
            return
        deployed, cut = shrink_model(plain, strict=False)
        model_file = os.path.join(wd, "deployed.keras")
        with atomic.atomic_path(model_file, ".tmp.keras") as tmp:
            deployed.save(tmp)
        with console.quiet_native(self.cfg.verbose):
            b1 = {"dense": to_int8_tflite(self.da_plain, self.rep_x, batch_size=1),
                  "compressed": to_int8_tflite(deployed, self.rep_x, batch_size=1)}
        latency = {k: LiteRTModel(v, num_threads=1).latency_ms(self.data.x_test, runs=300) for k, v in b1.items()}
        structure = {"kept_ratio": ratio, "budget": stages.structure_budget(ccfg, plain, deployed, cut),
                     "layers": cut["layers"], "params": {"dense": cut["params_before"], "compressed": cut["params_after"]},
                     "macs": {"dense": count_macs(self.da_plain), "compressed": count_macs(deployed)},
                     "tflite_b1_bytes": {k: len(v) for k, v in b1.items()}, "litert_latency_ms": latency,
                     "latency_note": "LiteRT, 1 thread, batch 1, median of 300 invoke() calls, same call"}
        size = stages.size_summary(ccfg, net, plain, scheme, ccfg.bits if scheme else None)
        extra = {"variant": variant, **overrides, "from_da": "da",
                 "clean_target": stages.resolve_clean_target(ccfg, self.data, self.da_plain)} if variant else {}
        self._record(key, method, ratio, deployed, size, results, lr, None, model_file,
                     ccfg=ccfg if variant else None, bits=ccfg.bits, quant_scheme=scheme, structure=structure,
                     **extra)

    def variant_cells(self, name):
        """A variant's cells (VARIANTS): its own DA from scratch where it has one, then each of its compressed
        cells from that DA (or the shared one), with the plain cell's epochs and learning rate."""
        import keras

        from atmc_tf.layers import strip_model
        from pipelines import stages
        v = VARIANTS[name]
        da_plain, da_key = self.da_plain, "da"
        extra = {"variant": name, **v.overrides}
        if v.own_da:
            da_key = f"da~{name}"
            wd = os.path.join(self.root, "cells", da_key)
            fcfg = dataclasses.replace(self.cfg, workdir=wd, **v.overrides)
            if not self.res.done(da_key):
                logging.info("cell %s: DA from scratch with %s", da_key, v.overrides)
                plain, _, res = stages.dense_stage(fcfg, self.data)
                self._record(da_key, "da", None, plain, stages.size_summary(fcfg, None, plain, None, None), [res],
                             fcfg.da_lr, None, os.path.join(wd, "da", "model.keras"), ccfg=fcfg,
                             catastrophic_overfitting=res.get("catastrophic_overfitting"), **extra)
            da_plain = strip_model(keras.models.load_model(self.res.cell(da_key)["model_file"], safe_mode=True))
        for method, ratio in v.cells:
            if method in STRUCTURED:
                self.structured_cell(method, ratio, variant=name)
                continue
            key = f"{R.cell_key(method, ratio)}~{name}"
            if self.res.done(key):
                continue
            lr = float(self.res["tuning"]["lr"][FAMILY[method]]["chosen"])
            wd = os.path.join(self.root, "cells", key)
            ccfg = dataclasses.replace(cell_cfg(self.cfg, wd, method, ratio, lr, self.b["compress_epochs"]),
                                       **v.overrides)
            logging.info("cell %s: %s from %s with %s (lr %g)", key, method, da_key, v.overrides, lr)
            plain, net, results, scheme, k = train_method(ccfg, method, self.data, da_plain)
            size = stages.size_summary(ccfg, net, plain, scheme, ccfg.bits)
            target = stages.resolve_clean_target(ccfg, self.data, da_plain)  # None without one
            self._record(key, method, ratio, plain, size, results, lr, k,
                         os.path.join(wd, results[-1]["stage"], "model.keras"), ccfg=ccfg, bits=ccfg.bits,
                         clean_target=target,
                         quant_scheme=scheme, l0_scoring=ccfg.l0_scoring, from_da=da_key,
                         catastrophic_overfitting=[r["catastrophic_overfitting"] for r in results
                                                   if r.get("catastrophic_overfitting")] or None, **extra)

    def compressed_cell(self, method, ratio):
        from pipelines import stages
        key = R.cell_key(method, ratio)
        if self.res.done(key):
            return
        lr = float(self.res["tuning"]["lr"][FAMILY[method]]["chosen"])
        wd = os.path.join(self.root, "cells", key)
        ccfg = cell_cfg(self.cfg, wd, method, ratio, lr, self.b["compress_epochs"])
        logging.info("cell %s: training (lr %g, %d epochs from DA)", key, lr, self.b["compress_epochs"])
        from atmc_tf.training import TrainingDivergedError
        try:
            plain, net, results, scheme, k = train_method(ccfg, method, self.data, self.da_plain)
        except UsageError as err:
            self.res.set(key, {"method": method, "ratio": ratio, "status": "infeasible", "reason": str(err)},
                         cell=True)
            logging.warning("cell %s: infeasible: %s", key, err)
            return
        except TrainingDivergedError as err:
            self.res.set(key, {"method": method, "ratio": ratio, "status": "failed", "reason": str(err)}, cell=True)
            logging.error("cell %s: %s", key, err)
            return
        size = stages.size_summary(ccfg, net, plain, scheme, ccfg.bits if scheme else None)
        self._record(key, method, ratio, plain, size, results, lr, k,
                     os.path.join(wd, results[-1]["stage"], "model.keras"), bits=ccfg.bits, quant_scheme=scheme,
                     l0_scoring=ccfg.l0_scoring)

    def tfmot_cell(self, ratio):
        import numpy as np

        from atmc_tf.export import atomic
        key, match = R.cell_key("tfmot", ratio), R.cell_key("atmc8", ratio)
        target = self.res.cell(match)
        if self.res.done(key) or not (target and target.get("status") == "done"):
            return
        d = os.path.join(self.root, "cells", key)
        os.makedirs(d, exist_ok=True)
        npz = os.path.join(d, "da_weights.npz")
        arrays = {f"{l.name}/{i}": w for l in self.da_plain.layers for i, w in enumerate(l.get_weights())}
        arrays["check_x"] = self.data.x_test[:64]
        arrays["check_logits"] = self.da_plain.predict(self.data.x_test[:64], verbose=0)
        with atomic.atomic_path(npz, ".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        c = self.cfg
        args = [f"--weights={npz}", f"--out={os.path.join(d, 'result.json')}",
                f"--target_gzip={target['tflite_gzip_bytes']}", f"--model={c.model}", f"--dataset={c.dataset}",
                f"--seed={c.seed}", f"--batch_size={c.batch_size}", f"--eps={c.eps}",
                f"--eval_pgd_steps={c.eval_pgd_steps}", f"--eval_restarts={c.eval_restarts}",
                f"--prune_epochs={self.b['tfmot_prune_epochs']}", f"--qat_epochs={self.b['tfmot_qat_epochs']}",
                f"--search_iters={self.b['tfmot_search_iters']}", f"--verbose={c.verbose}"]
        args += [f"--{n}={getattr(c, n)}" for n in ("data_dir", "limit_train", "limit_test")
                 if getattr(c, n) is not None]
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1",
               "PYTHONPATH": REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
        log_file = os.path.join(d, "tfmot.log")
        logging.info("cell %s: TFMOT in its own process (log %s), target %d B gzipped", key, log_file,
                     target["tflite_gzip_bytes"])
        with open(log_file, "a") as log:
            log.write(f"\n=== {_now()} {shlex.join([sys.executable, '-m', 'benchmarks.bench_tfmot'] + args)}\n")
            log.flush()
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_tfmot"] + args, cwd=REPO, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            self.res.set(key, {"method": "tfmot", "ratio": ratio, "status": "failed",
                               "reason": f"bench_tfmot exited with {proc.returncode}; see {log_file}"}, cell=True)
            logging.error("cell %s: TFMOT process failed (exit %d), see %s", key, proc.returncode, log_file)
            return
        with open(os.path.join(d, "result.json")) as fh:
            cell = json.load(fh)
        cell.update(ratio=ratio, matched_to=match, finished=_now())
        cell.update(self._tfmot_device_bytes(cell, d))
        self.res.set(key, cell, cell=True)
        self._log_cell(key)
        self.fill_attacks(only=key)

    @staticmethod
    def _tfmot_device_bytes(cell, out_dir):
        """TFMOT's cell comes from another process (tf_keras): its own .tflite, compressed (LUT / PRUNE) as it is
        (the tf_keras converter's dynamic-batch model, not a batch-1 re-export)."""
        try:
            with open(cell["tflite_file"], "rb") as fh:
                return micro_fields(fh.read(), out_dir, "TFMOT's own int8 .tflite (dynamic batch), compressed as is")
        except Exception as err:  # noqa: BLE001
            logging.exception("device bytes of %s failed", out_dir)
            return {"tflm_error": f"{type(err).__name__}: {err}"}

    def fill_device_bytes(self, retry=False):
        """Device bytes of finished cells recorded without them (a run resumed across this change), from
        each cell's saved model; `retry`: also cells whose measurement failed before."""
        import keras

        from atmc_tf.layers import strip_model
        for key, c in list(self.res["cells"].items()):
            need_tflm = c.get("tflm_bytes") is None and (retry or not c.get("tflm_error"))
            need_phone = (c["method"] != "tfmot" and c.get("phone_bytes") is None
                          and (retry or not c.get("phone_error")))
            if c.get("status") != "done" or not (need_tflm or need_phone):
                continue
            out_dir = os.path.join(self.root, "cells", key)
            if c["method"] == "tfmot":
                fields = self._tfmot_device_bytes(c, out_dir)
            elif not os.path.exists(c.get("model_file") or ""):
                logging.warning("cell %s: its model %s is gone; device bytes stay n/a", key, c.get("model_file"))
                continue
            else:
                plain = strip_model(keras.models.load_model(c["model_file"]))
                fields = device_bytes(plain, self.rep_x, out_dir, self.cfg.verbose) if need_tflm else {}
                if need_phone:  # the cell's own int8 file when it is still there, else a fresh export
                    tfl = _read_or_export(c.get("tflite_file"), plain, self.rep_x, self.cfg.verbose)
                    fields |= phone_fields(plain, self.rep_x, tfl, c["tflite_clean_acc"], self.data, out_dir,
                                           self.cfg.verbose)
            c = ({k: v for k, v in c.items() if k not in ("tflm_error", "phone_error")} | fields
                 | {"device_bytes_remeasured": _now()})
            self.res.set(key, c, cell=True)
            logging.info("cell %s: TFLM %s B (batch-1 %s B), phone %s B (%s)", key, c.get("tflm_bytes"),
                         c.get("tflm_b1_bytes"), c.get("phone_bytes"), c.get("phone_file"))
            gc.collect()

    def fill_attacks(self, only=None):
        """The attacks of issue 18 (benchmarks.bench_attacks) on each finished cell (`only`: that cell) that
        lacks them or was attacked with other settings, from its saved model and int8 .tflite; evaluation only.
        A failure is recorded (attacks_error), never fatal."""
        import keras

        from atmc_tf.layers import strip_model
        from benchmarks import bench_attacks
        settings = bench_attacks.attack_settings(self.cfg, self.b)
        for key, c in list(self.res["cells"].items()):
            if (only and key != only) or c.get("status") != "done" or (c.get("attacks") or {}).get(
                    "settings") == settings:
                continue
            tfmot = c["method"] == "tfmot"
            if not tfmot and not os.path.exists(c.get("model_file") or ""):
                logging.warning("cell %s: its model %s is gone; it is not attacked", key, c.get("model_file"))
                continue
            logging.info("cell %s: APGD-CE/DLR, worst case, twin and Square on the .tflite", key)
            try:
                plain = None if tfmot else strip_model(keras.models.load_model(c["model_file"]))
                tfl = _read_or_export(c.get("tflite_file"), plain, self.rep_x, self.cfg.verbose)
                fields = {"attacks": bench_attacks.attack_fields(self.cfg, settings, tfl, self.data, plain)}
            except Exception as err:  # noqa: BLE001
                logging.exception("attacks on %s failed", key)
                fields = {"attacks": None, "attacks_error": f"{type(err).__name__}: {err}"}
            c = {k: v for k, v in c.items() if k != "attacks_error"} | fields
            self.res.set(key, c, cell=True)
            a = c.get("attacks")
            if a:
                logging.info("cell %s: worst case Keras %s, .tflite %s; Square %.4f (%d images, %.0f queries mean); "
                             "%.0f s", key, a.get("keras_worst_case", "n/a"), a["tflite_worst_case"],
                             a["square"]["acc"], a["square"]["n"], a["square"]["queries_mean"], a["seconds"])
            gc.collect()

    def attack_cells(self):
        """--attacks_only: attack the finished cells, nothing trained."""
        from pipelines import stages
        self.data = stages.load_data(self.cfg)
        self.rep_x = self.data.x_train[:300]
        self.fill_attacks()
        self.res.save()

    def remeasure(self):
        """--remeasure_device_bytes: only the missing device bytes, nothing trained."""
        from pipelines import stages
        self.data = stages.load_data(self.cfg)
        self.rep_x = self.data.x_train[:300]
        self.fill_device_bytes(retry=True)
        self.res.save()

    def reexport_sparsity(self):
        """--reexport_activation_sparsity: each finished winners-take-all cell exported before WTA_EXPORT, again
        from its saved model (evaluation, device bytes, LiteRT latency, then the attacks); nothing trained."""
        import keras

        from atmc_tf.layers import strip_model
        from pipelines import stages
        self.data = stages.load_data(self.cfg)
        self.rep_x = self.data.x_train[:300]
        for key, c in list(self.res["cells"].items()):
            if c.get("status") != "done" or c.get("activation_sparsity") != "wta" or c.get("wta_export") == WTA_EXPORT:
                continue
            if not os.path.exists(c.get("model_file") or ""):
                logging.warning("cell %s: its model %s is gone; not re-exported", key, c.get("model_file"))
                continue
            logging.info("cell %s: re-export with %s", key, WTA_EXPORT)
            plain = strip_model(keras.models.load_model(c["model_file"], safe_mode=True))
            act = dict(c.get("activation") or {})
            before = c.get("pairwise_export") or {  # the first export's, kept through later re-exports
                **{k: c.get(k) for k in ("tflite_bytes", "tflm_bytes", "tflm_b1_bytes", "tflite_clean_acc",
                                         "tflite_robust_acc", "top1_agreement")},
                "litert_latency_ms": act.get("litert_latency_ms"),
                "tflite_worst_case": (c.get("attacks") or {}).get("tflite_worst_case")}
            ev = evaluate(self.cfg, plain, self.data, self.rep_x, os.path.join(self.root, "cells", key))
            act["litert_latency_ms"] = stages.sparsity_latency(plain, self.data)
            drop = ("attacks", "attacks_error", "tflm_error", "phone_error")
            c = {k: v for k, v in c.items() if k not in drop} | ev | {
                "activation": act, "wta_export": WTA_EXPORT, "pairwise_export": before, "reexported": _now()}
            self.res.set(key, c, cell=True)
            self._log_cell(key)
            self.fill_attacks(only=key)
            gc.collect()
        self.res.save()

    def pgd100(self, ratio):
        """The strong attack on the best compressed model at the headline ratio (once all its cells exist)."""
        import keras

        from atmc_tf.export import evaluate_deployment
        from atmc_tf.layers import strip_model
        from pipelines import stages
        if self.res.get("pgd100"):
            return
        keys = [R.cell_key(m, ratio) for m in self.b["methods"] if m != "da"]
        if not keys or not all(self.res.done(k) for k in keys):
            return
        cands = [self.res.cell(k) for k in keys if self.res.cell(k)["status"] == "done"]
        if not cands:
            return
        best = max(cands, key=lambda c: c["robust_acc"])
        key = R.cell_key(best["method"], ratio)
        logging.info("PGD-%d x %d on the best model %s", self.b["pgd100_steps"], self.b["pgd100_restarts"], key)
        t = time.time()
        plain = strip_model(keras.models.load_model(best["model_file"]))
        pcfg = dataclasses.replace(self.cfg, eval_pgd_steps=self.b["pgd100_steps"],
                                   eval_restarts=self.b["pgd100_restarts"])
        x_adv = stages.craft_adversarial(pcfg, plain, self.data.x_test, self.data.y_test)
        with open(best["tflite_file"], "rb") as fh:
            ev = evaluate_deployment(fh.read(), self.data.x_test, self.data.y_test, x_adv, keras_model=plain)
        self.res.set("pgd100", {
            "cell": key, "steps": self.b["pgd100_steps"], "restarts": self.b["pgd100_restarts"],
            "robust_acc": ev.keras_robust_acc, "tflite_robust_acc": ev.tflite_robust_acc,
            "robust_acc_eval": best["robust_acc"], "tflite_robust_acc_eval": best["tflite_robust_acc"],
            "seconds": time.time() - t})

    def timing(self):
        from benchmarks import bench_timing
        from pipelines import stages
        if not self.res.get("timing"):
            logging.info("timing: ATMC step vs bare PGD-AT step")
            out = bench_timing.step_time_ratio(
                self.da_plain, self.data.x_train, self.data.y_train, stages.train_attack(self.cfg),
                ratio=self._tune_ratio(), bits_list=(8, 4), quant_scheme=self.cfg.quant_scheme, rho=self.cfg.rho,
                quant_interval=self.cfg.quant_interval, clean_weight=self.cfg.clean_weight,
                batch_size=self.cfg.batch_size, steps=self.b["timing_steps"], rounds=self.b["timing_rounds"],
                make_optimizer=lambda: stages.make_optimizer(self.cfg, self.cfg.lr))
            out["op_determinism"] = bool(self.cfg.deterministic)
            self.res.set("timing", out)
            logging.info("timing: bare PGD-AT %.1f ms per step; ATMC-8 x%s, ATMC-4 x%s",
                         1000 * out["bare_step_s"], out.get("ratio_atmc8"), out.get("ratio_atmc4"))
            gc.collect()
        if not self.b["resnet"]:
            if not self.res.get("resnet50_cost"):
                self.res.set("resnet50_cost", {"skipped": "--noresnet" + (" (--quick)" if self.b["quick"] else "")})
        elif not self.res.get("resnet50_cost") or self.res.get("resnet50_cost").get("skipped"):
            logging.info("timing: ResNet-50-size projection and codebook fit")
            out = bench_timing.resnet50_cost(
                input_size=self.b["resnet_input"], batch=self.b["resnet_batch"], reps=self.b["resnet_reps"],
                ratio=self._tune_ratio(), quant_scheme=self.cfg.quant_scheme,
                quant_interval=self.cfg.quant_interval, eps=self.cfg.eps, pgd_steps=self.cfg.pgd_steps,
                pgd_step=self.b["resnet_pgd_step"], seed=self.cfg.seed, lr=self.cfg.lr)
            self.res.set("resnet50_cost", out)
            gc.collect()


# --- entry ----------------------------------------------------------------------------------------

def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --helpfull)")
    cfg, bench, docs = settings_from_flags()
    file = os.path.join(cfg.workdir, "results.json")
    if F.render_only:
        source = file if os.path.exists(file) else os.path.join(docs, R.RESULTS_COPY)
        if not os.path.exists(source):
            fail(f"neither {file} nor {source} exists: run the benchmark first (or point --workdir at its workdir)")
        md, png = R.render(Results(source, docs).data, docs)
        print(f"rendered {md} and {png} from {source}")
        return
    check_workdir(cfg.workdir)
    res = Results(file, docs)
    mine = identity(cfg, bench)
    meta = res.get("meta")
    if meta:
        diff = identity_diff(mine, meta.get("identity", {}))
        if diff:
            fail(f"--workdir={cfg.workdir} holds a benchmark made with other settings ({', '.join(diff)}); "
                 "use a new --workdir or the same flags to resume")
    else:
        meta = {"started": _now(), "identity": mine}
    meta.update({"command": command_line(), "argv": sys.argv, "quick": bool(bench["quick"]),
                 "versions": versions(), "machine": machine(), "dataset": cfg.dataset, "model": cfg.model,
                 "eps": cfg.eps, "workdir": cfg.workdir})
    meta.setdefault("commands", []).append({"at": _now(), "command": meta["command"]})
    res.set("meta", meta)
    if F.retime:
        old = {key: res.data.pop(key) for key in ("timing", "resnet50_cost") if key in res.data}
        if old:
            res.set("timing_history", res.get("timing_history", []) + [{"replaced": _now(), **old}])
    from atmc_tf.data import DataError
    t0 = time.time()
    run = Benchmark(cfg, bench, res)
    try:
        if F.remeasure_device_bytes:
            run.remeasure()
        elif F.reexport_activation_sparsity:
            run.reexport_sparsity()
        elif F.attacks_only:
            run.attack_cells()
        else:
            run.run()
    except (DataError, UsageError) as err:
        fail(str(err))
    for key, c in res["cells"].items():
        if c.get("status") == "done":
            print(f"benchmark: {key}: robust (.tflite) {c['tflite_robust_acc']:.4f}; LiteRT {c['tflite_bytes']} B, "
                  f"TFLM {c.get('tflm_bytes', 'n/a')} B (batch-1 uncompressed {c.get('tflm_b1_bytes', 'n/a')} B, "
                  f"{c.get('tflm_compressed_tensors', 'n/a')} kernels compressed: LUT or PRUNE)"
                  + (f"; device bytes failed: {c['tflm_error']}" if c.get("tflm_error") else ""))
    done = sum(1 for c in res["cells"].values() if c.get("status") == "done")
    print(f"benchmark: {done} cells done in {time.time() - t0:.0f} s; results {res.file}; "
          f"docs {os.path.join(docs, 'BENCHMARKS.md')}")
    if run.failed:
        for label, line in run.failed.items():
            print(f"benchmark: cell {label} FAILED: {line}", file=sys.stderr)
        print(f"benchmark: {len(run.failed)} cell(s) failed and are not recorded; the same command retries them",
              file=sys.stderr)
        sys.exit(1)


def entry():
    app.run(main, flags_parser=flags_def.parse_flags)


if __name__ == "__main__":
    entry()
