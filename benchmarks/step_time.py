"""Step time of one adversarial training step, atmc_tf vs PyTorch, interleaved (issue 22, part 1).

    tools/env.sh python -m benchmarks.step_time                       # 3 rounds x 10 steps
    tools/torch_env.sh true                                           # once: creates .venv-torch

The step (the same on every side): Caffe LeNet (atmc_tf.models "lenet"), 28x28x1 inputs, batch 128, L_inf
PGD-7 with a random start (eps 0.1, the project's step 2.5 * eps / 7), loss 0.5 clean CE + 0.5 adversarial
CE, SGD (lr 0.01) momentum 0.9, and a global top-k projection keeping 1% of the kernel weights after each
step. Data: uniform random images in [0, 1] and random labels of that shape (no data set is read); weights:
Glorot-uniform arrays drawn from one NumPy seed, written to an .npz both sides load.

Variants, each timed in its own fresh subprocess, every round (the order reversed on odd rounds, so TF and
PyTorch alternate):
- atmc: ATMCTrainer's compiled train_function, method al0 (global top-k every step), as
  benchmarks/bench_timing.py times it;
- bare: a hand-written tf.function step, no projection, PGD in tf.while_loop as atmc_tf's pgd();
- bare_unrolled: the same with the PGD loop unrolled in Python (7 copies in the graph);
- bare_t2x1: bare with tf.config.threading intra-op 2, inter-op 1;
- atmc_t2x1: atmc with the same thread settings;
- bare_xla: bare with jit_compile=True (measured only; atmc_tf keeps XLA off);
- bare_bf16, atmc_bf16: bare and atmc under Keras' mixed_bfloat16 policy (bfloat16 compute, float32
  weights; this CPU has avx512_bf16): step time only, the accuracy effect is not measured here;
- torch: benchmarks/step_time_torch.py in .venv-torch's python (eager, 2 threads); skipped, and said so
  on the page, when that python is absent.

Each subprocess warms up (--warmup steps), times --steps steps and prints JSON; a round's figure per variant
is the median step of that subprocess, the reported figure the median over rounds. Results go to --results
(JSON, resumable: a rerun with the same settings appends rounds until --rounds are there) and the page to
--page.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from pipelines import provenance

VARIANTS = ("atmc", "bare", "bare_unrolled", "bare_t2x1", "atmc_t2x1", "bare_xla", "bare_bf16", "atmc_bf16", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags, defined when it runs (not on import: tests import this module in a process that
    may also hold pipelines.flags_def, whose --eps, --lr, ... would then be defined twice)."""
    flags.DEFINE_string("results", "docs/step_time.json", "Results JSON (rounds are appended; a rerun continues).")
    flags.DEFINE_string("page", "docs/step_time.md", "Markdown page written from the results.")
    flags.DEFINE_integer("rounds", 3, "Rounds in total (a rerun adds the missing ones).")
    flags.DEFINE_integer("steps", 10, "Timed steps per variant per round.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, allocation).")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_list("variants", "atmc,bare,bare_unrolled,bare_t2x1,torch", f"Variants, of {VARIANTS}.")
    flags.DEFINE_string("torch_python", ".venv-torch/bin/python", "Python of the PyTorch environment.")
    flags.DEFINE_float("eps", 0.1, "L_inf radius.")
    flags.DEFINE_integer("pgd_steps", 7, "PGD steps.")
    flags.DEFINE_float("keep", 0.01, "Fraction of the kernel weights the top-k projection keeps.")
    flags.DEFINE_float("lr", 0.01, "SGD learning rate (momentum 0.9).")
    flags.DEFINE_integer("seed", 0, "NumPy seed of the weights and the data.")
    flags.DEFINE_string("note", None, "A line for the page (e.g. what else loaded the machine); kept in the results.")
    flags.DEFINE_string("worker", None, "Internal: run one TF variant and print JSON.")
    flags.DEFINE_string("npz", None, "Internal: the weights and data file of a worker.")


SHAPES = {"conv1": ((5, 5, 1, 20), 20), "conv2": ((5, 5, 20, 50), 50), "fc1": ((7 * 7 * 50, 500), 500),
          "logits": ((500, 10), 10)}


def kernel_count():
    return int(sum(np.prod(s) for s, _ in SHAPES.values()))


def make_inputs(path, batch, n_batches, seed):
    """Glorot-uniform kernels, zero biases, random images and labels: the arrays both sides start from."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (shape, out) in SHAPES.items():
        fan_in = int(np.prod(shape[:-1]))
        fan_out = shape[-1] * (int(np.prod(shape[:-2])) if len(shape) == 4 else 1)
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        arrays[f"{name}_kernel"] = rng.uniform(-lim, lim, shape).astype(np.float32)
        arrays[f"{name}_bias"] = np.zeros(out, np.float32)
    arrays["x"] = rng.random((batch * n_batches, 28, 28, 1), dtype=np.float32)
    arrays["y"] = rng.integers(0, 10, batch * n_batches).astype(np.int32)
    arrays["batch"] = np.int64(batch)
    np.savez(path, **arrays)


# ----------------------------------------------------------------------------- the TF worker
def tf_worker(variant, npz, steps, warmup, eps, pgd_steps, k, lr):
    import time
    import tensorflow as tf
    if variant.endswith("_t2x1"):
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from atmc_tf.attacks import PGDConfig
    from atmc_tf.models import build_model
    from atmc_tf.training import ATMCTrainer, method_config, wrap_for_method

    if variant.endswith("_bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    d = np.load(npz)
    batch = int(d["batch"])
    model = build_model("lenet", (28, 28, 1), 10, seed=0)
    model.set_weights([d[f"{n}_{p}"] for n in SHAPES for p in ("kernel", "bias")])
    xs, ys = d["x"], d["y"]
    n_batches = len(ys) // batch
    batches = [(tf.constant(xs[i * batch:(i + 1) * batch]), tf.constant(ys[i * batch:(i + 1) * batch]))
               for i in range(n_batches)]
    attack = PGDConfig(eps=eps, steps=pgd_steps)
    initial_loss = float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        batches[0][1], model(batches[0][0]), from_logits=True)))
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)

    if variant.startswith("atmc"):
        cfg = method_config("al0", attack=attack, nnz_budget=k, clean_weight=0.5, adv_weight=0.5)
        trainer = ATMCTrainer(wrap_for_method(model, cfg), cfg)
        trainer.compile(optimizer=optimizer)
        trainer.prepare_constraints()

        def step(xb, yb):
            return trainer.train_on_batch(xb, yb)
    else:
        unrolled = variant == "bare_unrolled"
        alpha = attack.alpha
        weights = model.trainable_variables
        xent = lambda y, logits: keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)

        def pgd_step(x, y, x_adv):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = tf.reduce_sum(xent(y, model(x_adv, training=True)))
            g = tape.gradient(loss, x_adv)
            return tf.clip_by_value(tf.clip_by_value(x_adv + alpha * tf.sign(g), x - eps, x + eps), 0.0, 1.0)

        def train(x, y):
            x_adv = tf.clip_by_value(x + tf.random.uniform(tf.shape(x), -eps, eps), 0.0, 1.0)
            if unrolled:
                for _ in range(pgd_steps):
                    x_adv = pgd_step(x, y, x_adv)
            else:
                _, x_adv = tf.while_loop(lambda i, _: i < pgd_steps, lambda i, xa: (i + 1, pgd_step(x, y, xa)),
                                         (tf.constant(0), x_adv))
            x_adv = tf.stop_gradient(x_adv)
            with tf.GradientTape() as tape:
                loss = 0.5 * tf.reduce_mean(xent(y, model(x, training=True))) + \
                    0.5 * tf.reduce_mean(xent(y, model(x_adv, training=True)))
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
            return loss

        step_fn = tf.function(train, jit_compile=variant == "bare_xla")

        def step(xb, yb):
            return float(step_fn(xb, yb))

    for i in range(warmup):
        step(*batches[i % n_batches])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(*batches[(warmup + i) % n_batches])
        times.append(time.perf_counter() - t0)
    return {"framework": "tf", "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "initial_clean_loss": initial_loss, "times_s": times, "median_s": statistics.median(times)}


# ----------------------------------------------------------------------------- the parent
def _fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _run_variant(variant, cfg, npz, torch_python):
    common = ["--npz", npz, "--steps", str(cfg["steps"]), "--warmup", str(cfg["warmup"])]
    if variant == "torch":
        cmd = [torch_python, os.path.join(ROOT, "benchmarks", "step_time_torch.py"), *common, "--threads", "2",
               "--eps", str(cfg["eps"]), "--alpha", str(cfg["alpha"]), "--pgd_steps", str(cfg["pgd_steps"]),
               "--k", str(cfg["k"]), "--lr", str(cfg["lr"])]
    else:
        cmd = [sys.executable, "-m", "benchmarks.step_time", f"--worker={variant}", f"--npz={npz}",
               f"--steps={cfg['steps']}", f"--warmup={cfg['warmup']}", f"--eps={cfg['eps']}",
               f"--pgd_steps={cfg['pgd_steps']}", f"--keep={cfg['keep']}", f"--lr={cfg['lr']}"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"variant {variant} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def make_config(variants, batch_size=128, steps=10, warmup=2, eps=0.1, pgd_steps=7, keep=0.01, lr=0.01, seed=0):
    k = int(round(keep * kernel_count()))
    return {"batch_size": batch_size, "steps": steps, "warmup": warmup, "eps": eps, "pgd_steps": pgd_steps,
            "alpha": 2.5 * eps / pgd_steps, "keep": keep, "k": k, "kernel_weights": kernel_count(), "lr": lr,
            "seed": seed, "variants": list(variants)}


def run(cfg, results_path, page_path, rounds, torch_python, command="python -m benchmarks.step_time",
        run_variant=None, note=None):
    """Adds rounds to results_path until there are `rounds`, then writes the page. run_variant(variant, cfg,
    npz, torch_python) -> the worker's dict; default: the variant's subprocess."""
    from atmc_tf.export import atomic
    run_variant = run_variant or _run_variant
    if os.path.exists(results_path):
        with open(results_path) as f:
            res = json.load(f)
        if res["config"] != cfg:
            _fail(f"{results_path} holds a run with other settings ({res['config']}); "
                  "pass another --results or the same flags")
    else:
        res = {"config": cfg, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpu": provenance.machine()["cpu_model"], "nproc": os.cpu_count(), "loadavg_at_start": _loadavg(),
                           "python": platform.python_version(), "platform": platform.platform()},
               "command": command, "rounds": []}
    if note:
        res["note"] = note
    torch_ok = os.path.exists(torch_python)
    res["torch_python"] = torch_python if torch_ok else None
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    fd, npz = tempfile.mkstemp(prefix="step_time_inputs_", suffix=".npz")
    os.close(fd)
    make_inputs(npz, cfg["batch_size"], max(1, cfg["warmup"] + cfg["steps"]), cfg["seed"])
    try:
        while len(res["rounds"]) < rounds:
            r = len(res["rounds"])
            order = cfg["variants"] if r % 2 == 0 else cfg["variants"][::-1]
            rnd = {"round": r, "loadavg": _loadavg(), "order": order, "results": {}}
            for v in order:
                if v == "torch" and not torch_ok:
                    continue
                rnd["results"][v] = run_variant(v, cfg, npz, torch_python)
                print(f"round {r} {v}: median {rnd['results'][v]['median_s']:.4f} s/step", flush=True)
            res["rounds"].append(rnd)
            atomic.write_text_atomic(results_path, json.dumps(res, indent=1))  # a kill keeps the last round
    finally:
        os.remove(npz)
    with open(page_path, "w") as f:
        f.write(render(res, os.path.relpath(results_path, os.path.dirname(os.path.abspath(page_path)))))
    return res


def medians(res):
    per = {}
    for rnd in res["rounds"]:
        for v, out in rnd["results"].items():
            per.setdefault(v, []).append(out["median_s"])
    return {v: statistics.median(ts) for v, ts in per.items()}


def render(res, results_name):
    cfg, m = res["config"], res["machine"]
    med = medians(res)
    versions = {}
    for rnd in res["rounds"]:
        for out in rnd["results"].values():
            for key in ("tensorflow", "keras", "numpy", "torch"):
                if key in out:
                    versions[key if out["framework"] == "tf" or key != "numpy" else "numpy (torch env)"] = out[key]
    variants = [v for v in cfg["variants"] if v in med]
    L = ["# Step time: atmc_tf vs PyTorch (issue 22, part 1)", "",
         "Written by `benchmarks/step_time.py` from "
         f"[{results_name}]({results_name}); do not edit by hand.", "",
         f"Command: `{res['command']}`  ",
         f"Started: {res['started']}  ",
         f"Machine: {m['cpu']}, nproc {m['nproc']}, load average at start {m['loadavg_at_start']}, "
         f"Python {m['python']}, {m['platform']}  ",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), ""]
    if res.get("note"):
        L += [f"**Note:** {res['note']}", ""]
    L += [
         f"The step: Caffe LeNet ({cfg['kernel_weights']:,} kernel weights), 28x28x1 random inputs in [0, 1] and "
         f"random labels (seed {cfg['seed']}, no data set), batch {cfg['batch_size']}, L_inf PGD-{cfg['pgd_steps']} "
         f"with random start (eps {cfg['eps']}, step {cfg['alpha']:.4f}), loss 0.5 clean CE + 0.5 adversarial CE, "
         f"SGD lr {cfg['lr']} momentum 0.9; atmc and torch also project onto the global top-{cfg['k']:,} "
         f"({cfg['keep']:.0%}) kernel weights after each step. Same initial weights (one NumPy seed) on every "
         f"side. {cfg['warmup']} warm-up + {cfg['steps']} timed steps per variant per round, each variant in a "
         "fresh subprocess, the order reversed every other round; a round's figure is the median step, the "
         "reported one the median over rounds.", ""]
    if res.get("torch_python") is None and "torch" in cfg["variants"]:
        L += ["**PyTorch was not run**: its environment's python was absent (create it with "
              "`tools/torch_env.sh true`), so there is no ratio to PyTorch below.", ""]
    L += ["Variants: atmc = ATMCTrainer's compiled train_function (method al0); bare = hand-written "
          "tf.function step without projection, PGD in tf.while_loop; bare_unrolled = PGD loop unrolled in "
          "Python; *_t2x1 = tf.config.threading intra-op 2, inter-op 1; bare_xla = jit_compile=True "
          "(measured only); *_bf16 = Keras mixed_bfloat16 policy (step time only); torch = PyTorch eager, 2 threads, no torch.compile.", ""]
    L += ["| round | load avg | " + " | ".join(f"{v} (s)" for v in variants) + " |",
          "|---|---|" + "---|" * len(variants)]
    for rnd in res["rounds"]:
        L.append(f"| {rnd['round']} | {rnd['loadavg']} | " + " | ".join(
            f"{rnd['results'][v]['median_s']:.4f}" if v in rnd["results"] else "-" for v in variants) + " |")
    L += ["", "| variant | median s/step | / bare | / torch |", "|---|---|---|---|"]
    for v in variants:
        vs_bare = f"{med[v] / med['bare']:.3f}" if "bare" in med else "-"
        vs_torch = f"{med[v] / med['torch']:.3f}" if "torch" in med else "not run"
        L.append(f"| {v} | {med[v]:.4f} | {vs_bare} | {vs_torch} |")
    if "atmc" in med and "torch" in med:
        ratio = med["atmc"] / med["torch"]
        L += ["", f"Target (issue 22): atmc_tf's step <= 1.0x PyTorch's on this machine: "
              f"**{'MET' if ratio <= 1.0 else 'NOT MET'}**, atmc / torch = {ratio:.3f} (medians over "
              f"{len(res['rounds'])} rounds)."]
    losses = {v: res["rounds"][0]["results"][v]["initial_clean_loss"] for v in res["rounds"][0]["results"]}
    L += ["", "Clean loss of the initial weights on the first batch (same function on every side): " +
          ", ".join(f"{v} {l:.5f}" for v, l in losses.items()) + ".", ""]
    return "\n".join(L)


def main(argv):
    del argv
    if FLAGS.worker is not None:
        if FLAGS.worker not in VARIANTS or FLAGS.worker == "torch" or not FLAGS.npz:
            _fail(f"--worker={FLAGS.worker} needs --npz and one of {VARIANTS[:-1]}")
        k = int(round(FLAGS.keep * kernel_count()))
        print(json.dumps(tf_worker(FLAGS.worker, FLAGS.npz, FLAGS.steps, FLAGS.warmup, FLAGS.eps,
                                   FLAGS.pgd_steps, k, FLAGS.lr)))
        return
    bad = [v for v in FLAGS.variants if v not in VARIANTS]
    if bad or not FLAGS.variants:
        _fail(f"--variants has {bad or 'nothing'}; choose from {','.join(VARIANTS)}")
    for name in ("rounds", "steps", "batch_size"):
        if getattr(FLAGS, name) < 1:
            _fail(f"--{name} must be >= 1; pass a positive integer")
    if FLAGS.warmup < 0 or not 0 < FLAGS.keep <= 1:
        _fail("--warmup must be >= 0 and --keep in (0, 1]; fix the flag")
    torch_python = FLAGS.torch_python
    if not os.path.isabs(torch_python):
        torch_python = os.path.join(ROOT, torch_python)
    cfg = make_config(FLAGS.variants, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup, FLAGS.eps, FLAGS.pgd_steps,
                      FLAGS.keep, FLAGS.lr, FLAGS.seed)
    run(cfg, FLAGS.results, FLAGS.page, FLAGS.rounds, torch_python,
        command=" ".join(["python -m benchmarks.step_time"] + sys.argv[1:]), note=FLAGS.note)


if __name__ == "__main__":
    define_flags()
    app.run(main)
