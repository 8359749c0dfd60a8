"""PyTorch side of benchmarks/step_time.py: times the adversarial training step, prints one JSON line.

Runs only in .venv-torch (tools/torch_env.sh), as a subprocess of benchmarks/step_time.py; atmc_tf never
imports torch. Standalone on purpose (argparse, NumPy, torch; nothing from the project).

The step, the same as the TF side's: Caffe LeNet (conv 20@5x5 same, ReLU, max-pool 2, conv 50@5x5 same,
ReLU, max-pool 2, flatten in NHWC order as Keras does, dense 500, ReLU, dense 10), L_inf PGD with a uniform
random start (the model in training mode, no BN or dropout so it does not matter), loss 0.5 clean CE + 0.5
adversarial CE, SGD momentum 0.9, then a global top-k projection of the kernels (biases untouched). Eager,
no torch.compile. Weights and batches come from the .npz the parent wrote, in Keras layout.
"""
import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--npz", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--pgd_steps", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = np.load(a.npz)
    # Keras layouts -> torch: conv HWIO -> OIHW, dense (in, out) -> (out, in).
    params = {
        "conv1.w": d["conv1_kernel"].transpose(3, 2, 0, 1), "conv1.b": d["conv1_bias"],
        "conv2.w": d["conv2_kernel"].transpose(3, 2, 0, 1), "conv2.b": d["conv2_bias"],
        "fc1.w": d["fc1_kernel"].T, "fc1.b": d["fc1_bias"],
        "logits.w": d["logits_kernel"].T, "logits.b": d["logits_bias"],
    }
    P = {k: torch.tensor(np.ascontiguousarray(v), requires_grad=True) for k, v in params.items()}
    kernels = [P["conv1.w"], P["conv2.w"], P["fc1.w"], P["logits.w"]]

    def net(x):
        x = F.max_pool2d(F.relu(F.conv2d(x, P["conv1.w"], P["conv1.b"], padding=2)), 2)
        x = F.max_pool2d(F.relu(F.conv2d(x, P["conv2.w"], P["conv2.b"], padding=2)), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)  # Keras' Flatten order (NHWC), so the same fc1 kernel fits
        x = F.relu(F.linear(x, P["fc1.w"], P["fc1.b"]))
        return F.linear(x, P["logits.w"], P["logits.b"])

    opt = torch.optim.SGD(list(P.values()), lr=a.lr, momentum=0.9)
    xs = torch.tensor(d["x"]).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    ys = torch.tensor(d["y"]).long()
    batch = int(d["batch"])
    n_batches = len(ys) // batch

    def pgd(x, y):
        x_adv = (x + torch.empty_like(x).uniform_(-a.eps, a.eps)).clamp(0, 1)
        for _ in range(a.pgd_steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(net(x_adv), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + a.alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - a.eps), x + a.eps).clamp(0, 1)
        return x_adv.detach()

    def step(i):
        j = i % n_batches
        x, y = xs[j * batch:(j + 1) * batch], ys[j * batch:(j + 1) * batch]
        x_adv = pgd(x, y)
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * F.cross_entropy(net(x), y) + 0.5 * F.cross_entropy(net(x_adv), y)
        loss.backward()
        opt.step()
        with torch.no_grad():  # global top-k: keep the k largest |w| over all kernels
            flat = torch.cat([w.reshape(-1).abs() for w in kernels])
            thr = torch.topk(flat, a.k, sorted=False).values.min()
            for w in kernels:
                w.mul_((w.abs() >= thr).to(w.dtype))
        return float(loss)

    with torch.no_grad():
        x0, y0 = xs[:batch], ys[:batch]
        initial_loss = float(F.cross_entropy(net(x0), y0))
    for i in range(a.warmup):
        step(i)
    times, losses = [], []
    for i in range(a.steps):
        t0 = time.perf_counter()
        losses.append(step(a.warmup + i))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"framework": "torch", "torch": torch.__version__, "numpy": np.__version__,
                      "threads": torch.get_num_threads(), "initial_clean_loss": initial_loss,
                      "last_loss": losses[-1], "times_s": times, "median_s": statistics.median(times)}))


if __name__ == "__main__":
    main()
