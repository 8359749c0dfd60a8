"""GAN Slimming: the L1 proximal step, the channel budget, surgery of a generator, the GS train step,
the pipeline's flags and (slow) a tiny digits run of pipelines.gan."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from atmc_tf import gan
from atmc_tf.constraints import (BNChannelL1Prox, GroupL0, budget_masks, constraint_from_config, constraint_to_config,
                                 mac_masks)
from atmc_tf.constraints.l1_prox import group_soft_threshold, soft_threshold
from atmc_tf.constraints.quantize import quantize_uniform_int8
from atmc_tf.export.surgery import count_macs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
floats = st.floats(-10, 10, allow_nan=False, width=32)


def _objective(x, v, t):
    return 0.5 * (x - v) ** 2 + t * np.abs(x)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 20), elements=floats), st.floats(0, 5, width=32))
def test_soft_threshold_is_the_prox_of_l1(v, t):
    x = soft_threshold(v, t).numpy()
    # closed form and optimality: 0 in (x - v) + t * d|x|
    np.testing.assert_allclose(x, np.sign(v) * np.maximum(np.abs(v) - t, 0), rtol=0, atol=1e-6)
    zero = np.abs(v) <= t
    assert np.all(x[zero] == 0)
    np.testing.assert_allclose((v - x)[~zero], t * np.sign(x[~zero]), atol=1e-5)
    # brute force: no point of a fine grid (around v, and 0) has a lower objective, per entry
    grid = np.concatenate([np.linspace(-12, 12, 4801), [0.0]])
    best = _objective(grid[None, :], v[:, None].astype(np.float64), t).min(axis=1)
    assert np.all(_objective(x.astype(np.float64), v, t) <= best + 1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 8), elements=floats), min_size=1, max_size=4),
       st.integers(1, 30), st.floats(0, 1, width=32))
def test_prox_constraint_keeps_the_budget_and_silences_betas(gammas, budget, threshold):
    prox = BNChannelL1Prox(threshold=threshold, budget=budget)
    values = [tf.constant(t) for g in gammas for t in (g, np.ones_like(g))]
    prox.build(values, None)
    out = [t.numpy() for t in prox.project(values, 0, None)]
    new_g, new_b = out[0::2], out[1::2]
    assert sum(np.count_nonzero(g) for g in new_g) <= budget
    for g0, g, b in zip(gammas, new_g, new_b):
        assert np.all(b[g == 0] == 0) and np.all(b[g != 0] == 1)
        kept = g != 0
        np.testing.assert_allclose(g[kept], soft_threshold(g0, threshold).numpy()[kept], atol=1e-6)
        # each tensor keeps its largest channel when the budget covers one per tensor
        if budget >= len(gammas) and np.abs(soft_threshold(g0, threshold).numpy()).max() > 0:
            assert kept.any()
    assert constraint_from_config(constraint_to_config(prox)) == prox


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.floats(0, 2, width=32), st.integers(0, 2**31 - 1))
def test_group_soft_threshold_is_the_prox_of_the_group_norm(group, channels, t, seed):
    """P gammas per channel (entry p*C + c): the prox of t*sqrt(P)*sum_c ||g_c||_2, checked against its closed
    form's optimality (the objective is convex: no random nearby point is lower); P = 1 is the L1 prox."""
    v = np.random.default_rng(seed).normal(0, 1, group * channels).astype(np.float32)
    x = group_soft_threshold(tf.constant(v), t, group).numpy().astype(np.float64)

    def objective(z):
        zc = z.reshape(group, channels)
        return 0.5 * np.sum((z - v) ** 2) + t * np.sqrt(group) * np.sum(np.linalg.norm(zc, axis=0))
    rng = np.random.default_rng(seed + 1)
    for _ in range(200):
        z = x + rng.normal(0, rng.choice([1e-3, 1e-1, 1.0]), x.shape)
        if rng.random() < 0.3:  # also points with whole channels at 0
            z.reshape(group, channels)[:, rng.integers(0, channels)] = 0.0
        assert objective(x) <= objective(z) + 1e-5
    if group == 1:
        np.testing.assert_allclose(x, soft_threshold(v, t).numpy(), atol=1e-6)
    rms = np.sqrt(np.mean(v.reshape(group, channels).astype(np.float64) ** 2, axis=0))
    clear = np.abs(rms - t) > 1e-5  # (float32 against float64 at the threshold itself)
    np.testing.assert_array_equal(np.all(x.reshape(group, channels) == 0, axis=0)[clear], (rms <= t)[clear])


def test_prox_with_groups_counts_channels_and_zeroes_whole_groups():
    """A BN of every unit of a Dense reshaped into 3 channels (2 positions each) beside a conv's BN of 4: the
    budget keeps 3 channels in all, a kept group keeps all its gammas, a cut one loses its betas too."""
    dense_g = tf.constant([1.0, 0.1, 2.0, 1.0, 0.1, 2.0])  # channel scales (rms) 1, 0.1, 2
    conv_g = tf.constant([0.5, 3.0, 0.2, 1.0])
    values = [dense_g, tf.ones(6), conv_g, tf.ones(4)]
    prox = BNChannelL1Prox(threshold=0.0, budget=3, groups=[2, 1])
    prox.build(values, None)
    assert prox.full_budget() == 7
    out = [t.numpy() for t in prox.project(values, 0, None)]
    # normalised scores: dense 0.5, 0.05, 1(+top); conv 1/6, 1(+top), 1/15, 1/3 -> the two tops, then dense ch 0
    assert out[0].tolist() == [1.0, 0.0, 2.0, 1.0, 0.0, 2.0] and out[1].tolist() == [1, 0, 1, 1, 0, 1]
    assert out[2].tolist() == [0.0, 3.0, 0.0, 0.0] and out[3].tolist() == [0, 1, 0, 0]
    assert int(prox.metrics(out)["live_channels"]) == 3
    assert constraint_from_config(constraint_to_config(prox)) == prox
    with pytest.raises(ValueError, match="groups must give one size per gamma tensor"):
        BNChannelL1Prox(threshold=0.0, groups=[4, 1]).build(values, None)


def test_budget_masks_normalise_per_tensor():
    # raw magnitude would keep only the big tensor; normalised, each keeps its largest
    masks = budget_masks([tf.constant([100.0, 90.0, 80.0]), tf.constant([0.1, 0.01])], 2)
    assert [m.numpy().tolist() for m in masks] == [[1, 0, 0], [1, 0]]


def test_budget_masks_floor_ranks_each_tensors_largest_first():
    scales = [tf.constant([100.0, 90.0, 80.0, 0.0]), tf.constant([0.1, 0.01, 0.0])]
    # normalised: 1, .9, .8 | 1, .1: without a floor the big tensor's second and third beat the small one's second
    assert [m.numpy().tolist() for m in budget_masks(scales, 4)] == [[1, 1, 1, 0], [1, 0, 0]]
    assert [m.numpy().tolist() for m in budget_masks(scales, 4, floor=2)] == [[1, 1, 0, 0], [1, 1, 0]]
    # below floor * tensors the floor channels compete among themselves by the same normalised score
    assert [m.numpy().tolist() for m in budget_masks(scales, 3, floor=2)] == [[1, 1, 0, 0], [1, 0, 0]]
    # zeros are never kept, floor or not (the small tensor has two nonzero channels)
    assert [m.numpy().tolist() for m in budget_masks(scales, 7, floor=3)] == [[1, 1, 1, 0], [1, 1, 0]]
    with pytest.raises(ValueError, match="floor must be"):
        budget_masks(scales, 3, floor=0)
    with pytest.raises(ValueError, match="floor must be"):
        BNChannelL1Prox(threshold=0.0, floor=1.5)
    prox = BNChannelL1Prox(threshold=0.0, budget=3, floor=2)
    assert constraint_from_config(constraint_to_config(prox)) == prox and prox.get_config()["floor"] == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 8), elements=floats), min_size=1, max_size=4),
       st.integers(1, 4), st.data())
def test_budget_masks_floor_holds_when_the_budget_does(gammas, floor, data):
    """At any budget: the kept channels are min(budget, nonzeros); at budget >= floor * tensors every
    tensor keeps at least min(floor, its nonzeros); floor 1 is the rule without a floor."""
    scales = [tf.constant(g) for g in gammas]
    nonzero = [int(np.count_nonzero(g)) for g in gammas]
    budget = data.draw(st.integers(0, sum(len(g) for g in gammas)))
    kept = [int(np.count_nonzero(m.numpy())) for m in budget_masks(scales, budget, floor=floor)]
    assert sum(kept) == min(budget, sum(nonzero)) and all(k <= n for k, n in zip(kept, nonzero))
    if budget >= floor * len(gammas):
        assert all(k >= min(floor, n) for k, n in zip(kept, nonzero))


def _macs(ks, linear, pairs, constant):
    return constant + sum(v * k for v, k in zip(linear, ks)) + sum(w * ks[i] * ks[j] for i, j, w in pairs)


@settings(max_examples=60, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 8), elements=floats), min_size=1, max_size=4), st.data())
def test_mac_masks_keep_the_longest_prefix_of_the_ranking_that_fits(gammas, data):
    """mac_masks = budget_masks at the largest channel count whose MACs (the bilinear model) fit."""
    n = len(gammas)
    # MAC coefficients: TensorFlow flushes float64 subnormals to zero on this CPU (FTZ), so none are drawn
    coef = st.floats(0, 50, allow_nan=False, allow_subnormal=False)
    linear = data.draw(st.lists(coef, min_size=n, max_size=n))
    pairs = [(i, i + 1, data.draw(coef)) for i in range(n - 1) if data.draw(st.booleans())]
    constant = data.draw(coef)
    total = sum(len(g) for g in gammas)
    budget = data.draw(st.floats(0, _macs([len(g) for g in gammas], linear, pairs, constant) * 1.2 + 1,
                                 allow_subnormal=False))
    floor = data.draw(st.integers(1, 3))
    scales = [tf.constant(g) for g in gammas]
    got = [m.numpy() for m in mac_masks(scales, budget, linear, pairs, constant, floor=floor)]
    counts = lambda ms: [int(np.count_nonzero(m)) for m in ms]  # noqa: E731
    assert _macs(counts(got), linear, pairs, constant) <= budget or not any(counts(got))
    best = max((k for k in range(total + 1) if _macs(counts([m.numpy() for m in budget_masks(scales, k, floor)]),
                                                     linear, pairs, constant) <= budget),
               default=0)
    # the same channels budget_masks keeps at that count (the ranking ends in zeros, which neither keeps)
    want = [m.numpy() for m in budget_masks(scales, best, floor)] if best else [np.zeros_like(g) for g in gammas]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _kill(bn, group, dead):
    """Zero the gammas and betas of `dead` channels of a BN whose channel c is its entries p*C + c."""
    g, b, m, v = bn.get_weights()
    units = np.isin(np.arange(len(g)) % (len(g) // group), dead)
    g[units], b[units] = 0.0, 0.0
    bn.set_weights([g, b, m, v])
    return len(g) // group - len(dead)


@pytest.mark.parametrize("dataset,dense", [("digits", False), ("digits", True), ("fashion_mnist", True)])
def test_channel_mac_model_is_exact_for_a_cut_generator(dataset, dense):
    """dense: the project Dense's channels (groups of s*s gammas of its BN) are pruned too."""
    gen = gan.generator(dataset, z_dim=4, width=4, seed=0)
    _randomize_bn(gen)
    side = {"digits": 4, "fashion_mnist": 7}[dataset]
    convs = len(gan.prunable_bns(gen))
    assert gan.channel_groups(gen, dense) == [side * side] * dense + [1] * convs
    linear, pairs, constant = gan.channel_mac_model(gen, dense)
    assert len(linear) == convs + dense
    assert _macs([n for _, n in gan.live_channels(gen, dense).values()], linear, pairs, constant) == count_macs(gen)
    rng = np.random.default_rng(0)
    for _ in range(2):
        copy = keras.models.clone_model(gen)
        copy.set_weights(gen.get_weights())
        ks = []
        for (_, bn), group in zip(gan.prunable_bns(copy, dense), gan.channel_groups(copy, dense)):
            c = int(bn.gamma.shape[0]) // group
            ks.append(_kill(bn, group, rng.choice(c, rng.integers(0, c), replace=False)))  # one channel stays
        assert [k for k, _ in gan.live_channels(copy, dense).values()] == ks
        assert gan.cut_generator(copy)[1]["macs_after"] == _macs(ks, linear, pairs, constant)


def test_prox_with_a_mac_budget_keeps_the_macs_and_round_trips():
    gen = gan.generator("fashion_mnist", z_dim=4, width=8, seed=0)
    _randomize_bn(gen)
    model = gan.channel_mac_model(gen, dense=True)
    budget = count_macs(gen) / 8
    prox = BNChannelL1Prox(threshold=0.0, budget=budget, mac_model=model)
    prox.groups = gan.channel_groups(gen, dense=True)
    pairs = gan.prunable_bns(gen, dense=True)
    values = [v for _, bn in pairs for v in (bn.gamma.value, bn.beta.value)]
    prox.build(values, None)
    assert prox.full_budget() == count_macs(gen)
    out = prox.project(values, 0, None)
    ks = [int(np.count_nonzero(np.any(g.numpy().reshape(p, -1) != 0, axis=0)))
          for g, p in zip(out[0::2], prox.groups)]
    assert all(ks) and _macs(ks, *model) <= budget
    assert constraint_from_config(constraint_to_config(prox)) == prox
    with pytest.raises(ValueError, match="mac_model must describe"):
        BNChannelL1Prox(threshold=0.0, budget=budget, mac_model=(model[0][:1], [], 0.0)).build(values, None)


def _randomize_bn(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c), rng.normal(0, 1, c),
                               rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)])


@pytest.mark.parametrize("dataset", ["digits", "fashion_mnist"])
def test_cut_generator_equals_the_masked_generator(dataset):
    """Half the channels of every prunable BN silenced, the project Dense's among them: all are cut."""
    gen = gan.generator(dataset, z_dim=4, width=4, seed=0)
    _randomize_bn(gen)
    rng = np.random.default_rng(0)
    channels = [n for _, n in gan.live_channels(gen, dense=True).values()]
    for (_, bn), group, c in zip(gan.prunable_bns(gen, True), gan.channel_groups(gen, True), channels):
        _kill(bn, group, rng.choice(c, c // 2, replace=False))
    small, facts = gan.cut_generator(gen)
    codes = rng.normal(size=(16, 14)).astype(np.float32)
    np.testing.assert_allclose(small.predict(codes, verbose=0), gen.predict(codes, verbose=0), atol=1e-5)
    assert facts["silent_channels"] == sum(c // 2 for c in channels)
    assert facts["params_after"] < facts["params_before"]
    assert count_macs(small) == facts["macs_after"] < facts["macs_before"] == count_macs(gen)
    assert any(isinstance(layer, keras.layers.UpSampling2D) for layer in small.layers)
    pairs = gan.prunable_bns(gen, dense=True)
    assert isinstance(pairs[0][0], keras.layers.Dense)  # the project Dense's channels are pruned too
    assert [n for _, n in gan.live_channels(small, dense=True).values()] == [c - c // 2 for c in channels]
    for (layer, bn), group, c in zip(pairs, gan.channel_groups(gen, dense=True), channels):
        # every silenced channel is cut, also those read through UpSampling2D and the Reshape
        out = small.get_layer(layer.name)
        assert (out.units if isinstance(out, keras.layers.Dense) else out.filters) == group * (c - c // 2)
        assert small.get_layer(bn.name).gamma.shape[0] == group * (c - c // 2)


def _distill_mse(student, teacher, codes):
    return float(np.mean((student(codes, training=True).numpy() - teacher(codes, training=False).numpy()) ** 2))


@pytest.mark.parametrize("sparsity", ["l1_prox", "group_l0"])
def test_gs_step_lowers_distillation_and_keeps_the_budget(sparsity):
    keras.utils.set_random_seed(0)
    teacher = gan.generator("digits", z_dim=4, width=4, seed=0)
    student = gan.generator("digits", z_dim=4, width=4, seed=1)  # far from the teacher on purpose
    disc = gan.discriminator((8, 8, 1), width=4, seed=0)
    dense = sparsity == "l1_prox"  # the prox may prune the project Dense's channels; GroupL0 the Conv2D ones only
    pruned = gan.prunable_bns(student, dense=dense)
    total = sum(gan.live_channels(student, dense)[bn.name][1] for _, bn in pruned)
    kw = ({"prox": BNChannelL1Prox(threshold=1e-3, budget=total // 3)} if sparsity == "l1_prox" else
          {"kernel_constraint": GroupL0(total // 3, scoring="lamp", ramp_steps=5)})
    trainer = gan.GANTrainer(student, disc, 10, 4, teacher=teacher, distill_weight=100.0, ramp_steps=5, bits=4,
                             prune_dense=dense, **kw)
    trainer.compile(keras.optimizers.Adam(1e-2, 0.5), keras.optimizers.Adam(1e-3, 0.5))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (128, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 128)
    codes, _ = gan.sample_codes(64, 4, 10, seed=3)
    before = _distill_mse(student, teacher, codes)
    trainer.fit(x, y, batch_size=32, epochs=4, verbose=0)
    trainer.finalize()
    assert _distill_mse(student, teacher, codes) < 0.5 * before
    live = gan.live_channels(student, dense)
    assert sum(live[bn.name][0] for _, bn in pruned) <= total // 3
    small, facts = gan.cut_generator(student)  # every channel the budget dropped is cut
    assert sum(gan.live_channels(small, dense)[bn.name][1] for _, bn in pruned) <= total // 3
    for layer in student.layers:  # finalize leaves every kernel on the 4-bit per-channel lattice
        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense):
            k = layer.kernel.numpy()
            np.testing.assert_array_equal(quantize_uniform_int8(k, 4)[0].numpy(), k)


def _run(*args, timeout=600, env_extra=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipelines.gan", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("flag", ["--channel_budget=0", "--bits=9", "--sparsity=foo",
                                  "--dataset=cifar", "--distill_weight=-1", "--mac_budget=0", "--mac_budget=1.5",
                                  "--mac_budget=0.2 --channel_budget=0.5", "--mac_budget=0.2 --sparsity=group_l0",
                                  "--finetune_epochs=-1", "--prune_project --sparsity=group_l0", "--min_channels=0",
                                  "--min_channels=2 --sparsity=group_l0"])
def test_bad_flags_one_line_exit_2(flag, tmp_path):
    r = _run(*flag.split(), f"--workdir={tmp_path}")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


TINY = ["--teacher_epochs=3", "--student_epochs=3", "--classifier_epochs=2", "--width=8", "--eval_samples=60",
        "--z_dim=8", "--bits=4", "--finetune_epochs=0"]


@pytest.mark.slow
def test_tiny_digits_pipeline_runs_and_resumes(tmp_path):
    from atmc_tf.export.tflite import LiteRTModel
    # the project Dense's channels pruned too (grouped prox, surgery through the Reshape), then one epoch of
    # fine-tuning the cut student
    args = [f"--workdir={tmp_path}", *TINY[:-1], "--finetune_epochs=1", "--prune_project"]
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fd_name"] == "FD-digits" and "| FD-digits |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = report["rows"]
    assert rows["student (Keras)"]["macs"] < rows["teacher (Keras)"]["macs"]
    assert "project_bn" in report["student"]["live"]
    kept_project = report["student"]["live"]["project_bn"][0]
    assert keras.models.load_model(tmp_path / "finetune" / "student.keras").get_layer("project").units == 16 * kept_project
    lm = LiteRTModel((tmp_path / "export" / "student_int8.tflite").read_bytes())
    codes, _ = gan.sample_codes(5, 8, 10, seed=0)
    assert lm.predict(codes).shape == (5, 8, 8, 1)
    student = report["export"]["student"]
    assert student["micro"]["samples_checked"] == 20 and student["micro_file"]["tflm_outputs_equal"]
    assert student["micro"]["ok"], student["micro"]  # TFLite Micro's outputs equal LiteRT's builtin kernels
    assert student["device_bytes"]["phone"] == {"file": "student_int4.tflite", "bytes": student["int4"]["bytes"]}
    assert student["int4"]["bytes"] < student["tflite_bytes"]
    # the cut student was fine-tuned one epoch: same channels, new weights, still on the 4-bit lattice; it is
    # the model exported and reported
    cut, tuned = (keras.models.load_model(tmp_path / d / "student.keras") for d in ("student", "finetune"))
    assert [w.shape for w in cut.get_weights()] == [w.shape for w in tuned.get_weights()]
    assert any(not np.array_equal(a, b) for a, b in zip(cut.get_weights(), tuned.get_weights()))
    for layer in tuned.layers:
        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense):
            np.testing.assert_array_equal(quantize_uniform_int8(layer.kernel.numpy(), 4)[0].numpy(), layer.kernel.numpy())
    np.testing.assert_allclose(lm.predict(codes), tuned.predict(codes, verbose=0), atol=0.1)
    assert json.loads((tmp_path / "finetune" / "done.json").read_text())["epochs"] == 1
    assert "fine-tuned after the cut for 1 epochs" in (tmp_path / "report.md").read_text()
    again = _run(*args)
    assert again.returncode == 0 and again.stdout.count("done (resumed") == 5, again.stdout
    other = _run(*args, "--bits=8")
    assert other.returncode == 2 and "other flags (bits)" in other.stderr


def test_a_workdir_from_before_a_flag_existed_resumes_with_that_flags_old_value(tmp_path):
    """config.json without finetune_epochs / prune_project: those runs had no fine-tune and no project pruning
    (pipelines.gan.LEGACY), whatever today's defaults; every stage done here, so a resume only reads."""
    for stage in ("teacher", "student", "finetune", "export", "report"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "done.json").write_text("{}")
    first = _run(f"--workdir={tmp_path}", *TINY)
    assert first.returncode == 0 and first.stdout.count("done (resumed") == 5, first.stderr[-2000:]
    config = json.loads((tmp_path / "config.json").read_text())
    del config["finetune_epochs"], config["prune_project"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _run(f"--workdir={tmp_path}", *TINY).returncode == 0  # TINY: --finetune_epochs=0, no --prune_project
    newer = _run(f"--workdir={tmp_path}", *TINY[:-1])  # today's default: 10 fine-tune epochs
    assert newer.returncode == 2 and "other flags (finetune_epochs)" in newer.stderr


@pytest.mark.slow
def test_a_killed_teacher_resumes_from_its_last_epoch(tmp_path):
    """SIGKILL in the teacher's LSGAN epoch 2 (ATMC_FAULT): the rerun restores epoch 1's checkpoint (both
    players, both optimizers) and trains only the epochs left; the classifier is not trained again."""
    args = [f"--workdir={tmp_path}", *TINY]
    killed = _run(*args, env_extra={"ATMC_FAULT": "teacher:2:3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "teacher" / "backup").is_dir() and (tmp_path / "teacher" / "classifier.keras").exists()
    stamp = (tmp_path / "teacher" / "classifier.keras").stat().st_mtime_ns
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    teacher = json.loads((tmp_path / "teacher" / "done.json").read_text())
    assert teacher["resumed_from_epoch"] == 1 and not (tmp_path / "teacher" / "backup").exists()
    assert (tmp_path / "teacher" / "classifier.keras").stat().st_mtime_ns == stamp
