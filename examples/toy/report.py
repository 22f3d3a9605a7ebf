"""Aggregation of the toy benchmark's runs: per-arm intervals, comparisons with best REPA, table, plots.

``summarise`` pairs the runs by seed (only seeds that every arm has), computes per evaluation the
mean FD and its 95% interval, the paired difference against the best REPA arm (the plain ``repa@c``
arm with the lowest mean FD at the early budget ``ref_step``), the per-seed steps-to-quality ratios
(a) to that REPA seed's own FD at ``ref_step`` and (b) to twice the real-vs-real floor, and the
verdicts (``stats.py``).
"""
from __future__ import annotations

import os

import numpy as np

import stats


def _paired(records, arms):
    by_arm = {arm.label: {r["seed"]: r for r in records if r["arm"] == arm.label} for arm in arms}
    seeds = sorted(set.intersection(*(set(v) for v in by_arm.values())))
    if not seeds:
        raise ValueError("records: no seed has a run of every arm; run the missing (arm, seed) pairs")
    return by_arm, seeds


def best_repa(summary, ref_step):
    """The plain REPA arm (no peer options) with the lowest mean FD at ``ref_step``, or None."""
    plain = [k for k, s in summary.items() if s["mode"] == "repa" and not s["kwargs"] and ref_step in s["steps"]]
    return min(plain, key=lambda k: summary[k]["fd"]["mean"][summary[k]["steps"].index(ref_step)], default=None)


def best_peer(summary, ref_step):
    """The REPA-family arm (REPA or a peer: ``mode="repa"``, any options) with the lowest mean FD at ``ref_step``."""
    family = [k for k, s in summary.items() if s["mode"] == "repa" and ref_step in s["steps"]]
    return min(family, key=lambda k: summary[k]["fd"]["mean"][summary[k]["steps"].index(ref_step)], default=None)


def _speed(steps, fd, ref_fd, targets) -> dict:
    """``stats.steps_ratios`` of ``fd`` against ``ref_fd`` with its ``interval`` and speed ``verdict`` added."""
    r = stats.steps_ratios(steps, fd, ref_fd, targets)
    r.update(interval=stats.ratio_interval(r["ratios"]))
    r["verdict"] = stats.speed_verdict(r["interval"], r["censored"], r["ref_censored"])
    return r


def summarise(records, arms, ref_step, floor):
    """Per-arm statistics over paired seeds; returns (summary, reference) where reference names best REPA."""
    by_arm, seeds = _paired(records, arms)
    summary = {}
    for arm in arms:
        recs = [by_arm[arm.label][s] for s in seeds]
        steps = [e["step"] for e in recs[0]["evals"]]
        fd = np.array([[e["fd"] for e in r["evals"]] for r in recs])
        first, redraw = fd[:, -1].tolist(), [r["evals"][-1].get("fd_redraw") for r in recs]
        if None not in redraw:  # the last evaluation is the mean of its two sample draws (half the variance)
            fd[:, -1] = (fd[:, -1] + np.array(redraw)) / 2
        acc = np.array([[e["acc"] for e in r["evals"]] for r in recs])
        ci = stats.curve_intervals(fd)
        summary[arm.label] = dict(
            mode=arm.mode, coeff=arm.coeff, kwargs=arm.kwargs, seeds=seeds, steps=steps, fd_seeds=fd.tolist(),
            fd=dict(mean=[c["mean"] for c in ci], lo=[c["lo"] for c in ci], hi=[c["hi"] for c in ci],
                    sd=[c["sd"] for c in ci]),
            acc_mean=acc.mean(0).tolist(), fd_first=first, fd_redraw=redraw,
            step_ms=float(np.mean([r["step_ms"] for r in recs])), wall_s=float(np.mean([r["wall_s"] for r in recs])),
            metrics={k: float(np.mean([r["metrics"].get(k, np.nan) for r in recs])) for k in recs[0]["metrics"]})
    best = best_repa(summary, ref_step)
    if best is None:
        return summary, None
    ref = summary[best]
    i_ref = ref["steps"].index(ref_step)
    ref_fd = np.array(ref["fd_seeds"])
    targets = {"a": ref_fd[:, i_ref], "b": 2 * floor}
    peer = best_peer(summary, ref_step)
    peer_fd = np.array(summary[peer]["fd_seeds"])
    for s in summary.values():
        fd = np.array(s["fd_seeds"])
        diffs = stats.paired_differences(fd, ref_fd)
        s["diff_vs_best_repa"] = dict(mean=[d["mean"] for d in diffs], lo=[d["lo"] for d in diffs],
                                      hi=[d["hi"] for d in diffs])
        s["end_verdict"] = stats.level_verdict(diffs[-1])
        for key, target in targets.items():
            s[f"ratio_{key}"] = _speed(s["steps"], fd, ref_fd, target)
        s["ratio_c"] = _speed(s["steps"], fd, peer_fd, peer_fd[:, i_ref])  # (c): the best peer's FD at ref_step
    reference = dict(best_repa=best, best_peer=peer, ref_step=ref_step, target_a=ref_fd[:, i_ref].tolist(), target_b=2 * floor,
                     floor=floor)
    return summary, reference


def versus(summary, base: str, ref_step: int) -> dict:
    """Every arm against the arm ``base`` (a label in ``summary``), over the same paired seeds: the steps
    ratio to reach ``base``'s own FD at ``ref_step`` (target (a) of the main table with ``base`` as the
    reference) and the paired difference of the final FD (negative: lower), each with its verdict.

    Returns ``{label: dict(ratio=interval, speed=verdict, end=interval, level=verdict)}``, ``base`` left out.
    """
    if base not in summary:
        raise ValueError(f"base: expected one of the arms {sorted(summary)}, got {base!r}; add it to --arms")
    ref = summary[base]
    ref_fd = np.array(ref["fd_seeds"])
    target = ref_fd[:, ref["steps"].index(ref_step)]
    out = {}
    for label, s in summary.items():
        if label == base:
            continue
        fd = np.array(s["fd_seeds"])
        r = _speed(s["steps"], fd, ref_fd, target)
        end = stats.paired_differences(fd, ref_fd)[-1]
        out[label] = dict(ratio=r["interval"], speed=r["verdict"], end=end, level=stats.level_verdict(end))
    return out


def versus_markdown(rows: dict, base: str, ref_step: int) -> str:
    """The table of :func:`versus`."""
    lines = [f"Against `{base}` (steps to reach its own FD at step {ref_step}, over its steps; final FD, paired):", "",
             "| arm | steps ratio | speed verdict | end difference | end verdict |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        iv, e = r["ratio"], r["end"]
        lines.append(f"| `{label}` | {_ci(iv['gmean'], iv['lo'], iv['hi'], '{:.2f}')} | {r['speed']} | "
                     f"{_ci(e['mean'], e['lo'], e['hi'], '{:+.0f}')} | {r['level']} |")
    return "\n".join(lines) + "\n"


def calibration_checks(summary, reference):
    """The regime's three conditions (docs/benchmark.md), measured on this summary."""
    out = {}
    if "none" in summary and reference:
        s, ref = summary["none"], summary[reference["best_repa"]]
        i = s["steps"].index(reference["ref_step"])
        d = stats.t_interval(np.array(ref["fd_seeds"])[:, i] - np.array(s["fd_seeds"])[:, i])
        out["repa_minus_none_at_ref"] = d
        out["repa_ahead_early"] = bool(d["hi"] < 0)
        m = s["fd"]["mean"]
        out["none_last_two_change"] = abs(m[-1] - m[-2]) / m[-2]
        out["none_flattening"] = bool(out["none_last_two_change"] <= 0.15)
    if reference:
        best_end = min(v["fd"]["mean"][-1] for v in summary.values())
        out["best_end_over_floor"] = best_end / reference["floor"]
        out["best_within_2x_floor"] = bool(out["best_end_over_floor"] <= 2)
    a = [x for s in summary.values() for x in zip(s["fd_first"], s["fd_redraw"]) if x[1] is not None]
    if a:
        out["evaluator_sd"] = stats.evaluator_noise([f for f, _ in a], [r for _, r in a])
        sds = [s["fd"]["sd"][-1] for s in summary.values() if len(s["seeds"]) > 1]
        out["seed_sd_end_median"] = float(np.median(sds)) if sds else float("nan")
    if a and reference and len(next(iter(summary.values()))["seeds"]) > 1:
        out.update(_paired_noise(summary, reference["best_repa"]))
    return out


def _paired_noise(summary, best):
    """The evaluator's noise in what the verdicts use, the paired difference to best REPA at the last step.

    A seed's evaluation noise is shared by every arm (the same sample noise), so much of the unpaired
    noise cancels in a paired difference; its sd (two draws) is set against the seeds' sd of that difference.
    """
    ref = summary[best]
    d, d_re, sds = [], [], []
    for label, s in summary.items():
        if label == best or None in s["fd_redraw"] or None in ref["fd_redraw"]:
            continue
        d += (np.array(s["fd_first"]) - np.array(ref["fd_first"])).tolist()
        d_re += (np.array(s["fd_redraw"]) - np.array(ref["fd_redraw"])).tolist()
        sds.append(float((np.array(s["fd_seeds"])[:, -1] - np.array(ref["fd_seeds"])[:, -1]).std(ddof=1)))
    if not d:
        return {}
    return {"evaluator_sd_paired": stats.evaluator_noise(d, d_re), "seed_sd_paired_end_median": float(np.median(sds))}


def _ci(m, lo, hi, fmt="{:.0f}"):
    if np.isnan(lo):
        return fmt.format(m)
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def first_look(summary, floor, eval_samples, sample_steps) -> str:
    """One seed: a plain table (FD and class accuracy of the samples per evaluation), no intervals, no verdicts."""
    steps = next(iter(summary.values()))["steps"]
    rows = ["| arm | " + " | ".join(f"FD @{x}" for x in steps) + f" | accuracy @{steps[-1]} | ms/step |",
            "|" + "---|" * (len(steps) + 3)]
    for label, s in summary.items():
        rows.append(f"| `{label}` | " + " | ".join(f"{m:.0f}" for m in s["fd"]["mean"])
                    + f" | {s['acc_mean'][-1]:.2f} | {s['step_ms']:.0f} |")
    return ("\n".join(rows) + f"\n\nFD: Frechet distance of {eval_samples} class-conditional samples (Euler, "
            f"{sample_steps} steps) to held-out real images in the evaluation classifier's features; lower is better; "
            f"real-vs-real floor {floor:.1f}. Accuracy: the classifier's accuracy on the samples' intended classes.\n\n"
            "**One seed is a demo, not evidence**: `--preset standard` runs 5 paired seeds and reports intervals, "
            "steps ratios and verdicts.\n")


def markdown(summary, reference, checks, floor, eval_samples, sample_steps, ref_set="450 held-out digits"):
    """The results table (early budget, end, paired differences, steps ratios, verdicts) and notes."""
    steps = next(iter(summary.values()))["steps"]
    seeds = next(iter(summary.values()))["seeds"]
    if len(seeds) == 1:
        return first_look(summary, floor, eval_samples, sample_steps)
    early = reference["ref_step"] if reference else steps[0]
    ie = steps.index(early)
    head = ["arm", f"FD @{early}", f"FD @{steps[-1]}", f"vs best REPA @{early}", f"vs best REPA @{steps[-1]}",
            "steps ratio (a)", "steps ratio (b)", "speed verdict (a)", "steps ratio (c)", "speed verdict (c)",
            "end verdict", "ms/step"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary.items():
        f = s["fd"]
        cells = [f"`{label}`", _ci(f["mean"][ie], f["lo"][ie], f["hi"][ie]), _ci(f["mean"][-1], f["lo"][-1], f["hi"][-1])]
        if reference:
            d = s["diff_vs_best_repa"]
            cells += [_ci(d["mean"][ie], d["lo"][ie], d["hi"][ie], "{:+.0f}"),
                      _ci(d["mean"][-1], d["lo"][-1], d["hi"][-1], "{:+.0f}")]
            for key in "abc":
                if key == "c":
                    cells.append(s["ratio_a"]["verdict"])
                r = s[f"ratio_{key}"]
                iv = r["interval"]
                cens, rc = sum(r["censored"]), sum(r["ref_censored"])
                flags = ", ".join(x for x in (f"{cens} censored" if cens else "", f"{rc} REPA censored" if rc else "") if x)
                cells.append(_ci(iv["gmean"], iv["lo"], iv["hi"], "{:.2f}") + (f" ({flags})" if flags else ""))
            cells += [s["ratio_c"]["verdict"], s["end_verdict"]]
        else:
            cells += ["-"] * 8
        cells.append(f"{s['step_ms']:.0f}")
        rows.append("| " + " | ".join(cells) + " |")
    curve = ["| arm | " + " | ".join(f"@{x}" for x in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for label, s in summary.items():
        curve.append(f"| `{label}` | " + " | ".join(f"{m:.0f}" for m in s["fd"]["mean"]) + " |")
    notes = [f"FD: Frechet distance of {eval_samples} class-conditional samples (Euler, {sample_steps} steps) to the "
             f"{ref_set} in the evaluation classifier's features (at the last step: the mean of two sample "
             f"draws); real-vs-real floor {floor:.1f}. "
             f"Mean [95% t interval] over paired seeds {seeds}."]
    if len(seeds) == 1:
        notes.append("**One seed is a demo, not evidence**: no interval, no verdict (`--preset standard` runs 5 seeds).")
    if reference:
        notes.append(f"Best REPA: `{reference['best_repa']}` (lowest mean FD at step {early}). vs best REPA: paired "
                     "difference in FD (negative: lower FD). Steps ratio: geometric mean over seeds of the steps this "
                     "arm needs over the steps best REPA needs, (a) to reach that REPA seed's own FD at step "
                     f"{early}, (b) to reach twice the floor ({2 * floor:.1f}); below 1 is faster; log FD interpolated "
                     "linearly between evaluations; a seed that never reaches the target counts at the last step "
                     "(censored: a bound, and no verdict in the direction it flatters). (c): the same as (a) against "
                     f"the best of REPA and its peers at step {early}, `{reference['best_peer']}`.")
    if "evaluator_sd" in checks:
        seed_sd = checks["seed_sd_end_median"]
        notes.append(f"Evaluator noise (same model, two sample draws, last step): sd {checks['evaluator_sd']:.1f} FD"
                     + (f", against a median seed-to-seed sd of {seed_sd:.1f} at the last step" if not np.isnan(seed_sd) else "")
                     + (f"; in the paired difference to best REPA that the verdicts use, sd "
                        f"{checks['evaluator_sd_paired']:.1f} for one draw, {checks['evaluator_sd_paired'] / 2 ** 0.5:.1f} "
                        f"for the final FD (the mean of two draws), against the seeds' "
                        f"{checks['seed_sd_paired_end_median']:.1f}" if "evaluator_sd_paired" in checks else "") + ".")
    if "repa_minus_none_at_ref" in checks:
        d = checks["repa_minus_none_at_ref"]
        notes.append(f"Regime: best REPA - none at step {early}: {_ci(d['mean'], d['lo'], d['hi'], '{:+.0f}')}; "
                     f"none's last two evaluations differ by {100 * checks['none_last_two_change']:.0f}% (flattening "
                     f"if <= 15%); best final FD / floor {checks['best_end_over_floor']:.2f} (<= 2 wanted).")
    return "\n".join(rows) + "\n\nMean FD per evaluation:\n\n" + "\n".join(curve) + "\n\n" + "\n".join(notes) + "\n"


def plots(summary, reference, title, out):
    """``quality.png`` (FD curves with 95% bands; paired differences vs best REPA) and ``forest.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10" if len(summary) <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (label, s) in enumerate(summary.items()):
        c = "black" if s["mode"] == "none" else colors(i % colors.N)
        st_, f = np.array(s["steps"]), s["fd"]
        axes[0].plot(st_, f["mean"], marker="o", ms=3, color=c, label=label)
        if len(s["seeds"]) > 2:  # with two seeds a t interval (1 dof) spans the plot
            axes[0].fill_between(st_, np.maximum(f["lo"], 1e-3), f["hi"], color=c, alpha=0.12)
        if reference:
            d = s["diff_vs_best_repa"]
            axes[1].plot(st_, d["mean"], marker="o", ms=3, color=c)
            if len(s["seeds"]) > 2:
                axes[1].fill_between(st_, d["lo"], d["hi"], color=c, alpha=0.12)
    if reference:
        for y, name in ((reference["floor"], "floor"), (2 * reference["floor"], "2x floor")):
            axes[0].axhline(y, color="grey", ls=":", lw=1)
            axes[0].text(axes[0].get_xlim()[0], y, name, fontsize=7, va="bottom", color="grey")
        axes[1].axhline(0, color="grey", lw=1)
    n = len(next(iter(summary.values()))["seeds"])
    band = ", 95% band" if n > 2 else ""  # (with two seeds a t interval spans the plot; with one there is none)
    axes[0].set(xlabel="training steps", ylabel=f"FD ({'mean of ' + str(n) + ' seeds' if n > 1 else 'one seed'}{band})",
                yscale="log")
    if reference:
        axes[0].set_ylim(bottom=0.8 * reference["floor"])
    axes[1].set(xlabel="training steps", ylabel="FD - best REPA's" + (", paired" + band if n > 1 else ""))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(summary) + 2) // 3), 1, 1))
    fig.savefig(os.path.join(out, "quality.png"), dpi=80)
    plt.close(fig)
    if reference:
        _forest(summary, reference, title, out, plt)


def _forest(summary, reference, title, out, plt):
    labels = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.4 * len(labels)), sharey=True)
    names = {"a": f"(a) to best REPA's FD at step {reference['ref_step']}", "b": "(b) to twice the floor"}
    from matplotlib.ticker import FixedLocator, NullLocator

    for ax, key in zip(axes, "ab"):
        ends = [v for label in labels for v in (summary[label][f"ratio_{key}"]["interval"][k] for k in ("lo", "hi"))
                if not np.isnan(v)]
        ax.set_xscale("log")
        ax.set_xlim(min([0.5] + ends) * 0.9, max([2.0] + ends) * 1.1)
        ax.xaxis.set_major_locator(FixedLocator([0.25, 0.5, 0.67, 1, 1.5, 2, 4]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        for y, label in enumerate(labels):
            iv = summary[label][f"ratio_{key}"]["interval"]
            lo, hi = (iv["lo"], iv["hi"]) if not np.isnan(iv["lo"]) else (iv["gmean"], iv["gmean"])
            ax.errorbar(iv["gmean"], y, xerr=[[iv["gmean"] - lo], [hi - iv["gmean"]]], fmt="o", capsize=3,
                        color="black" if summary[label]["mode"] == "none" else "C0")
        ax.axvline(1, color="grey", lw=1)
        ax.set(xlabel="steps ratio vs best REPA (< 1 faster)", title=names[key])
        ax.grid(alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(title + ": steps ratios, geometric mean over seeds, 95% interval")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "forest.png"), dpi=80)
    plt.close(fig)
