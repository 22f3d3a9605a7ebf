"""When each option of :class:`~vrpo_loss.VRPOConfig` acts, and the rule that refuses it elsewhere.

Each field of ``VRPOConfig`` names its condition (``when``, None: always); the options table shows
it, and :func:`inert_options` refuses an option set away from its default where its condition does
not hold, naming the condition: set there, it would change nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["When", "inert_options", "VRPO", "POLICY", "CORRESPONDENCE", "GAUSSIAN", "LEARNED_SIGMA", "WEIGHTED",
           "PERCEPTUAL", "DECODABILITY", "TIME_BINNED", "OWN_PROJECTOR", "MLP", "CONV", "ZSCORE", "SIGMOID", "STOPS",
           "ADAPTIVE"]


@dataclass(frozen=True)
class When:
    """The condition under which an option acts: ``text`` for people (the options table, the error),
    ``holds`` for the config. An option set away from its default where its condition does not hold is
    refused (:func:`inert_options`): it would change nothing."""

    text: str
    holds: Callable[[Any], bool]

    def __and__(self, other: "When") -> "When":
        return When(f"{self.text}, {other.text}", lambda c: self.holds(c) and other.holds(c))


#: the conditions of ``VRPOConfig``'s fields (each field's ``when``; None: it always acts)
VRPO = When("mode='vrpo'", lambda c: c.mode == "vrpo")
POLICY = VRPO & When("policy_coeff > 0", lambda c: c.policy_coeff > 0)
CORRESPONDENCE = POLICY & When("policy='correspondence'", lambda c: c.policy == "correspondence")
GAUSSIAN = POLICY & When("policy='gaussian'", lambda c: c.policy == "gaussian")
LEARNED_SIGMA = GAUSSIAN & When("learn_sigma=True (a constant or scheduled sigma is used as given)", lambda c: c.learn_sigma)
WEIGHTED = VRPO & When("sample_weight != 0 (at 0 the sample-level rewards feed only metrics)",
                       lambda c: c.sample_weight != 0)
PERCEPTUAL = WEIGHTED & When("perceptual_weight > 0", lambda c: c.perceptual_weight > 0)
DECODABILITY = VRPO & When("decodability_weight > 0", lambda c: c.decodability_weight > 0)
TIME_BINNED = When("mode='vrpo' or adaptive set (the statistics binned by t)", lambda c: c.mode == "vrpo" or c.adaptive != "none")
OWN_PROJECTOR = When("hidden_dim set (the module's own projector)", lambda c: c.hidden_dim is not None)
MLP = OWN_PROJECTOR & When("projector='mlp'", lambda c: c.projector == "mlp")
CONV = When("projector='conv'", lambda c: c.projector == "conv")
ZSCORE = When("target_norm='zscore'", lambda c: c.target_norm == "zscore")
SIGMOID = When("time_weight='sigmoid'", lambda c: c.time_weight == "sigmoid")
STOPS = When("stop_step set", lambda c: c.stop_step is not None)
ADAPTIVE = When("adaptive set", lambda c: c.adaptive != "none")


def inert_options(cfg) -> Optional[str]:
    """The generic rule: every option set away from its default acts, or is refused with its condition."""
    for f in dataclasses.fields(cfg):
        when = f.metadata.get("when")
        if when is None or when.holds(cfg):
            continue
        value, default = getattr(cfg, f.name), type(cfg).default(f.name)
        if value != default:
            return (f"{f.name}: acts only with {when.text}, which does not hold here, got {f.name}={value!r} (default "
                    f"{default!r}): it would change nothing; drop it, or set what it needs")
    return None
