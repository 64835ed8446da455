"""Set inputs (``Input ... set=true``) and their pooling (``SetSum`` / ``SetMean`` / ``SetPool``).

A set model runs its per-element layers on every element as one batch entry and pools invariant
features once. Checked: the language rejects pooling twice, never, or before the signal is
invariant, with located errors; padding contributes exactly nothing (NaN padding changes no bit);
permuting a set changes the output by rounding only; ``Norm``'s batch statistics ignore padding;
sum and mean pooling against a direct computation; input and mask errors.
"""

from __future__ import annotations

import pytest
import torch

import sphc
from sphc import SphcError

MODEL = (
    "Input s2 L=4 C=2 set=true -> S2Conv C=3 L=3 N=2 -> ReLU -> EfficientLayer mst K=3 tau=2 -> Norm"
    " -> Invariant -> Dense 6 act=relu -> {pool} -> Dense 2"
)


def _model(pool: str = "SetSum", mode: str = "train") -> torch.nn.Module:
    model = sphc.load(MODEL.format(pool=pool)).Model().double()
    return model.train() if mode == "train" else model.eval()


def _batch(B: int = 3, A: int = 4):
    x = torch.randn(B, A, 2, 4, 7, dtype=torch.float64)
    mask = torch.rand(B, A) < 0.7
    mask[:, 0] = True  # no empty set
    return x, mask


@pytest.mark.parametrize(
    ("text", "message", "col"),
    [
        ("Input s2 L=4 set=true -> ZonalConv -> Invariant -> Dense 2", "never pools it", 1),
        ("Input s2 L=4 set=true -> ZonalConv C=2 -> SetSum", "takes a features signal", 43),
        ("Input s2 L=4 -> ZonalConv -> Invariant -> SetSum", "pools a set, but this signal is not one", 43),
        ("Input s2 L=4 set=true -> ZonalConv -> Invariant -> SetSum -> SetMean", "is not one", 62),
    ],
    ids=["never", "before-invariant", "not-a-set", "twice"],
)
def test_pooling_mistakes_are_located(text, message, col):
    with pytest.raises(SphcError, match=message) as info:
        sphc.check_source(text, "m.sph")
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (1, col)


def test_explain_and_canonical_form_show_the_set():
    text = MODEL.format(pool="SetMean")
    table = sphc.compile_source(text, emit="analysis")
    assert "a set per example" in table.splitlines()[0] and "pools them" in table.splitlines()[0]
    canonical = sphc.compile_source(text, emit="ir")
    assert "set=true" in canonical and "SetPool mean=true" in canonical
    assert sphc.check_source(canonical).model == sphc.check_source(text).model  # dump parses back
    assert "set=" not in sphc.compile_source("Input s2 L=3 -> ZonalConv -> Invariant", emit="ir")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_padding_contributes_exactly_nothing(mode):
    model = _model(mode=mode)
    x, mask = _batch()
    y = model(x, mask)
    poisoned = x.clone()
    poisoned[~mask] = float("nan")  # whatever padding holds never reaches a real value
    assert torch.equal(model(poisoned, mask), y)
    # more padding slots: the reductions over elements change length, so the result may differ by
    # rounding (summation order), never by what the padding holds
    wider = torch.cat([x, torch.full_like(x[:, :2], float("nan"))], 1)
    widened = model(wider, torch.cat([mask, torch.zeros_like(mask[:, :2])], 1))
    torch.testing.assert_close(widened, y, rtol=1e-13, atol=1e-13)


def test_permuting_a_set_changes_only_rounding():
    model = _model()
    x, mask = _batch()
    y = model(x, mask)
    perm = torch.randperm(x.shape[1])
    torch.testing.assert_close(model(x[:, perm], mask[:, perm]), y, rtol=1e-12, atol=1e-12)


def test_eval_mode_examples_are_independent():
    model = _model(mode="eval")
    x, mask = _batch()
    y = model(x, mask)
    for b in range(x.shape[0]):
        keep = mask[b]
        torch.testing.assert_close(
            model(x[b : b + 1, keep], mask[b : b + 1, keep]), y[b : b + 1], rtol=1e-12, atol=1e-12
        )


def test_norm_statistics_ignore_padding():
    """Training-mode Norm over padded sets equals Norm over the real elements only."""
    model = _model()
    x, mask = _batch()
    model(x, mask)
    padded = model.l5_norm.running_sq.clone()
    model.l5_norm.running_sq.fill_(1.0)
    real = x[mask].unsqueeze(0)  # every real element in one "set" of one example
    model(real, torch.ones(1, real.shape[1], dtype=torch.bool))
    torch.testing.assert_close(model.l5_norm.running_sq, padded, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mean", [False, True])
def test_pooling_against_a_direct_sum(mean):
    pool = sphc.runtime.SetPool(mean)
    B, A, F = 3, 5, 4
    x = torch.randn(B * A, F, dtype=torch.float64)
    mask = torch.rand(B, A) < 0.6
    got = pool(x, sphc.runtime.layers.Members(mask.reshape(-1), B))
    for b in range(B):
        rows = [x[b * A + a] for a in range(A) if mask[b, a]]
        want = sum(rows, torch.zeros(F, dtype=torch.float64))
        if mean and rows:
            want = want / len(rows)
        torch.testing.assert_close(got[b], want, rtol=1e-14, atol=1e-14)


def test_input_and_mask_mistakes_are_clear():
    model = _model()
    x, mask = _batch()
    with pytest.raises(SphcError, match=r"\(batch, elements, 2, 4, 7\)"):
        model(x[:, 0], mask)
    with pytest.raises(SphcError, match="mask must be a bool tensor of shape"):
        model(x, mask[:, :2])
    with pytest.raises(SphcError, match="mask must be a bool tensor"):
        model(x, mask.double())
    plain = sphc.runtime.InputSHT(C=1, L=3)
    with pytest.raises(SphcError, match="not a set: it takes no mask"):
        plain(torch.randn(2, 1, 3, 5), torch.ones(2, 1, dtype=torch.bool))


def test_gradients_reach_only_real_elements():
    model = _model()
    x, mask = _batch()
    x.requires_grad_(True)
    model(x, mask).square().sum().backward()
    assert (x.grad[~mask] == 0).all() and (x.grad[mask] != 0).any()
