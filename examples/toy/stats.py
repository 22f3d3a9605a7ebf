"""Statistics of the toy benchmark: intervals over paired seeds, steps to quality, verdicts.

Seeds are paired: runs with the same seed share the model initialisation, the batches, the times and
the noise (``train.py``), so arms are compared seed by seed. Every interval is a two-sided Student t
interval over seeds (``scipy.stats.t``); ratios are handled on the log scale (the interval of the
mean log ratio, exponentiated: a geometric mean and its interval).

Steps to reach a target FD interpolate log FD linearly in the step between evaluations. A seed
whose curve never reaches the target within the run is *censored*: its step count is taken as the
last evaluated step, a lower bound; a ratio with a censored numerator is a lower bound, with a
censored denominator an upper bound, and the verdict refuses the direction such a bound would
flatter (see ``speed_verdict``).

Shape:
    curves ``fd`` are arrays (S, E): S seeds (the same seeds, in the same order, for every arm) by
    E evaluations at ``steps`` (E,).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

LEVEL = 0.95


def t_interval(x, level: float = LEVEL) -> dict:
    """Mean of ``x`` (S,) and its two-sided t interval; ``lo``/``hi`` are NaN with one value."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"x: expected a non-empty 1-d array of per-seed values, got shape {x.shape}")
    m, n = float(x.mean()), len(x)
    if n < 2:
        return dict(mean=m, lo=math.nan, hi=math.nan, n=n, sd=math.nan)
    sd = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return dict(mean=m, lo=m - half, hi=m + half, n=n, sd=sd)


def curve_intervals(fd, level: float = LEVEL) -> list:
    """Per evaluation, the mean FD over seeds and its interval; ``fd`` (S, E)."""
    fd = np.asarray(fd, dtype=float)
    return [t_interval(fd[:, e], level) for e in range(fd.shape[1])]


def paired_differences(fd, ref, level: float = LEVEL) -> list:
    """Per evaluation, the mean over seeds of ``fd - ref`` (negative: lower FD than ``ref``) and its interval."""
    fd, ref = np.asarray(fd, dtype=float), np.asarray(ref, dtype=float)
    if fd.shape != ref.shape:
        raise ValueError(f"fd, ref: expected the same (seeds, evaluations) shape, got {fd.shape} and {ref.shape}")
    return curve_intervals(fd - ref, level)


def ratio_interval(ratios, level: float = LEVEL) -> dict:
    """Geometric mean of positive ``ratios`` (S,) and its interval (t interval of the logs, exponentiated)."""
    r = np.asarray(ratios, dtype=float)
    if (r <= 0).any() or not np.isfinite(r).all():
        raise ValueError(f"ratios: expected positive finite values, got {r.tolist()}")
    ti = t_interval(np.log(r), level)
    return dict(gmean=math.exp(ti["mean"]), lo=math.exp(ti["lo"]), hi=math.exp(ti["hi"]), n=ti["n"])


def steps_to_reach(steps, fds, target: float):
    """First step at which the curve reaches ``target`` (log FD linear in step between evaluations).

    Returns None when it never does; the first evaluation's step when it is already there (an upper bound).
    """
    prev = None
    for s, f in zip(steps, fds):
        if f <= target:
            if prev is None:
                return float(s)
            s0, f0 = prev
            w = (math.log(f0) - math.log(target)) / (math.log(f0) - math.log(f))
            return s0 + w * (s - s0)
        prev = (s, f)
    return None


def steps_ratios(steps, fd, ref, targets) -> dict:
    """Per seed, steps for ``fd`` to reach its target over steps for ``ref`` to reach the same target.

    ``targets`` is a float or one per seed (S,). Censored seeds (never reaching) count at the last
    step; ``censored`` / ``ref_censored`` flag them. Ratios below 1: ``fd`` gets there sooner.
    """
    fd, ref = np.asarray(fd, dtype=float), np.asarray(ref, dtype=float)
    targets = np.broadcast_to(np.asarray(targets, dtype=float), (len(fd),))
    last = float(steps[-1])
    out = dict(ratios=[], censored=[], ref_censored=[], arm_steps=[], ref_steps=[])
    for f, r, tgt in zip(fd, ref, targets):
        n_arm, n_ref = steps_to_reach(steps, f, tgt), steps_to_reach(steps, r, tgt)
        out["censored"].append(n_arm is None)
        out["ref_censored"].append(n_ref is None)
        n_arm, n_ref = (last if n_arm is None else n_arm), (last if n_ref is None else n_ref)
        out["arm_steps"].append(n_arm)
        out["ref_steps"].append(n_ref)
        out["ratios"].append(n_arm / n_ref)
    return out


def speed_verdict(interval: dict, censored, ref_censored) -> str:
    """"faster" if the ratio's interval lies below 1, "slower" above, else "no detectable difference".

    A censored arm seed makes its ratio a lower bound, so "faster" is not claimed; a censored
    reference seed makes it an upper bound, so "slower" is not claimed.
    """
    if interval["n"] < 2 or math.isnan(interval["lo"]):
        return "no detectable difference (one seed)"
    if interval["hi"] < 1 and not any(censored):
        return "faster"
    if interval["lo"] > 1 and not any(ref_censored):
        return "slower"
    return "no detectable difference"


def level_verdict(interval: dict) -> str:
    """For a paired FD difference (arm - reference): "better" below 0, "worse" above, else no difference."""
    if interval["n"] < 2 or math.isnan(interval["lo"]):
        return "no detectable difference (one seed)"
    if interval["hi"] < 0:
        return "better"
    if interval["lo"] > 0:
        return "worse"
    return "no detectable difference"


def evaluator_noise(fd_a, fd_b) -> float:
    """Sd of one evaluation from pairs of evaluations of the same models with two sample draws.

    For independent draws, ``var(a - b) = 2 var``: returns ``sqrt(mean((a - b)^2) / 2)``.
    """
    a, b = np.asarray(fd_a, dtype=float), np.asarray(fd_b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"fd_a, fd_b: expected two non-empty arrays of the same shape, got {a.shape}, {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2) / 2))
