"""The absl pipeline as a user runs it: bad flags refused cleanly, a tiny run end to end, a resume."""
import json
import os
import re
import subprocess
import sys

import pytest

from pipeline_run import ROOT, run_pipeline, snapshot

TINY = ["--limit_train=400", "--limit_test=120", "--da_epochs=3", "--al0_epochs=1", "--atmc32_epochs=1",
        "--atmcb_epochs=2", "--pgd_steps=2", "--eval_pgd_steps=3", "--micro_samples=4",
        "--size_ratio=0.1", "--verbose=0", "--batch_size=64",
        # the reference's optimizer (the default Adam runs in test_resilience and the README job)
        "--optimizer=sgd", "--weight_decay=5e-4", "--da_lr=0.05", "--lr=0.01"]


@pytest.fixture
def used_workdir(tmp_path):
    """A workdir that already holds results: a bad invocation must not touch it."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "report.json").write_text('{"keep": true}')
    (wd / "export").mkdir()
    (wd / "export" / "model_int8.tflite").write_bytes(b"previous model")
    return wd


BAD_FLAGS = [
    ("--eps=-0.1", "--eps"), ("--eps=1.5", "--eps"), ("--eps=nan", "--eps"), ("--bits=0", "--bits"),
    ("--bits=9", "--bits"), ("--size_ratio=0", "--size_ratio"), ("--size_ratio=1.01", "--size_ratio"),
    ("--size_ratio=-1", "--size_ratio"), ("--dataset=cifar10", "dataset"), ("--model=resnet", "model"),
    ("--method=magic", "method"), ("--nnz_budget=0", "--nnz_budget"), ("--pgd_steps=0", "--pgd_steps"),
    ("--batch_size=0", "--batch_size"), ("--lr=0", "--lr"), ("--quant_interval=0", "--quant_interval"),
    ("--factorization=lowrank", "--rank"), ("--eps=abc", "eps"), ("--plot_eps=0.1,x", "--plot_eps"),
    ("--nosuch_flag=1", "nosuch_flag"), ("positional", "unexpected arguments"),
    ("--quant_scheme=uniform_int8 --bits=1", "uniform_int8"), ("--rho=-1", "--rho"),
    ("--bits=1", "one nonzero code"), ("--distill=ard --method=nap", "--distill needs"),
    ("--distill=kd", "distill"), ("--distill=ard --distill_temperature=0", "--distill_temperature"),
    ("--structure=channel --method=nap", "--structure=channel needs"), ("--structure=rows", "structure"),
    ("--mac_ratio=0.5", "--mac_ratio needs --structure=channel"),
    ("--structure=channel --mac_ratio=0.5 --size_ratio=0.3", "pass only one"),
    ("--structure=channel --mac_ratio=0", "--mac_ratio must be in (0, 1]"),
    ("--structure=channel --mac_ratio=1.5", "--mac_ratio must be in (0, 1]"),
    ("--structure=channel --mac_ratio=nan", "--mac_ratio must be in (0, 1]"),
    ("--structure=channel --factorization=abc", "--factorization=none"),
    ("--clean_target=0", "--clean_target must be > 0"), ("--clean_target=1.5", "must be < 1"),
    ("--clean_target=nan", "--clean_target must be > 0"), ("--clean_target_drop=-0.01", "--clean_target_drop"),
    ("--clean_target=0.1 --clean_target_drop=0.02", "pass only one"),
    ("--clean_target=0.1 --method=nap", "--clean_target / --clean_target_drop need"),
    ("--clean_target_form=mse", "clean_target_form"), ("--clean_target=0.1 --geco_rate=0", "--geco_rate"),
    ("--class_feedback=fair", "class_feedback"), ("--class_feedback=reweight --method=nap", "--class_feedback needs"),
    ("--class_feedback=resample --distill=ard", "--class_feedback needs"),
    ("--class_feedback=reweight --class_feedback_rate=0", "--class_feedback_rate must be > 0"),
    ("--class_feedback_rate=nan", "--class_feedback_rate must be > 0"),
    ("--class_feedback=reweight --threats=linf,l2", "with --threats leave it off"),
    ("--threats=linf,l2 --train_attack=fgsm_rs", "--threats trains with PGD"),
    ("--class_feedback=reweight --train_attack=free", "--class_feedback needs an attack run per step"),
    ("--method=boost --activation_sparsity=wta", "--method=boost does not take --activation_sparsity"),
    ("--ste_epochs=-1", "--ste_epochs must be >= 0"), ("--ste_epochs=2 --nobits_enabled", "--ste_epochs trains"),
    ("--ste_epochs=2 --method=ap", "--ste_epochs trains"),
]


@pytest.mark.parametrize("flag,mentions", BAD_FLAGS, ids=[f for f, _ in BAD_FLAGS])
def test_bad_flags_one_line_exit_2_nothing_touched(used_workdir, flag, mentions):
    before = snapshot(used_workdir)
    r = run_pipeline(*flag.split(), f"--workdir={used_workdir}", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert mentions in lines[0]
    assert snapshot(used_workdir) == before


def test_unwritable_workdir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    r = run_pipeline(f"--workdir={ro / 'file' / 'sub'}", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not writable" in r.stderr


def test_missing_dataset_one_line(tmp_path):
    r = run_pipeline("--dataset=fashion_mnist", f"--data_dir={tmp_path / 'none'}",
                     f"--workdir={tmp_path / 'wd'}", "--verbose=0", timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "fashion" in last.lower()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """TINY at the default --verbose (the run is also test_quiet_by_default_when_redirected's TF_CPP_MIN_LOG_LEVEL=2 case)."""
    wd = tmp_path_factory.mktemp("pipeline") / "run"
    r = run_pipeline(*[a for a in TINY if not a.startswith("--verbose")], f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-4000:]
    return wd, r


@pytest.mark.slow
def test_end_to_end_tiny_run(tiny_run):
    wd, r = tiny_run
    report = json.loads((wd / "report.json").read_text())
    assert "report:" in r.stdout
    for name in ("report.md", "accuracy_vs_eps.png", "layers.png", "config.json",
                 "export/model_int8.tflite", "export/model_int8_batch1.tflite", "export/model_data.cc"):
        assert (wd / name).exists(), name
    for png in ("accuracy_vs_eps.png", "layers.png"):
        assert (wd / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    size = report["size"]
    assert size["nnz"] <= report["stage_results"][-1]["constraints"]["budget"]
    assert all(t["levels"] <= 2 ** 4 - 1 for t in size["tensors"])  # 16 values with 0: 4-bit indices
    phone, micro = report["phone"], report["micro"]
    assert phone["kernels_exact"], phone["kernel_codes"]
    assert phone["top1_agreement"] >= 0.9
    assert abs(phone["clean_acc"] - phone["keras_clean_acc"]) <= 0.05
    assert micro["ok"] and not micro["unsupported_ops"] and micro["max_abs_diff_vs_litert"] <= 1
    assert micro["arena_bytes"] > 0
    # the microcontroller file stores the compression (LUT indices or PRUNE bitmaps) and runs bit-identically on TFLM
    mcu = report["micro_compressed"]
    assert mcu["ok"] and mcu["samples_checked"] == report["data"]["test"], mcu
    assert mcu["flash_bytes"] < mcu["uncompressed_bytes"], mcu
    assert any(t["encoding"] in ("lut_per_channel", "prune") for t in mcu["plan"]["tensors"])
    assert not any(t["encoding"] == "lut_per_tensor" for t in mcu["plan"]["tensors"])  # wrong on per-channel kernels
    # 4-bit ATMC means 4-bit indices on the device: 0 is one of the 16 values (the paper's count needed 5)
    assert {t["index_bits"] for t in mcu["plan"]["tensors"] if t["encoding"] == "lut_per_channel"} <= {1, 2, 3, 4}
    stored = (wd / "export" / "model_int8_micro.tflite").read_bytes()
    assert len(stored) == mcu["flash_bytes"]
    c_bytes = re.findall(r"0x([0-9a-f]{2})", (wd / "export" / "model_data.cc").read_text())
    assert bytes(int(b, 16) for b in c_bytes) == stored  # the firmware's array is the compressed file
    assert "flash (model_int8_micro.tflite" in (wd / "report.md").read_text()
    # the worst case over PGD / APGD-CE / APGD-DLR (Keras) and transfer / Square (the .tflite itself)
    rb = report["robustness"]
    k, t = rb["keras"], rb["tflite"]
    assert set(k["per_attack"]) == {"pgd", "apgd-ce", "apgd-dlr"}
    assert k["worst_case"] <= min(k["clean"], *k["per_attack"].values())
    assert t["worst_case"] <= min(t["clean"], t["transfer"], t["square"])
    assert 1 <= t["square_queries_mean"] <= t["square_query_budget"]
    assert set(rb["masking_checks"]) == {"large_eps", "more_steps", "black_box"}
    assert report["summary"]["keras_robust_worst"] == k["worst_case"]
    assert "## Robustness at eps" in (wd / "report.md").read_text()
    # per-class robust accuracy and the worst class, also without --class_feedback
    pc = rb["per_class"]
    assert sum(pc["count"]) == report["data"]["test"] and report["class_feedback"] is None
    worst = pc["worst_class"]["keras"]
    assert worst["robust_acc"] == min(v for v in pc["keras_robust"] if v is not None)
    assert worst["robust_acc"] == pc["keras_robust"][worst["class"]] <= k["worst_case"]
    assert "## Per class (test split)" in (wd / "report.md").read_text()
    dev = report["device_bytes"]  # what each device stores, first-class beside paper-style bits and gzip
    # the phone stores the smallest file LiteRT runs with the int8 model's answers (int8, INT4-packed, sparse)
    kind = phone["file"]
    assert dev["litert"] == (wd / "export" / f"model_{kind}.tflite").stat().st_size
    ok = [phone[k]["bytes"] for k in ("int4", "sparse") if phone[k]["ok"]]
    assert dev["litert"] == min(ok, default=phone["int4"]["int8_bytes"])
    assert all(phone[k]["used"] == (k == kind) for k in ("int4", "sparse"))
    assert dev["tflm"] == mcu["flash_bytes"] < dev["tflm_uncompressed"] == mcu["uncompressed_bytes"]
    assert dev["gzip"] < dev["litert"]
    md = (wd / "report.md").read_text()
    assert re.search(rf"\*\*microcontroller flash\*\* .*\| {dev['tflm']:,} \|", md), md
    assert [s["stage"] for s in report["stages"]] == ["da", "al0", "atmc32", "atmc4"]
    config = json.loads((wd / "config.json").read_text())
    assert (config["optimizer"], config["weight_decay"]) == ("sgd", 5e-4), config
    assert "transfer" in (wd / "report.md").read_text()
    assert not [p for p in snapshot(wd) if ".tmp" in p], "temporary files left behind"


@pytest.mark.slow
def test_tensorboard_curves_of_every_stage(tiny_run):
    """Each training stage leaves event files that TensorBoard's own reader parses, holding the
    trainer's curves for training and validation, one point per epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wd, _ = tiny_run
    epochs = {"da": 3, "al0": 1, "atmc32": 1, "atmc4": 2}
    for stage, n in epochs.items():
        for split in ("train", "validation"):
            folder = wd / "tensorboard" / stage / split
            assert list(folder.glob("events.out.tfevents.*")), folder
            acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
            acc.Reload()
            tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
            want = {"epoch_clean_loss", "epoch_clean_acc", "epoch_adv_loss", "epoch_adv_acc", "epoch_nnz"}
            if stage == "atmc4":
                want.add("epoch_w_z_dist")
            assert want <= tags, (stage, split, sorted(tags))
            steps = [e.step for e in (acc.Tensors("epoch_adv_acc") if "epoch_adv_acc" in acc.Tags()["tensors"]
                                      else acc.Scalars("epoch_adv_acc"))]
            assert steps == list(range(n)), (stage, split, steps)


@pytest.mark.slow
def test_rerun_resumes_and_other_flags_are_refused(tiny_run):
    wd, first = tiny_run
    model_before = snapshot(wd / "atmc4")
    again = run_pipeline(*TINY, f"--workdir={wd}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done already" in again.stderr
    assert snapshot(wd / "atmc4") == model_before
    before = snapshot(wd)
    other = run_pipeline(*[a for a in TINY if not a.startswith("--size_ratio")], "--size_ratio=0.2",
                         f"--workdir={wd}", timeout=120)
    assert other.returncode == 2 and "other flags" in other.stderr and "size_ratio" in other.stderr
    assert snapshot(wd) == before


def test_multiworker_without_tf_config_is_refused(tmp_path):
    r = run_pipeline("--strategy=multiworker", f"--workdir={tmp_path / 'wd'}", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "TF_CONFIG" in r.stderr
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_pipeline_on_two_workers(tmp_path):
    """--strategy=multiworker: two processes on 127.0.0.1 (TF_CONFIG) train in lockstep."""
    import socket
    import subprocess
    import sys

    import keras
    import numpy as np

    import atmc_tf.layers  # noqa: F401  (registers ATMCWrapper)
    from atmc_tf.layers import atmc_wrappers
    from pipeline_run import ROOT

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    workers = [f"127.0.0.1:{p}" for p in ports]
    # every stage (the codebook one too) in lockstep; one epoch each is enough for that
    fewer_epochs = [a for a in TINY if not a.startswith(("--da_epochs", "--atmcb_epochs"))] + [
        "--da_epochs=1", "--atmcb_epochs=1"]
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if k != "ATMC_FAULT"}
        env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.atmc", *fewer_epochs, "--strategy=multiworker",
             f"--workdir={tmp_path / f'w{i}'}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    for p in procs:
        try:
            _, err = p.communicate(timeout=900)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, err[-3000:]
    nets = [keras.models.load_model(tmp_path / f"w{i}" / "atmc4" / "model.keras") for i in range(2)]
    for a, b in zip(*[atmc_wrappers(n) for n in nets]):
        for va, vb in zip(a.compressed_variables, b.compressed_variables):
            np.testing.assert_array_equal(va.numpy(), vb.numpy())
    report = json.loads((tmp_path / "w0" / "report.json").read_text())
    assert report["config"]["strategy"] == "multiworker" and report["micro"]["ok"]


def test_workdir_from_before_a_new_flag_resumes_at_its_default():
    """A config.json written before --optimizer existed: that run used Adam, so resuming with the
    default is accepted and asking for SGD is refused (pipelines.atmc.check_claim uses this)."""
    import dataclasses

    from pipelines.flags_def import PipelineConfig, config_diff
    cfg = PipelineConfig(**{f.name: 0 for f in dataclasses.fields(PipelineConfig)}
                         | {"model_file": None, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0})
    old = {k: v for k, v in cfg.as_dict().items() if k not in ("optimizer", "momentum", "weight_decay")}
    assert config_diff(cfg.as_dict(), old) == []
    assert config_diff(dataclasses.replace(cfg, optimizer="sgd").as_dict(), old) == ["optimizer"]
    assert config_diff(dataclasses.replace(cfg, lr=1.0).as_dict(), old) == ["lr"]
    # A field whose default is not what older runs did: those runs counted 2^b nonzero values + 0.
    older = {k: v for k, v in cfg.as_dict().items() if k != "zero_in_levels"}
    assert config_diff(dataclasses.replace(cfg, zero_in_levels=True).as_dict(), older) == ["zero_in_levels"]
    assert config_diff(dataclasses.replace(cfg, zero_in_levels=False).as_dict(), older) == []
    # Runs recorded before --l0_scoring existed ranked by magnitude; the default is LAMP since 2026-12-02.
    assert PipelineConfig.__dataclass_fields__["l0_scoring"].default == "lamp"
    before = {k: v for k, v in cfg.as_dict().items() if k != "l0_scoring"}
    assert config_diff(dataclasses.replace(cfg, l0_scoring="lamp").as_dict(), before) == ["l0_scoring"]
    assert config_diff(dataclasses.replace(cfg, l0_scoring="magnitude").as_dict(), before) == []


def test_fast_attacks_are_watched_and_a_collapse_is_reported():
    """stages.overfitting_guard watches a fast training attack, not PGD nor natural training; a stage result that
    recorded catastrophic overfitting puts its one line in report.md."""
    import types

    import numpy as np

    from atmc_tf.attacks import FGSMRSConfig, PGDConfig
    from atmc_tf.training import CatastrophicOverfittingGuard, method_config
    from pipelines import stages
    from pipelines.report import _overfitting_lines
    data = types.SimpleNamespace(x_val=np.zeros((300, 8, 8, 1), np.float32), y_val=np.zeros(300, np.int64))
    cfg = types.SimpleNamespace(eps=0.1)
    guard = stages.overfitting_guard(cfg, method_config("da", attack=FGSMRSConfig(eps=0.1)), data)
    assert isinstance(guard, CatastrophicOverfittingGuard) and len(guard.y) == stages.CO_CHECK_EXAMPLES
    assert guard.attack == PGDConfig(eps=0.1, steps=stages.CO_PGD_STEPS)
    assert stages.overfitting_guard(cfg, method_config("da", attack=PGDConfig(eps=0.1)), data) is None
    assert stages.overfitting_guard(cfg, method_config("natural"), data) is None
    line = "catastrophic overfitting at epoch 5: ... restored"
    results = [{"stage": "da", "train_attack": "fgsm_rs", "catastrophic_overfitting": {"line": line}},
               {"stage": "al0", "train_attack": "fgsm_rs", "catastrophic_overfitting": None}]
    lines = _overfitting_lines(results)
    assert "Training attack: fgsm_rs." in lines and f"- **stage da: {line}**" in lines and len(lines) == 3
    assert _overfitting_lines([{"stage": "da", "train_attack": "pgd", "catastrophic_overfitting": None}]) == []


def test_workdir_from_before_train_attack_resumes_with_pgd():
    """A run recorded before --train_attack trained with PGD: resuming with the default is accepted, a fast
    attack is refused as a different run."""
    import dataclasses

    from pipelines.flags_def import PipelineConfig, config_diff
    cfg = PipelineConfig(**{f.name: 0 for f in dataclasses.fields(PipelineConfig)}
                         | {"model_file": None, "train_attack": "pgd", "free_replays": 4})
    old = {k: v for k, v in cfg.as_dict().items() if k not in ("train_attack", "free_replays")}
    assert config_diff(cfg.as_dict(), old) == []
    assert config_diff(dataclasses.replace(cfg, train_attack="n_fgsm").as_dict(), old) == ["train_attack"]


def test_workdir_from_before_activation_sparsity_resumes_without_it():
    """A run recorded before --activation_sparsity had none: resuming with the default (off) is accepted, wta
    is refused as a different run; stages.activation_sparsity reads an old config as off."""
    import dataclasses
    import types

    from pipelines import stages
    from pipelines.flags_def import PipelineConfig, config_diff
    cfg = PipelineConfig(**{f.name: 0 for f in dataclasses.fields(PipelineConfig)}
                         | {"model_file": None, "activation_sparsity": "off", "activation_density": 0.5})
    old = {k: v for k, v in cfg.as_dict().items() if k not in ("activation_sparsity", "activation_density")}
    assert config_diff(cfg.as_dict(), old) == []
    assert config_diff(dataclasses.replace(cfg, activation_sparsity="wta").as_dict(), old) == ["activation_sparsity"]
    assert not stages.activation_sparsity(types.SimpleNamespace()) and stages.activation_report(cfg, None, None) is None


@pytest.mark.slow
def test_winners_take_all_run_reports_densities_and_runs_on_tflite_micro(tmp_path):
    """--activation_sparsity=wta --activation_density=0.5: every WTA layer keeps exactly half its units on clean
    and PGD test images, effective MACs fall below the dense ones, both PGD figures are reported (the robust one
    the lower), and the exported .tflite keeps the masks and runs on LiteRT and TFLite Micro."""
    wd = tmp_path / "wd"
    r = run_pipeline("--limit_train=200", "--limit_test=60", "--da_epochs=2", "--method=da",
                     "--activation_sparsity=wta", "--activation_density=0.5", "--pgd_steps=2", "--square_queries=50",
                     "--eval_pgd_steps=2", "--micro_samples=4", "--verbose=0", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    act = report["activation_sparsity"]
    assert len(act["layers"]) == 3
    for layer in act["layers"].values():   # a winner may be all zero (after a ReLU): at most the target
        for inputs in ("clean", "adversarial"):
            assert 0.4 <= layer[inputs]["unit_density"] <= 0.5 and layer[inputs]["density"] <= 0.5
    assert act["macs"]["effective_clean"] < act["macs"]["dense"]
    assert act["pgd"]["robust"] == min(act["pgd"]["plain"], act["pgd"]["bpda"])
    assert act["litert_latency_ms"]["with"] > 0 and act["litert_latency_ms"]["without"] > 0
    assert report["micro"]["ok"] and "SELECT_V2" in report["micro"]["ops"]
    assert abs(report["phone"]["clean_acc"] - report["phone"]["keras_clean_acc"]) <= 0.01
    assert "## Activation sparsity (winners-take-all)" in (wd / "report.md").read_text()


@pytest.mark.slow
def test_a_collapsed_model_is_named_and_fails_the_run(tmp_path):
    """A budget of 1 weight cuts every path (whatever the scoring: LAMP keeps one weight per layer only while
    the budget covers one each): the run still writes its report (nothing is lost), says in one line which
    layers were emptied, and exits 4, unless --allow_collapse."""
    wd = tmp_path / "wd"
    flags = ["--limit_train=200", "--limit_test=60", "--da_epochs=1", "--method=al0", "--al0_epochs=1",
             "--pgd_steps=2", "--eval_pgd_steps=2", "--micro_samples=2", "--verbose=0", "--nnz_budget=1"]
    r = run_pipeline(*flags, f"--workdir={wd}")
    assert r.returncode == 4, r.stderr[-3000:]
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "collapsed" in errors[0] and "atmc_" in errors[0] and "--allow_collapse" in errors[0]
    report = json.loads((wd / "report.json").read_text())
    assert report["collapse"]["problem"] and not report["collapse"]["reaches_output"]
    assert "collapsed" in (wd / "report.md").read_text()
    again = run_pipeline(*flags, "--allow_collapse", f"--workdir={wd}")
    assert again.returncode == 0 and "warning: the compressed model collapsed" in again.stderr


@pytest.mark.slow
def test_a_fast_training_attack_trains_every_stage_and_pgd_evaluates(tmp_path):
    """--train_attack=n_fgsm: DA and AL0 train with N-FGSM (recorded per stage, said in the report), watched for
    catastrophic overfitting; the robustness figures are PGD's all the same."""
    wd = tmp_path / "wd"
    r = run_pipeline("--limit_train=200", "--limit_test=60", "--da_epochs=2", "--method=al0", "--al0_epochs=1",
                     "--train_attack=n_fgsm", "--size_ratio=0.3", "--eval_pgd_steps=2", "--micro_samples=2", "--verbose=0",
                     f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert [s["train_attack"] for s in report["stage_results"]] == ["n_fgsm", "n_fgsm"]
    assert all("catastrophic_overfitting" in s for s in report["stage_results"])
    assert "pgd" in report["robustness"]["keras"]["per_attack"] and report["config"]["train_attack"] == "n_fgsm"
    assert 0 <= report["summary"]["keras_robust"] <= 1
    assert "Training attack: n_fgsm." in (wd / "report.md").read_text()


@pytest.mark.slow
def test_a_budget_that_prunes_nothing_is_said(tmp_path):
    r = run_pipeline("--limit_train=200", "--limit_test=60", "--da_epochs=1", "--method=al0", "--al0_epochs=0",
                     "--nnz_budget=10000000", "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2",
                     "--verbose=0", f"--workdir={tmp_path / 'wd'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing is pruned" in r.stderr and "lower --size_ratio" in r.stderr


def test_two_bits_train_on_the_set_after_admm_and_ship_what_was_validated(tmp_path):
    """Below 4 bits a stage trained ON the b-bit set follows ADMM by default (--ste_epochs): ADMM's final
    projection is measured but not warned about (the next stage starts from it), the stage on the set ends
    where its last epoch validated (its projection moves nothing), and the .tflite holds 2-bit kernels."""
    wd = tmp_path / "wd"
    r = run_pipeline("--limit_train=300", "--limit_test=60", "--da_epochs=2", "--al0_epochs=1", "--atmc32_epochs=1",
                     "--atmcb_epochs=1", "--bits=2", "--ste_epochs=2", "--pgd_steps=1", "--eval_pgd_steps=1",
                     "--micro_samples=2", "--verbose=0", "--notensorboard", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    rows = {st["stage"]: st for st in report["stages"]}
    assert list(rows) == ["da", "al0", "atmc32", "atmc2", "atmc2_ste"]
    assert rows["atmc2"]["projection"]["line"] is None and "final projection" not in r.stderr
    ste = rows["atmc2_ste"]["projection"]  # the weights do not move; the attack's random start may (60 images)
    assert ste["val_clean_before"] == ste["val_clean_after"] and abs(ste["drop"]) <= 0.1, ste
    assert report["config"]["ste_epochs"] == 2
    plan = report["micro_compressed"]["plan"]["tensors"]
    assert {t["index_bits"] for t in plan if t["encoding"] == "lut_per_channel"} <= {1, 2}, plan
    assert "| atmc2_ste | 2 |" in (wd / "report.md").read_text()


@pytest.mark.slow
def test_a_tflite_micro_crash_fails_the_run_with_its_reason(tmp_path):
    """TFLite Micro dying with SIGSEGV in its child (this build does, e.g. on a Dense(100000) model; simulated
    here at every arena size the check tries first): everything is still written, the one error line and the
    report both say why, and the exit code is 1 (the documented "TFLM failed"), never 0."""
    from atmc_tf.export import micro
    wd = tmp_path / "wd"
    r = run_pipeline("--limit_train=200", "--limit_test=60", "--da_epochs=1", "--method=al0", "--al0_epochs=0",
                     "--nnz_budget=10000000", "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2",
                     "--verbose=0", f"--workdir={wd}", extra_env={"ATMC_MICRO_CRASH_ARENAS": str(micro.ARENA_MAX)})
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TFLite Micro check failed" in errors[0], r.stderr[-3000:]
    reason = micro.failure_reason(json.loads((wd / "report.json").read_text())["micro"])
    assert "died with SIGSEGV" in reason and str(micro.ARENA_MAX) in reason and reason in errors[0]
    assert reason in (wd / "report.md").read_text()
    assert "TFLM FAILED" in r.stdout
    for f in ("model_int8.tflite", "model_int8_batch1.tflite", "model_data.cc", "model_data.h"):
        assert (wd / "export" / f).stat().st_size > 0


def test_report_names_the_users_model():
    from pipelines.report import model_name
    assert model_name({"model": "small_cnn", "model_file": "/data/my_mobilenet.keras"}) == "my_mobilenet.keras"
    assert model_name({"model": "lenet", "model_file": None}) == "lenet"


def _assert_quiet(r):
    out = r.stdout + r.stderr
    lines = out.splitlines()
    epochs = 3 + 1 + 1 + 2  # TINY's da, al0, atmc32, atmc4
    assert sum(l.startswith("stage ") and " epoch " in l for l in lines) == epochs
    assert len(lines) <= epochs + 20, out
    for noise in ("\r", "\x1b[", "fully_quantize", "XNNPACK", "port.cc", "cuda", "functional_saver", "Epoch 1/",
                  "use_unbounded_threadpool", "node_def_util", "absl::InitializeLog", "retracing"):
        assert noise not in out, noise


@pytest.mark.slow
def test_quiet_by_default_when_redirected(tmp_path, tiny_run):
    """Output to a file (not a terminal): one line per epoch, the pipeline's status lines, no progress
    bars or terminal codes, none of TensorFlow's, the converter's or LiteRT's own log lines; with
    TF_CPP_MIN_LOG_LEVEL unset, and at 2 as many users set it (TF 2.21 then logs more: tiny_run's case).
    Adam here, SGD in tiny_run."""
    _assert_quiet(tiny_run[1])
    flags = [a for a in TINY if not a.startswith("--verbose") and not a.startswith("--optimizer")
             and not a.startswith("--weight_decay") and not a.startswith("--da_lr") and not a.startswith("--lr")]
    r = run_pipeline(*flags, f"--workdir={tmp_path / 'wd'}", extra_env={"TF_CPP_MIN_LOG_LEVEL": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_quiet(r)


def test_layers_plot_is_labelled_and_its_legend_covers_no_bar():
    import matplotlib
    matplotlib.use("Agg")
    from pipelines.report import layers_figure
    tensors = [{"name": f"atmc_l{i}/kernel", "nnz": n, "numel": 100, "levels": lv}
               for i, (n, lv) in enumerate([(95, 16), (10, 15), (50, 0)])]
    fig = layers_figure(tensors, "t", level_limit=16)
    fig.canvas.draw()
    left, right = fig.axes
    names = ["l0/kernel", "l1/kernel", "l2/kernel"]
    for ax in (left, right):
        assert [t.get_text() for t in ax.get_yticklabels()] == names
        assert ax.get_xlabel() and ax.get_ylabel()
    assert sorted(t.get_text() for t in right.texts) == ["15", "16", "fp32"]
    inside = [t for t in left.texts if t.get_color() == "white"]
    assert [t.get_text() for t in inside] == ["95/100"]  # a nearly full bar's label sits inside it
    legend = right.get_legend().get_window_extent()
    assert legend.y0 >= right.get_window_extent().y1 - 1  # above the plotting area, over no bar


@pytest.mark.slow
def test_channel_structure_exports_a_smaller_model(tmp_path):
    """--structure=channel: whole channels pruned under the budget and cut out of the export; the smaller
    int8 model agrees with the Keras one, passes TFLite Micro, and the report says what shrank."""
    wd = tmp_path / "wd"
    flags = ["--limit_train=400", "--limit_test=120", "--da_epochs=2", "--al0_epochs=1", "--atmc32_epochs=1",
             "--atmcb_epochs=1", "--pgd_steps=2", "--eval_pgd_steps=2", "--micro_samples=4", "--verbose=0",
             "--structure=channel", "--size_ratio=0.25"]
    r = run_pipeline(*flags, f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    st = report["structure"]
    cut = st["surgery"]
    assert cut["layers"]["logits"] == {"class": "Dense", "kept": 10, "total": 10}  # the classes stay
    kernels = sum(v["kept"] for v in cut["layers"].values())
    assert kernels < sum(v["total"] for v in cut["layers"].values())
    assert cut["params_after"] <= 0.3 * cut["params_before"], cut
    assert cut["macs_after"] < cut["macs_before"]
    assert st["tflite_b1_bytes"]["compressed"] < 0.75 * st["tflite_b1_bytes"]["dense"], st
    sb = st["tflite_b1_bytes_stripped"]  # the names cost the same in both, so the ratio falls without them
    assert sb["compressed"] < st["tflite_b1_bytes"]["compressed"] and sb["dense"] < st["tflite_b1_bytes"]["dense"]
    assert sb["compressed"] / sb["dense"] < st["bytes_ratio"]
    assert report["micro"]["ok"] and report["phone"]["kernels_exact"]
    assert report["phone"]["top1_agreement"] >= 0.95
    md = (wd / "report.md").read_text()
    assert "## Channels (--structure=channel)" in md and "LiteRT latency" in md and "without tensor names" in md


STRUCTURED_TINY = ["--limit_train=400", "--limit_test=120", "--da_epochs=2", "--pgd_steps=2", "--eval_pgd_steps=2",
                   "--micro_samples=4", "--square_queries=50", "--verbose=0", "--notensorboard", "--structure=channel"]


@pytest.mark.slow
def test_mac_ratio_bounds_the_exported_models_macs(tmp_path):
    """--structure=channel --mac_ratio: the budget counts MACs, and the cut model's MACs are at most
    that fraction of the dense model's (what the report states)."""
    wd = tmp_path / "wd"
    r = run_pipeline(*STRUCTURED_TINY, "--method=al0", "--al0_epochs=1", "--mac_ratio=0.4", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    st, cut = report["structure"], report["structure"]["surgery"]
    assert report["config"]["mac_ratio"] == 0.4
    assert report["stage_results"][-1]["constraints"]["constraints"][0]["budget_unit"] == "macs"
    assert st["budget"] == {"flag": "mac_ratio", "unit": "MACs", "ratio": 0.4,
                            "achieved": cut["macs_after"] / cut["macs_before"]}
    assert 0 < cut["macs_after"] <= 0.4 * cut["macs_before"], cut
    assert report["micro"]["ok"] and report["phone"]["top1_agreement"] >= 0.95
    assert "- budget --mac_ratio=0.4 of the dense MACs: achieved" in (wd / "report.md").read_text()


@pytest.mark.slow
def test_channel_structure_on_a_users_residual_model(tmp_path):
    """--model_file with a MobileNetV2-style model (Add skips, depthwise): the channels feeding the skips are
    kept whole, the expansions are pruned, the cut model holds the budget and passes the device checks."""
    from conftest import mobilenet_v2_style
    mobilenet_v2_style().save(tmp_path / "mine.keras")
    wd = tmp_path / "wd"
    r = run_pipeline(*STRUCTURED_TINY, "--method=al0", "--al0_epochs=1", "--size_ratio=0.3",
                     f"--model_file={tmp_path / 'mine.keras'}", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    st, layers = report["structure"], report["structure"]["surgery"]["layers"]
    assert 0.25 <= st["budget"]["achieved"] <= 0.3, st["budget"]
    for name in ("stem", "b1_project", "b2_project", "logits"):
        assert layers[name]["kept"] == layers[name]["total"], layers
    assert layers["b1_expand"]["kept"] == layers["b1_dw"]["kept"] < 64, layers
    assert report["micro"]["ok"] and report["phone"]["top1_agreement"] >= 0.95


@pytest.mark.slow
def test_structured_ap_keeps_the_channels_it_chose_from_the_dense_model(tmp_path):
    """--method=ap --structure=channel: one-shot channel pruning of the DA model (GroupL0's scoring and
    the size budget), adversarial fine-tuning with that channel set fixed, the same smaller export."""
    import keras

    from atmc_tf.constraints import FixedGroupSupport
    from atmc_tf.constraints.group_sparsity import group_nonzero
    from atmc_tf.layers import atmc_wrappers, strip_model, wrap_model
    from atmc_tf.training import ATMCTrainer, CleanLoss
    wd = tmp_path / "wd"
    r = run_pipeline(*STRUCTURED_TINY, "--method=ap", "--finetune_epochs=2", "--size_ratio=0.3", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["da", "ap"]
    group = report["stage_results"][-1]["constraints"]["constraints"][0]
    assert group["kind"] == "fixed_group_support" and group["keep_layers"] == ["logits"]
    # The channels FixedGroupSupport picks from the saved DA model are the ones the fine-tuned model has.
    net = wrap_model(strip_model(keras.models.load_model(wd / "da" / "model.keras")))
    chosen_by = ATMCTrainer(net, terms=[CleanLoss()],
                            constraints=[FixedGroupSupport(**{k: v for k, v in group.items() if k != "kind"})])
    chosen_by.prepare_constraints()
    ap = keras.models.load_model(wd / "ap" / "model.keras")

    def nonzero_channels(model):
        return [group_nonzero(v, w.channel_axes).numpy().tolist()
                for w in atmc_wrappers(model) for v in w.compressed_variables]

    chosen, kept = nonzero_channels(net), nonzero_channels(ap)
    assert kept == chosen and sum(map(sum, kept)) < sum(map(len, kept))
    st, cut = report["structure"], report["structure"]["surgery"]
    assert st["budget"]["flag"] == "size_ratio" and st["budget"]["achieved"] <= 0.3, st["budget"]
    assert cut["params_after"] < cut["params_before"] and cut["macs_after"] < cut["macs_before"]
    assert st["tflite_b1_bytes"]["compressed"] < st["tflite_b1_bytes"]["dense"]
    assert report["micro"]["ok"] and report["phone"]["kernels_exact"]


@pytest.mark.slow
def test_check_tflite_attacks_the_file_itself(tiny_run, tmp_path):
    """atmc-check-tflite --attack=square on the run's int8 model: a robust accuracy and the queries spent."""
    wd, _ = tiny_run
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, "-m", "pipelines.check_tflite", f"--tflite={wd / 'export' / 'model_int8.tflite'}",
                        "--limit_test=60", "--micro_samples=2", "--attack=square", "--eps=0.1", "--square_queries=100",
                        f"--json_out={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    attack = json.loads(out.read_text())["phone"]["attack"]
    assert attack["kind"] == "square" and attack["query_budget"] == 100
    assert 0 <= attack["robust_acc"] <= json.loads(out.read_text())["phone"]["clean_acc"]
    assert 1 <= attack["queries_mean"] <= 100
    # any file's device bytes: the phone stores it as it is; a microcontroller the LUT-compressed file,
    # checked bit-identical on TFLM (4-bit ATMC kernels: at most 4-bit indices)
    summary = json.loads(out.read_text())
    dev, mcu = summary["device_bytes"], summary["micro_compressed"]
    assert dev["litert"] == (wd / "export" / "model_int8.tflite").stat().st_size
    assert dev["tflm"] == mcu["flash_bytes"] < dev["litert"] and dev["gzip"] < dev["litert"]
    assert mcu["ok"] and mcu["samples_checked"] == 2 and mcu["compressed_tensors"] >= 1, mcu
    assert set(mcu["index_bits"]) <= {1, 2, 3, 4}, mcu


@pytest.mark.slow
def test_robust_distillation_run(tmp_path):
    """--distill=ard: every adversarial compression stage learns from the DA model (the teacher);
    the run finishes, records the objective and logs the distillation loss. The same run quantizes on
    the uniform 4-bit lattice, so the phone's file stores its kernels as packed INT4 (or sparse, if smaller)."""
    wd = tmp_path / "distill"
    r = run_pipeline("--limit_train=200", "--limit_test=200", "--quant_scheme=uniform_int8", "--da_epochs=1", "--al0_epochs=1", "--atmc32_epochs=1",
                     "--atmcb_epochs=1", "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2", "--size_ratio=0.1",
                     "--verbose=0", "--batch_size=64", "--square_queries=5", "--distill=ard",
                     "--distill_temperature=2", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert report["config"]["distill"] == "ard"
    for stage in report["stage_results"][1:]:
        assert "distill_kl" in stage["history"] and "adv_acc" in stage["history"], stage["stage"]
    assert "distill_kl" not in report["stage_results"][0]["history"]  # the teacher itself trains as before
    phone = report["phone"]
    int4 = phone["int4"]
    assert int4["ok"] and int4["packed_kernels"], int4
    assert abs(int4["clean_acc"] - phone["clean_acc"]) <= 0.01
    kind = phone["file"]  # the smaller of the INT4-packed and the sparse file (both run on LiteRT)
    assert kind in ("int4", "sparse") and phone[kind]["used"]
    assert phone[kind]["bytes"] == min(phone[k]["bytes"] for k in ("int4", "sparse") if phone[k]["ok"])
    phone_file = wd / "export" / f"model_{kind}.tflite"
    assert report["device_bytes"]["litert"] == phone_file.stat().st_size < int4["int8_bytes"]
    assert f"model_{kind}.tflite: " in (wd / "report.md").read_text()


@pytest.mark.slow
def test_class_feedback_run(tmp_path):
    """--class_feedback=reweight: every adversarial compression stage logs per-class weights (mean 1) and the
    validation split's worst class per epoch; the report adds the final weights to the per-class table."""
    wd = tmp_path / "feedback"
    r = run_pipeline("--limit_train=200", "--limit_test=200", "--da_epochs=1", "--al0_epochs=1", "--atmc32_epochs=1",
                     "--atmcb_epochs=1", "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2", "--size_ratio=0.1",
                     "--verbose=0", "--batch_size=64", "--square_queries=5", "--class_feedback=reweight",
                     f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    fb = report["class_feedback"]
    assert fb["mode"] == "reweight" and [s["stage"] for s in fb["stages"]] == ["al0", "atmc32", "atmc4"]
    for stage in fb["stages"]:
        assert len(stage["final_weights"]) == 10 and sum(stage["final_weights"]) == pytest.approx(10.0, rel=1e-5)
        assert len(stage["worst_class"]) == 1
    assert not any(k.startswith("class_weight_") for k in report["stage_results"][0]["history"])  # DA: plain
    pc = report["robustness"]["per_class"]
    assert set(pc["worst_class"]) == {"keras", "tflite"} and len(pc["tflite_robust"]) == 10
    md = (wd / "report.md").read_text()
    assert "| class weight |" in md and "class feedback: reweight, rate 0.5" in md


@pytest.mark.slow
def test_clean_target_run(tmp_path):
    """--clean_target_drop: the compression stages hold the clean error within the drop of the DA model's
    (resolved from its validation error); every adversarial compression stage logs the multiplier and the
    constraint, and the report states the target, lambda per epoch and whether the final model meets it."""
    wd = tmp_path / "geco"
    r = run_pipeline("--limit_train=200", "--limit_test=200", "--da_epochs=1", "--al0_epochs=1", "--atmc32_epochs=1",
                     "--atmcb_epochs=1", "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2", "--size_ratio=0.1",
                     "--verbose=0", "--batch_size=64", "--square_queries=5", "--clean_target_drop=0.02",
                     "--geco_rate=0.5", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    ct = report["clean_target"]
    assert ct["source"] == "dense" and ct["form"] == "error"
    assert ct["kappa"] == pytest.approx(ct["dense_val"] + 0.02)
    assert ct["met"] == (ct["final_val"] <= ct["kappa"])
    assert [s["stage"] for s in ct["stages"]] == ["al0", "atmc32", "atmc4"]
    for stage in report["stage_results"][1:]:
        assert len(stage["history"]["geco_lambda"]) == 1 and "geco_constraint" in stage["history"], stage["stage"]
    assert "geco_lambda" not in report["stage_results"][0]["history"]  # DA trains with the fixed mix
    md = (wd / "report.md").read_text()
    assert "## Clean target (GECO)" in md and "--clean_target_drop=0.02" in md
    assert ("**met**" in md) == ct["met"]


@pytest.mark.slow
def test_a_tiny_run_against_three_threat_models(tmp_path):
    """--threats=linf,l2,l1 --domain_weighting=minmax at the tiniest settings (--method=al0: one compression
    stage, to stay near a minute; the ATMC stages take the same term, tests/test_multi_threat.py): the report
    has accuracy per threat and under the union, on Keras and on the .tflite, and the domain weights of every
    trained stage."""
    wd = tmp_path / "wd"
    r = run_pipeline("--threats=linf,l2,l1", "--domain_weighting=minmax", "--minmax_step=0.2", "--method=al0", "--size_ratio=0.3",
                     "--limit_train=200", "--limit_test=60", "--da_epochs=1", "--al0_epochs=1",
                     "--pgd_steps=1", "--eval_pgd_steps=1", "--micro_samples=2", "--square_queries=20",
                     "--verbose=0", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    tm = report["threat_models"]
    assert tm["names"] == ["linf", "l2", "l1"]
    assert [tm["threats"][n]["eps"] for n in ("linf", "l2", "l1")] == [0.1, 0.5, 1.0]
    for side in ("keras", "tflite"):
        acc = tm[side]
        assert set(acc["per_attack"]) == {"linf", "l2", "l1"}
        assert acc["worst_case"] <= min(acc["clean"], *acc["per_attack"].values())
    assert report["summary"]["keras_union"] == tm["keras"]["worst_case"]
    assert [st["stage"] for st in tm["domain_weights"]] == ["da", "al0"]
    for st in tm["domain_weights"]:
        final = [st["weights"][n][-1] for n in ("linf", "l2", "l1")]
        assert sum(final) == pytest.approx(1.0, abs=1e-5) and final != [pytest.approx(1 / 3)] * 3
    md = (wd / "report.md").read_text()
    assert "| model | clean | linf | l2 | l1 | union |" in md and "| stage | w_linf | w_l2 | w_l1 |" in md
    assert (wd / "domain_weights.png").stat().st_size > 0


@pytest.mark.slow
def test_boost_ships_one_int8_ensemble_with_robust_accuracy_per_round(tmp_path):
    """--method=boost: a row per round in report.json / report.md, the plot, one .tflite that LiteRT runs
    within 1 point of the Keras ensemble and TFLite Micro runs."""
    wd = tmp_path / "boost"
    r = run_pipeline(*TINY, "--method=boost", "--rounds=2", "--boost_epochs=3", "--model=mlp",
                     "--da_lr=0.01", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads((wd / "report.json").read_text())
    assert [row["round"] for row in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        assert set(row["per_attack"]) == {"pgd", "apgd-ce", "apgd-dlr"}
        assert row["worst_case"] <= min(row["clean"], *row["per_attack"].values())
    assert report["summary"]["keras_robust"] == report["rounds"][-1]["worst_case"]
    assert abs(report["summary"]["tflite_minus_keras_clean"]) <= 0.01 + 1e-9
    assert report["micro"]["ok"] and report["micro_compressed"]["ok"]
    assert report["phone"]["ops"].count("SOFTMAX") == 2              # both learners in the one file
    assert report["device_bytes"]["litert"] == (wd / "export" / "model_int8.tflite").stat().st_size
    md = (wd / "report.md").read_text()
    assert "| 2 |" in md and (wd / "robust_per_round.png").exists()
    assert json.loads((wd / "boost" / "boost.json").read_text())["rounds"] == report["rounds"]


def test_the_default_scoring_keeps_every_layer_of_a_mobilenet_v2_style_model():
    """Issue 14: at a budget of 23% of the weights (what the default --size_ratio leaves this model with 4-bit
    codes), the paper's magnitude top-k empties the stem and both depthwise kernels of an untrained
    MobileNetV2-style model, which cuts every path to the logits; the pipeline's default scoring (LAMP) keeps
    a path through every layer."""
    import numpy as np
    import tensorflow as tf

    from atmc_tf.constraints.sparsity import select_l0
    from atmc_tf.layers import atmc_wrappers, wrap_model
    from atmc_tf.training.diagnostics import path_report
    from conftest import mobilenet_v2_style
    from pipelines.flags_def import PipelineConfig

    def project(scoring):
        net = wrap_model(mobilenet_v2_style())
        kernels = [w.layer.kernel for w in atmc_wrappers(net)]
        k = int(0.23 * sum(int(np.prod(v.shape)) for v in kernels))
        for v, kept in zip(kernels, select_l0([tf.convert_to_tensor(v) for v in kernels], k, scoring)):
            v.assign(kept)
        return path_report(net)

    magnitude = project("magnitude")
    assert not magnitude["reaches_output"] and "atmc_b1_dw" in magnitude["cut"]
    default = project(PipelineConfig.__dataclass_fields__["l0_scoring"].default)
    assert default["reaches_output"] and default["cut"] == []
