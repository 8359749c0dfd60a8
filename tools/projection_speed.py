"""Speed of the global L0 projection, side by side in one process; writes docs/PROJECTION_SPEED.md.

    tools/env.sh python tools/projection_speed.py [--baseline_rev=105456b] [--out=docs/PROJECTION_SPEED.md]

For each weight set (LeNet-size: the benchmark CNN's four kernels, 1.26M weights; optionally
ResNet-50-size: its 54 kernels, 25.5M) and budget k it times, as tf.functions, in alternating
rounds (median):
- project_l0: the cold projection (top_k over all magnitudes);
- project_l0_hinted: warm-started from the previous threshold, as the trainer calls it after
  every step. The weights are first projected, then moved by one "step": Gaussian noise of
  --step_std times the threshold on every entry, pruned ones included.
With --baseline_rev the same two functions from atmc_tf/constraints/sparsity.py at that git
revision are timed in the same rounds, and the results are checked to be identical.
The weights are random (Laplace, per-kernel scale 1/sqrt(fan_in)): only the sizes matter here.
"""
import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

LENET = [(5, 5, 1, 20), (5, 5, 20, 50), (2450, 500), (500, 10)]


def resnet50_shapes():
    import keras
    from atmc_tf.training import compressible_layers
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000)
    return [tuple(l.kernel.shape) for l in compressible_layers(model)]


def module_at(rev):
    src = subprocess.run(["git", "-C", REPO, "show", f"{rev}:atmc_tf/constraints/sparsity.py"], check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"sparsity_{rev}.py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(f"sparsity_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            return next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "?")
    except OSError:
        return platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline_rev", default=None, help="git revision whose sparsity.py is timed alongside")
    ap.add_argument("--k_fractions", default="0.01,0.04,0.08", help="budgets k as fractions of the weights "
                    "(about AP, ATMC-8 and ATMC-4 at size ratio 0.01)")
    ap.add_argument("--resnet", action="store_true", help="also the ResNet-50-size weight set (slow)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--step_std", type=float, default=0.05)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "PROJECTION_SPEED.md"))
    args = ap.parse_args()

    import tensorflow as tf
    from atmc_tf.constraints import sparsity as current
    from atmc_tf.export.atomic import write_text_atomic
    impls = {"current": current}
    if args.baseline_rev:
        impls[args.baseline_rev] = module_at(args.baseline_rev)
    sets = {"LeNet-size": LENET}
    if args.resnet:
        sets["ResNet-50-size"] = resnet50_shapes()
    rng = np.random.default_rng(0)
    rows = []
    for set_name, shapes in sets.items():
        weights = [tf.constant(rng.laplace(0, 1 / np.sqrt(np.prod(s[:-1])), s).astype(np.float32)) for s in shapes]
        n = sum(int(np.prod(s)) for s in shapes)
        for frac in [float(r) for r in args.k_fractions.split(",")]:
            k = int(frac * n)
            projected, kth = current.project_l0_hinted(weights, k, 0.0)
            moved = [p + tf.constant(rng.normal(0, args.step_std * float(kth), p.shape).astype(np.float32))
                     for p in projected]
            fns = {}
            for name, mod in impls.items():
                fns[(name, "cold")] = tf.function(lambda vs, mod=mod, k=k: mod.project_l0(vs, k))
                fns[(name, "warm")] = tf.function(lambda vs, h, mod=mod, k=k: mod.project_l0_hinted(vs, k, h)[0])
            calls = {key: (lambda f=f, key=key: [t.numpy() for t in (f(moved) if key[1] == "cold" else f(moved, kth))])
                     for key, f in fns.items()}
            outs = {key: call() for key, call in calls.items()}  # also the warm-up (tracing)
            ref = outs[("current", "cold")]
            identical = all(all(np.array_equal(a, b) for a, b in zip(o, ref)) for o in outs.values())
            times = {key: [] for key in calls}
            for r in range(args.rounds):
                for key in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        calls[key]()
                        times[key].append(time.perf_counter() - t0)
            med = {key: statistics.median(v) for key, v in times.items()}
            cand = int(sum(int(tf.reduce_sum(tf.cast(tf.abs(m) >= 0.5 * kth, tf.int32))) for m in moved))
            rows.append((set_name, n, k, cand, med, identical))
            print(set_name, n, k, {f"{a}/{b}": round(1000 * v, 1) for (a, b), v in med.items()}, "identical",
                  identical, flush=True)

    names = list(impls)
    head = ["weight set", "weights", "k", "candidates (warm)"] + \
           [f"{name} {kind} (ms)" for name in names for kind in ("cold", "warm")]
    if len(names) > 1:
        head += [f"warm: {names[1]} / current", f"cold: {names[1]} / current"]
    head += ["identical results"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for set_name, n, k, cand, med, identical in rows:
        cells = [set_name, f"{n:,}", f"{k:,}", f"{cand:,}"] + \
                [f"{1000 * med[(name, kind)]:.1f}" for name in names for kind in ("cold", "warm")]
        if len(names) > 1:
            cells += [f"{med[(names[1], 'warm')] / med[('current', 'warm')]:.2f}x",
                      f"{med[(names[1], 'cold')] / med[('current', 'cold')]:.2f}x"]
        cells.append("yes" if identical else "NO")
        lines.append("| " + " | ".join(cells) + " |")
    cmd = "tools/env.sh python tools/projection_speed.py " + " ".join(sys.argv[1:])
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = "?"
    md = "\n".join([
        "# Speed of the global L0 projection", "",
        f"Made by `{cmd.strip()}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"tensorflow {tf.__version__}, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"load average at the end {load}.", "",
        "Median of " + f"{args.rounds} alternating rounds x {args.reps} calls, each a tf.function on CPU. "
        "cold: `project_l0` (top_k over all magnitudes); warm: `project_l0_hinted` from the previous "
        f"threshold after one step (noise of {args.step_std} x threshold on every entry), as the "
        "trainer calls it after every step. Candidates: entries at or above half the old threshold.", "",
        *lines, ""])
    write_text_atomic(args.out, md)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
