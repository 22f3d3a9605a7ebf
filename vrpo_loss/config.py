"""``VRPOConfig``: every option of :class:`~vrpo_loss.VRPOAlignment`, with help text and validation.

The defaults were chosen by the ablation on the toy benchmark (``docs/ablation.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from . import conditions
from .config_checks import check_config

__all__ = ["VRPOConfig"]

#: the options' groups, in the order of the options table
GROUPS = ("what it computes", "policy", "advantage", "objective", "sample-level weighting", "reward heads",
          "peer methods", "adaptive strength", "input handling, metrics and the step")


def _opt(default: Any, help: str, *, group: str, when: Optional[conditions.When] = None) -> Any:
    """A field: its default, help text, group and the condition under which it acts (None: always)."""
    assert group in GROUPS, group
    meta = {"help": help, "group": group, "when": when}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class VRPOConfig:
    """Configuration of :class:`~vrpo_loss.VRPOAlignment`; ``VRPOConfig.help()`` lists every field.

    Invalid values (wrong type included) raise ``ValueError`` naming the field, the allowed values and
    what came; the table of kinds and ranges, and the rules between fields, are in ``config_checks.py``.
    """

    # --- what it computes
    mode: str = _opt("vrpo", "'vrpo': the reward-guided objective; 'repa': REPA's projection loss exactly (A/B baseline).", group="what it computes")
    hidden_dim: Optional[int] = _opt(None, "Width D of the diffusion features. None: features are already projected (REPA's zs_tilde).", group="what it computes")
    target_dims: Tuple[int, ...] = _opt((768,), "Width C of each encoder's tokens, one entry per encoder (DINOv2-B: 768).", group="what it computes")
    projector_dim: int = _opt(2048, "Hidden width of REPA's projector MLP (D -> P -> P -> C).", group="what it computes", when=conditions.MLP)
    # --- policy
    policy: str = _opt("correspondence", "Policy family: 'correspondence' (categorical over the encoder tokens of the same image, exact expectation) or 'gaussian' (sampled actions); 'custom' when a Policy instance (vrpo_loss.policies.Policy: one method, objective) is passed as policy= to VRPOAlignment.", group="policy", when=conditions.POLICY)
    tau: float = _opt(0.1, "Correspondence policy: softmax temperature over cos(mu_i, y_j); smaller is sharper. At least 1e-4 (below it the fp32 softmax is already an argmax; at about 6e-39 it gives NaN).", group="policy", when=conditions.CORRESPONDENCE)
    group_size: int = _opt(8, "Gaussian policy: actions G per token (at least 2: a group of one has no relative advantage).", group="policy", when=conditions.GAUSSIAN)
    sigma: float = _opt(0.1, "Gaussian policy: exploration std. In 'sphere' space relative to the unit sphere (noise norm ~ sigma); in 'euclidean' per channel, absolute.", group="policy", when=conditions.GAUSSIAN)
    space: str = _opt("sphere", "Gaussian policy: 'sphere' samples around normalize(mu) and normalises the action; 'euclidean' samples around mu.", group="policy", when=conditions.GAUSSIAN)
    antithetic: bool = _opt(True, "Gaussian policy: draw noise in antithetic pairs (eps, -eps); needs an even group_size.", group="policy", when=conditions.GAUSSIAN)
    control_variate: bool = _opt(False, "Gaussian policy: use the reward's linearisation at the mean as a control variate: its part of the policy gradient is taken in closed form and only the curvature residual is sampled.", group="policy", when=conditions.GAUSSIAN)
    learn_sigma: bool = _opt(False, "Gaussian policy: learn log-sigma per channel (a parameter: give it to the optimizer).", group="policy", when=conditions.GAUSSIAN)
    sigma_final: Optional[float] = _opt(None, "Gaussian policy: if set, sigma decays log-linearly from sigma to this over sigma_decay_steps.", group="policy", when=conditions.GAUSSIAN)
    sigma_decay_steps: int = _opt(0, "Gaussian policy: steps of the sigma schedule (0: constant).", group="policy", when=conditions.GAUSSIAN)
    sigma_min: float = _opt(1e-3, "Lower clamp of the learned sigma.", group="policy", when=conditions.LEARNED_SIGMA)
    sigma_max: float = _opt(1.0, "Upper clamp of the learned sigma.", group="policy", when=conditions.LEARNED_SIGMA)
    max_action_elements: int = _opt(1 << 26, "Gaussian policy: at most this many action elements (G_chunk * B * N * C) are held at once; larger groups are processed in chunks with regenerated noise.", group="policy", when=conditions.GAUSSIAN)
    # --- advantage
    adv_scale: str = _opt("group", "Token advantage scaling (TRL's names): 'group' std per group, 'batch' std of all rewards, 'none' centring only.", group="advantage", when=conditions.POLICY)
    adv_eps: float = _opt(1e-4, "Added to the std when normalising advantages (the policy's and the sample-level ones).", group="advantage", when=conditions.VRPO)
    adv_clip: float = _opt(5.0, "Advantages (the policy's and the sample-level ones) are clamped to [-adv_clip, adv_clip].", group="advantage", when=conditions.VRPO)
    # --- objective
    policy_coeff: float = _opt(1.0, "Weight of the policy term (the group-normalised policy gradient).", group="objective", when=conditions.VRPO)
    anchor_coeff: float = _opt(1.0, "Weight of the anchor term mean(w_b * (1 - cos(mu, y))), REPA's loss up to a constant.", group="objective", when=conditions.VRPO)
    # --- sample-level weighting
    sample_weight: float = _opt(0.0, "Strength kappa of the per-sample weight w_b = clamp(1 + kappa * a_b, w_min, w_max), divided by its batch mean, from the sample-level advantage; 0 turns weighting off, negative favours samples that earn less than usual.", group="sample-level weighting", when=conditions.VRPO)
    w_min: float = _opt(0.5, "Lower bound of the per-sample weight.", group="sample-level weighting", when=conditions.WEIGHTED)
    w_max: float = _opt(2.0, "Upper bound of the per-sample weight.", group="sample-level weighting", when=conditions.WEIGHTED)
    time_bins: int = _opt(10, "Sample-level rewards are normalised against running statistics in this many bins of t.", group="sample-level weighting", when=conditions.TIME_BINNED)
    stats_momentum: float = _opt(0.01, "EMA momentum of the per-bin running mean and variance.", group="sample-level weighting", when=conditions.VRPO)
    # --- reward heads
    semantic_weight: float = _opt(1.0, "Token-level semantic coherence reward cos(z, y) (cos(y_i, y_j) for candidates).", group="reward heads", when=conditions.POLICY)
    fidelity_weight: float = _opt(1.0, "Sample-level generation fidelity reward -denoise_loss (used when denoise_loss is passed). Each sample-level reward is normalised per timestep bin, so its scale counts only beside another one (perceptual, a user head); 0 turns it off. At sample_weight=0 it feeds only metrics.", group="reward heads", when=conditions.VRPO)
    perceptual_weight: float = _opt(0.0, "Sample-level perceptual reward -LPIPS(decode(x0_pred), decode(x0)); 0 turns it off.", group="reward heads", when=conditions.WEIGHTED)
    perceptual_every: int = _opt(40, "Perceptual reward computed every this many training steps (its cost: docs/performance.md).", group="reward heads", when=conditions.PERCEPTUAL)
    perceptual_subset: int = _opt(8, "Perceptual reward computed on at most this many samples of the batch.", group="reward heads", when=conditions.PERCEPTUAL)
    perceptual_net: str = _opt("vgg", "LPIPS backbone: 'vgg', 'alex' or 'squeeze'.", group="reward heads", when=conditions.PERCEPTUAL)
    decodability_weight: float = _opt(0.0, "Token-level decodability reward (a learned head predicts each token's clean patch from z); 0 turns it off.", group="reward heads", when=conditions.VRPO)
    decodability_patch: int = _opt(2, "Decodability head: patch size of the clean latent x0 per token (the token grid is x0's grid / patch).", group="reward heads", when=conditions.DECODABILITY)
    decodability_channels: int = _opt(4, "Decodability head: channels of the clean latent x0 (SD-VAE latents: 4).", group="reward heads", when=conditions.DECODABILITY)
    decodability_hidden: int = _opt(256, "Decodability head: hidden width of its MLP.", group="reward heads", when=conditions.DECODABILITY)
    # --- peer methods (docs/algorithm.md, "Peer options"): each composes with mode='repa' and mode='vrpo'
    target_norm: str = _opt("none", "iREPA: 'zscore' replaces the targets, per sample and channel over the tokens, by (y - zscore_alpha * mean) / (std + 1e-6) (unbiased std), before everything else; 'none' leaves them.", group="peer methods")
    zscore_alpha: float = _opt(0.6, "iREPA: share a of the token mean that target_norm='zscore' removes, in [0, 1].", group="peer methods", when=conditions.ZSCORE)
    projector: str = _opt("mlp", "Projector of the module (only with hidden_dim set): 'mlp' is REPA's MLP; 'conv' is iREPA's: one Conv2d(D, C, projector_kernel, padding=projector_kernel // 2) over the token grid.", group="peer methods", when=conditions.OWN_PROJECTOR)
    projector_kernel: int = _opt(3, "projector='conv': kernel size, odd (the padding keeps the token grid).", group="peer methods", when=conditions.CONV)
    token_grid: Optional[Tuple[int, int]] = _opt(None, "projector='conv': (H, W) of the row-major token grid; None: a square grid of sqrt(N) x sqrt(N) (else an error).", group="peer methods", when=conditions.CONV)
    time_weight: str = _opt("uniform", "VA-REPA: 'sigmoid' weights each sample's loss by w_b = sigmoid(k * (c - t_b)) (t = 1 noise), the loss becoming sum_b w_b loss_b / sum_b w_b (needs t); 'uniform': no time weight.", group="peer methods")
    time_weight_center: float = _opt(0.7, "time_weight='sigmoid': c, the t at which the weight is 1/2, in [0, 1].", group="peer methods", when=conditions.SIGMOID)
    time_weight_sharpness: float = _opt(20.0, "time_weight='sigmoid': k > 0; larger is closer to a hard gate at t = c.", group="peer methods", when=conditions.SIGMOID)
    stop_step: Optional[int] = _opt(None, "HASTE: from this optimizer step on (the module's step counter, in both modes; see accumulation_steps) the loss is an exact zero (graph kept, zero gradients) and no alignment work is done; None: never.", group="peer methods")
    stop_ramp: int = _opt(0, "With stop_step: the loss is scaled by clamp((stop_step - step) / (stop_ramp + 1), 0, 1), a linear ramp to zero over this many steps before stop_step; 0: a hard stop.", group="peer methods", when=conditions.STOPS)
    structure_coeff: float = _opt(0.0, "SARA-style structure term, added with this weight: per sample, the mean over (i, j) of (cos(mu_i, mu_j) - cos(y_i, y_j))^2; 0 turns it off.", group="peer methods")
    # --- input handling and diagnostics
    resample_tokens: bool = _opt(False, "If the encoder's token grid differs from the features' grid, resample the targets bilinearly instead of raising.", group="input handling, metrics and the step")
    validate: bool = _opt(True, "Check values (NaN/Inf, t in [0, 1]) with one host-device read per call, at its end (on a GPU it waits only for the flags); False removes it. Shape, dtype and device checks always run.", group="input handling, metrics and the step")
    metrics_every: int = _opt(10, "Compute the full metrics every this many steps (steps 0, k, 2k, ...: each of their calls; every call in eval mode); the calls between report only the loss terms (loss_anchor, cos, loss_policy, loss_heads) and rewards/<token head>/mean. With sample_weight=0 and no sample head passed in heads=, the sample-level stage (fidelity reward, its running statistics, adv/sample_std, weight/*) feeds only metrics and runs on these calls only. 10: a host logging every 100 steps still averages 10 samples, and the eager op count per step stays near REPA's (docs/performance.md); 1: every call.", group="input handling, metrics and the step", when=conditions.VRPO)
    diagnostics_every: int = _opt(10, "Compute the signal-fraction diagnostic (cosine of the policy term's gradient with REPA's) every this many steps (every call in eval mode); 0 never. 10, as metrics_every: it adds about 40 small ops to the call that computes it (docs/performance.md).", group="input handling, metrics and the step", when=conditions.POLICY)
    # --- the step counter (vrpo_loss/step.py)
    accumulation_steps: int = _opt(1, "Training calls per optimizer step (gradient accumulation's micro-batches): the step counter that stop_step, stop_ramp, metrics_every, diagnostics_every, perceptual_every and the sigma schedule read advances by one every this many calls with gradients enabled in training mode (calls under torch.no_grad() or in eval mode never count). A host that passes step= to forward need not set it.", group="input handling, metrics and the step")
    # --- adaptive strength (vrpo_loss/factors/adaptive.py; docs/algorithm.md, "Adaptive strength")
    adaptive: str = _opt("none", "Per-timestep-bin alignment strength set by a reward: 'agreement' (cosine of the alignment and denoising gradients on h, read one step late; needs hidden_dim), 'achievability' (running cos(mu, y) per bin); 'none' keeps one strength.", group="adaptive strength")
    adaptive_gain: float = _opt(1.0, "Adaptive strength: s_k = clamp(1 + gain * z_k, adaptive_min, adaptive_max), z_k bin k's running signal against the mean over bins in pooled within-bin stds, then divided by its mean.", group="adaptive strength", when=conditions.ADAPTIVE)
    adaptive_min: float = _opt(0.1, "Adaptive strength: lower bound of the per-bin strength (mean about 1).", group="adaptive strength", when=conditions.ADAPTIVE)
    adaptive_max: float = _opt(2.0, "Adaptive strength: upper bound of the per-bin strength (mean about 1).", group="adaptive strength", when=conditions.ADAPTIVE)
    adaptive_momentum: float = _opt(0.05, "Adaptive strength: EMA momentum of its per-bin statistics (per update: every adaptive_every steps); also the gate's decay per update with adaptive_terminate.", group="adaptive strength", when=conditions.ADAPTIVE)
    adaptive_every: int = _opt(1, "Adaptive strength: its statistics take in the batch of one optimizer step in this many (steps 0, k, 2k, ...), and the strengths are recomputed then; the steps between apply the last strengths with no statistics work (about 8 ops per call instead of about 90; docs/performance.md). With 'agreement', what is taken in is the agreement of the last backward before the update. 1: every step.", group="adaptive strength", when=conditions.ADAPTIVE)
    adaptive_terminate: bool = _opt(False, "Adaptive strength: a gate in [0, 1] on every strength that decays while the running agreement is negative or the running cos(mu, y) is not above its best (an adaptive HASTE); it never grows back.", group="adaptive strength", when=conditions.ADAPTIVE)

    def __post_init__(self) -> None:
        check_config(self)  # every field by kind and range, then the rules between fields (config_checks.py)

    @classmethod
    def help(cls) -> str:
        """The options table (the README's), one section per group: name, default, when it acts, meaning.

        An option set away from its default where its condition does not hold is refused.
        """
        out = []
        for group in GROUPS:
            out += [f"**{group[0].upper() + group[1:]}**", "", "| option | default | acts | meaning |", "|---|---|---|---|"]
            for f in dataclasses.fields(cls):
                if f.metadata["group"] == group:
                    acts = "always" if f.metadata["when"] is None else f"with {f.metadata['when'].text}"
                    out.append(f"| `{f.name}` | `{cls.default(f.name)!r}` | {acts} | {f.metadata['help']} |")
            out.append("")
        return "\n".join(out).rstrip()

    @classmethod
    def condition(cls, name: str) -> Optional["conditions.When"]:
        """The condition under which field ``name`` acts (None: always)."""
        return {f.name: f for f in dataclasses.fields(cls)}[name].metadata["when"]

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name``: the one source of every component's defaults."""
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.default if f.default is not dataclasses.MISSING else f.default_factory()
        raise KeyError(f"name: VRPOConfig has no field {name!r}")

    @classmethod
    def resolve(cls, config: Optional["VRPOConfig"], options: Dict[str, Any]) -> "VRPOConfig":
        """``config`` with ``options`` (keyword arguments of ``VRPOAlignment``) applied, or a new config from them."""
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config: expected a VRPOConfig, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"VRPOAlignment: unknown option(s) {unknown}; the options are the fields of VRPOConfig: {sorted(known)}")
        return dataclasses.replace(config, **options) if config is not None else cls(**options)

    def replace(self, **changes: Any) -> "VRPOConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)
