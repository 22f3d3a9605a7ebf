"""The per-sample factors' shared pieces (``vrpo_loss.factors``): the bounded unit-mean rule, the
sample weight built on it, and the one product of the factors."""

import torch

from vrpo_loss.factors import combine
from vrpo_loss.factors.bounded import bounded_unit_mean
from vrpo_loss.factors.sample_weight import bounded_sample_weight


def test_bounded_sample_weight():
    a = torch.tensor([-10.0, -0.5, 0.0, 0.5, 10.0])
    w = bounded_sample_weight(a, strength=0.5, w_min=0.5, w_max=2.0)
    raw = [0.5, 0.75, 1.0, 1.25, 2.0]  # clamp(1 + 0.5 a) by hand
    mean = sum(raw) / 5
    torch.testing.assert_close(w, torch.tensor([min(max(r / mean, 0.5), 2.0) for r in raw]))
    # advantages biased upwards (rewards running ahead of their statistics): the mean weight stays one
    biased = bounded_sample_weight(torch.tensor([0.2, 0.5, 0.9, 1.0]), strength=0.5, w_min=0.5, w_max=2.0)
    assert abs(biased.mean().item() - 1) < 1e-6 and biased[0] < biased[3]
    assert torch.all(bounded_sample_weight(a, strength=0.0, w_min=0.5, w_max=2.0) == 1)


# ----- a large, finite reward must not poison the running statistics ------------------------------
def test_bounded_unit_mean_weighted_and_plain():
    """The one rule of the sample weight and the adaptive strength, against a float64 loop."""
    x = torch.tensor([-2.0, 0.1, 0.5, 3.0])
    counts = torch.tensor([1.0, 0.0, 5.0, 2.0])

    def ref(w):
        s = [min(max(1 + 0.4 * float(v), 0.3), 1.8) for v in x]
        m = sum(wi * si for wi, si in zip(w, s)) / sum(w)
        return torch.tensor([min(max(si / m, 0.3), 1.8) for si in s], dtype=torch.float64)

    got = bounded_unit_mean(x, gain=0.4, low=0.3, high=1.8, weights=counts)
    torch.testing.assert_close(got.double(), ref(counts.tolist()))
    torch.testing.assert_close(bounded_unit_mean(x, gain=0.4, low=0.3, high=1.8).double(), ref([1.0] * 4))
    # no weight anywhere: the plain mean
    torch.testing.assert_close(bounded_unit_mean(x, gain=0.4, low=0.3, high=1.8, weights=torch.zeros(4)).double(), ref([1.0] * 4))


def test_combine_is_the_product_of_the_factors_that_are_on():
    t, w = torch.tensor([0.5, 2.0, 1.5]), torch.tensor([1.0, 0.25, 4.0])
    assert combine(None, None) is None and combine(1.0, None) is None  # off, no launch
    torch.testing.assert_close(combine(t, None, w), torch.tensor([0.5, 0.5, 6.0]))
    torch.testing.assert_close(combine(t, 0.5, w, None), torch.tensor([0.25, 0.25, 3.0]))
    torch.testing.assert_close(combine(torch.tensor(0.0), t), torch.zeros(3))  # a stopped alignment
