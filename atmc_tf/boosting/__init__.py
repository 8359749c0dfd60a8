"""Robust multiclass boosting (costs.py: the math; ensemble.py: the combined model; loop.py: the rounds)."""
