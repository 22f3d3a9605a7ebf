"""examples/toy/stats.py against hand-computed cases (t quantiles from the published table)."""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "toy"))

import stats  # noqa: E402

T975_DF1 = 12.706204736174698  # Student t, 0.975 quantile, 1 degree of freedom
T975_DF2 = 4.302652729749464  # 2 degrees of freedom
T975_DF4 = 2.7764451051977934  # 4 degrees of freedom


def test_t_interval_hand_computed():
    # [1, 2, 3]: mean 2, sd (ddof 1) 1, half-width t(0.975, 2) * 1 / sqrt(3)
    ti = stats.t_interval([1.0, 2.0, 3.0])
    half = T975_DF2 / math.sqrt(3)
    assert (ti["mean"], ti["sd"], ti["n"]) == (2.0, 1.0, 3)
    assert ti["lo"] == pytest.approx(2 - half, rel=1e-9) and ti["hi"] == pytest.approx(2 + half, rel=1e-9)
    # five seeds: sd of [0, 0, 0, 0, 5] is sqrt(5), mean 1
    ti = stats.t_interval([0.0, 0.0, 0.0, 0.0, 5.0])
    assert ti["hi"] - ti["mean"] == pytest.approx(T975_DF4 * math.sqrt(5) / math.sqrt(5), rel=1e-9)


def test_t_interval_one_seed_and_bad_input():
    ti = stats.t_interval([7.0])
    assert ti["mean"] == 7.0 and math.isnan(ti["lo"]) and math.isnan(ti["hi"])
    with pytest.raises(ValueError, match="x"):
        stats.t_interval([])


def test_paired_differences_per_evaluation():
    fd = np.array([[3.0, 5.0], [5.0, 9.0]])
    ref = np.ones((2, 2))
    d = stats.paired_differences(fd, ref)
    # differences [2, 4] and [4, 8]: means 3 and 6, sds sqrt(2) and 2 sqrt(2)
    assert [x["mean"] for x in d] == [3.0, 6.0]
    assert d[1]["hi"] - d[1]["mean"] == pytest.approx(T975_DF1 * 2 * math.sqrt(2) / math.sqrt(2), rel=1e-9)
    with pytest.raises(ValueError, match="same"):
        stats.paired_differences(fd, np.ones((3, 2)))


def test_ratio_interval_is_geometric():
    # logs ln2 and ln8: mean 2 ln2 (geometric mean 4), sd sqrt(2) ln2, half-width t(0.975, 1) ln2
    r = stats.ratio_interval([2.0, 8.0])
    assert r["gmean"] == pytest.approx(4.0, rel=1e-12)
    assert math.log(r["hi"] / 4) == pytest.approx(T975_DF1 * math.log(2), rel=1e-9)
    assert math.log(4 / r["lo"]) == pytest.approx(T975_DF1 * math.log(2), rel=1e-9)
    with pytest.raises(ValueError, match="ratios"):
        stats.ratio_interval([1.0, 0.0])


def test_steps_to_reach():
    # 400 -> 100 between steps 100 and 200: FD 200 is a quarter of the way in log FD... halfway: ln2 / ln4
    assert stats.steps_to_reach([100, 200], [400.0, 100.0], 200.0) == pytest.approx(150.0)
    assert stats.steps_to_reach([100, 200], [150.0, 100.0], 200.0) == 100.0
    assert stats.steps_to_reach([100, 200], [400.0, 300.0], 200.0) is None


def test_steps_ratios_censoring():
    steps = [100, 200]
    fd = np.array([[400.0, 300.0], [400.0, 100.0]])  # seed 0 never reaches 200; seed 1 at step 150
    ref = np.array([[400.0, 100.0], [400.0, 400.0]])  # seed 0 at 150; seed 1 never
    out = stats.steps_ratios(steps, fd, ref, 200.0)
    assert out["censored"] == [True, False] and out["ref_censored"] == [False, True]
    assert out["arm_steps"] == pytest.approx([200.0, 150.0]) and out["ref_steps"] == pytest.approx([150.0, 200.0])
    assert out["ratios"] == pytest.approx([200 / 150, 150 / 200])
    # per-seed targets
    out = stats.steps_ratios(steps, fd, ref, [350.0, 100.0])
    assert out["ratios"][1] == pytest.approx(200 / 200) and out["ref_censored"] == [False, True]


def test_speed_verdicts():
    below, above, across = dict(n=5, lo=0.5, hi=0.9), dict(n=5, lo=1.1, hi=1.5), dict(n=5, lo=0.8, hi=1.2)
    none = [False] * 5
    assert stats.speed_verdict(below, none, none) == "faster"
    assert stats.speed_verdict(above, none, none) == "slower"
    assert stats.speed_verdict(across, none, none) == "no detectable difference"
    # a censored arm seed is a lower bound on its ratio: "faster" cannot be claimed from it
    assert stats.speed_verdict(below, [True] + none[1:], none) == "no detectable difference"
    assert stats.speed_verdict(above, none, [True] + none[1:]) == "no detectable difference"
    assert stats.speed_verdict(dict(n=1, lo=math.nan, hi=math.nan), [False], [False]).endswith("(one seed)")
    assert stats.level_verdict(dict(n=5, lo=-3.0, hi=-1.0)) == "better"
    assert stats.level_verdict(dict(n=5, lo=1.0, hi=3.0)) == "worse"
    assert stats.level_verdict(dict(n=5, lo=-1.0, hi=3.0)) == "no detectable difference"


def test_evaluator_noise():
    # differences +-2: mean square 4 = 2 var -> sd sqrt(2)
    assert stats.evaluator_noise([10.0, 12.0], [12.0, 10.0]) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="fd_a"):
        stats.evaluator_noise([1.0], [1.0, 2.0])


def test_summary_compares_with_best_repa_and_with_the_best_peer():
    # the peer (REPA + time weight) is the best REPA-family arm at the early budget (step 200), the plain REPA
    # arm is the best REPA; VRPO reaches the peer's step-200 FD (200) at step 100: ratio (c) 100 / 200 = 0.5,
    # and REPA's step-200 FD (300) between steps 100 and 200 by log-linear interpolation
    from report import summarise
    from train import Arm

    steps = [100, 200, 400]
    curves = {"none": [900, 600, 300], "repa@2": [500, 300, 150], "repa@2:time_weight=sigmoid": [400, 200, 100],
              "vrpo@1": [200, 100, 50]}
    records = [dict(arm=label, seed=seed, evals=[dict(step=s, fd=f * (1 + 0.01 * seed), acc=0.5) for s, f in zip(steps, fds)],
                    step_ms=1.0, wall_s=1.0, metrics={}) for label, fds in curves.items() for seed in (0, 1, 2)]
    summary, ref = summarise(records, [Arm.parse(k) for k in curves], ref_step=200, floor=10.0)
    assert ref["best_repa"] == "repa@2" and ref["best_peer"] == "repa@2:time_weight=sigmoid"
    assert summary["vrpo@1"]["ratio_c"]["interval"]["gmean"] == pytest.approx(0.5)
    w = (math.log(400) - math.log(300)) / (math.log(400) - math.log(200))  # the peer crosses 300 between 100 and 200
    assert summary["vrpo@1"]["ratio_a"]["interval"]["gmean"] == pytest.approx(100 / 200)
    assert summary["repa@2:time_weight=sigmoid"]["ratio_a"]["interval"]["gmean"] == pytest.approx((100 + w * 100) / 200)


def test_versus_compares_every_arm_with_a_chosen_base():
    # base vrpo@1 reaches FD 100 (x the seed's scale) at step 200; the z-scored arm gets there at step 400
    # (ratio 2 on every seed: slower) and ends 50 x scale above it (worse); the tau arm crosses on one
    # side or the other by seed (no detectable difference)
    from report import summarise, versus, versus_markdown
    from train import Arm

    steps = [100, 200, 400]
    curves = {"repa@2": [500, 300, 150], "vrpo@1": [200, 100, 50], "vrpo@1:target_norm=zscore": [400, 200, 100]}
    records = [dict(arm=label, seed=seed, evals=[dict(step=s, fd=f * (1 + 0.01 * seed), acc=0.5) for s, f in zip(steps, fds)],
                    step_ms=1.0, wall_s=1.0, metrics={}) for label, fds in curves.items() for seed in (0, 1, 2)]
    tau = {0: [100, 50, 25], 1: [400, 200, 100], 2: [200, 100, 50]}  # seed 2: the base's own curve (x 1.02 / 1.02)
    records += [dict(arm="vrpo@1:tau=0.3", seed=seed, evals=[dict(step=s, fd=f * (1 + 0.01 * seed), acc=0.5)
                for s, f in zip(steps, fds)], step_ms=1.0, wall_s=1.0, metrics={}) for seed, fds in tau.items()]
    arms = [Arm.parse(k) for k in [*curves, "vrpo@1:tau=0.3"]]
    summary, _ = summarise(records, arms, ref_step=200, floor=10.0)
    rows = versus(summary, "vrpo@1", ref_step=200)
    assert set(rows) == {"repa@2", "vrpo@1:target_norm=zscore", "vrpo@1:tau=0.3"}
    z = rows["vrpo@1:target_norm=zscore"]
    assert z["ratio"]["gmean"] == pytest.approx(2.0) and z["speed"] == "slower"
    assert z["end"]["mean"] == pytest.approx(np.mean([50 * (1 + 0.01 * s) for s in range(3)])) and z["level"] == "worse"
    t = rows["vrpo@1:tau=0.3"]
    assert t["ratio"]["gmean"] == pytest.approx((0.5 * 2.0 * 1.0) ** (1 / 3)) and t["speed"] == "no detectable difference"
    assert "| `vrpo@1:target_norm=zscore` | 2.00 [2.00, 2.00] | slower |" in versus_markdown(rows, "vrpo@1", 200)
    with pytest.raises(ValueError, match="base"):
        versus(summary, "vrpo@2", ref_step=200)


def test_paired_evaluator_noise_cancels_the_shared_draw():
    # each seed's redraw shifts every arm by the same offset (the shared sample noise): the paired
    # difference to best REPA does not move, so its evaluator noise is zero while the unpaired one is not;
    # a redraw that moves one arm by +2 on one of two seeds gives sqrt(mean(d^2) / 2) = sqrt((4 / 2) / 2) = 1
    from report import calibration_checks, summarise
    from train import Arm

    curves = {"none": [900, 600], "repa@2": [500, 300]}

    def checks(bump):
        records = [dict(arm=label, seed=seed, step_ms=1.0, wall_s=1.0, metrics={},
                        evals=[dict(step=100, fd=fds[0] + seed, acc=0.5),
                               dict(step=200, fd=fds[1] + 3 * seed, acc=0.5,
                                    fd_redraw=fds[1] + 3 * seed + 10 * (seed + 1) + (bump if (label, seed) == ("none", 1) else 0))])
                   for label, fds in curves.items() for seed in (0, 1)]
        summary, ref = summarise(records, [Arm.parse(k) for k in curves], ref_step=200, floor=10.0)
        return calibration_checks(summary, ref), summary

    c, summary = checks(0.0)
    # the final FD is the mean of the two draws: none's seeds 0, 1 give (600 + 610) / 2 and (603 + 623) / 2
    assert summary["none"]["fd_seeds"][1][-1] == pytest.approx((603 + 623) / 2)
    assert summary["none"]["fd"]["mean"][0] == pytest.approx(900.5)  # earlier evaluations: one draw
    assert c["evaluator_sd"] == pytest.approx(math.sqrt((100 + 400) / 2 / 2))
    assert c["evaluator_sd_paired"] == pytest.approx(0.0)
    assert checks(2.0)[0]["evaluator_sd_paired"] == pytest.approx(1.0)
