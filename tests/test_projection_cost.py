"""pipelines.stages.projection_cost: what the last step of a quantization stage (W <- Q_b(W)) costs, measured
with the epochs' own validation metrics, and the warning line a large cost gets (ATMC-2 lost 55 points of
adversarial validation accuracy there on digits with no epoch line showing it)."""
import types

from pipelines import report, stages


class _Trainer:
    def __init__(self, after):
        self.after, self.calls = after, []

    def evaluate(self, x, y, **kw):
        self.calls.append(kw)
        return dict(self.after)


DATA = types.SimpleNamespace(x_val=[0], y_val=[0])


def test_a_costly_projection_gets_a_warning_line_naming_the_larger_drop():
    hist = {"val_clean_acc": [0.9, 0.986], "val_adv_acc": [0.7, 0.812], "w_z_dist": [10.8, 11.0]}
    t = _Trainer({"clean_acc": 0.91, "adv_acc": 0.264, "loss": 1.0})
    p = stages.projection_cost("atmc2", types.SimpleNamespace(bits=2), t, DATA, hist)
    assert t.calls and t.calls[0]["return_dict"] is True
    assert (p["val_clean_before"], p["val_adv_before"]) == (0.986, 0.812)
    assert abs(p["drop"] - 0.548) < 1e-9 and p["w_z_dist"] == 11.0
    assert p["line"].startswith("stage atmc2: the final projection onto the 2-bit set cost 54.8 points of "
                                "adversarial validation accuracy (81.2% -> 26.4%)"), p["line"]
    assert "w_z_dist 11" in p["line"] and "--bits" in p["line"] and "--ste_epochs" in p["line"]
    # the fine-tune on the set follows (--ste_epochs): measured and shown, not warned about (its row ships)
    q = stages.projection_cost("atmc2", types.SimpleNamespace(bits=2), _Trainer({"clean_acc": 0.91, "adv_acc": 0.264}),
                               DATA, hist, ste_next=True)
    assert q["line"] is None and abs(q["drop"] - 0.548) < 1e-9
    assert report._projection(p) == "clean 98.6% -> 91.0%, adversarial 81.2% -> 26.4%"
    assert report.projection_warnings([{"projection": p}, {"projection": None}, {}]) == [p["line"]]
    assert report.projection_warnings(None) == []  # a boost report: no stages


def test_a_cheap_projection_is_recorded_without_a_warning():
    hist = {"val_clean_acc": [0.99], "val_adv_acc": [0.80]}
    p = stages.projection_cost("atmc4", types.SimpleNamespace(bits=4), _Trainer({"clean_acc": 0.985, "adv_acc": 0.78}),
                               DATA, hist)
    assert p["line"] is None and abs(p["drop"] - 0.02) < 1e-9 and p["w_z_dist"] is None
    # 4.9 points is under the threshold, 5.1 over it: the threshold is PROJECTION_WARN
    p = stages.projection_cost("q", types.SimpleNamespace(bits=3), _Trainer({"clean_acc": 0.949}), DATA,
                               {"val_clean_acc": [1.0]})
    assert p["line"] is not None and "points of validation accuracy (100.0% -> 94.9%)" in p["line"]
    assert p["val_adv_before"] is None and report._projection(p) == "clean 100.0% -> 94.9%"
    p = stages.projection_cost("q", types.SimpleNamespace(bits=3), _Trainer({"clean_acc": 0.951}), DATA,
                               {"val_clean_acc": [1.0]})
    assert p["line"] is None


def test_no_bits_or_no_epoch_means_no_measurement():
    t = _Trainer({"clean_acc": 0.1})
    assert stages.projection_cost("atmc32", types.SimpleNamespace(bits=None), t, DATA, {"val_clean_acc": [0.9]}) is None
    assert stages.projection_cost("atmc4", types.SimpleNamespace(bits=4), t, DATA, {}) is None
    assert not t.calls  # nothing evaluated
    assert report._projection(None) == ""
