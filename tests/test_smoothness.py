"""Smoothness metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cr_edge import dreg
from cr_edge.fairfight import smoothness
from cr_edge.fairfight.smoothness import StepProbe, peak_volatility, shared_weights, tail_ratio
from cr_edge.nets import NetConfig, build_net


def test_tail_ratio_and_peak_volatility_by_hand():
    # p99 of 1..5: position 0.99 * 4 = 3.96 -> 4 + 0.96 * (5 - 4) = 4.96; mean 3; median 3
    assert tail_ratio([3, 1, 5, 2, 4]) == pytest.approx(4.96 / 3)
    assert peak_volatility([3, 1, 5, 2, 4]) == pytest.approx(5 / 3)
    # 98 ones and two 100s: position 98.01 lies between the two 100s -> p99 = 100;
    # mean (98 + 200) / 100 = 2.98; median 1
    tail = [1.0] * 98 + [100.0, 100.0]
    assert tail_ratio(tail) == pytest.approx(100 / 2.98)
    assert peak_volatility(tail) == pytest.approx(100.0)
    assert tail_ratio([2.0] * 7) == pytest.approx(1.0) and peak_volatility([2.0] * 7) == 1.0
    # scale-free: the same shape at any scale
    assert peak_volatility([30, 10, 50, 20, 40]) == pytest.approx(peak_volatility([3, 1, 5, 2, 4]))
    assert tail_ratio([]) is None and peak_volatility([0.0, 0.0, 1.0]) is None
    assert tail_ratio([1.0, math.nan]) is None
    assert smoothness.summary("batch", [3, 1, 5, 2, 4]) == {
        "batch_tail_ratio": pytest.approx(4.96 / 3),
        "batch_peak_volatility": pytest.approx(5 / 3),
    }


def test_batch_means_average_whole_chunks_only():
    # chunks (1, 3), (5, 7); the lone 100 is dropped -> means 2 and 6
    assert smoothness.batch_means([1, 3, 5, 7, 100], 2).tolist() == [2.0, 6.0]
    # tail ratio of (2, 6): p99 = 2 + 0.99 * 4 = 5.96, mean 4
    assert tail_ratio(smoothness.batch_means([1, 3, 5, 7, 100], 2)) == pytest.approx(5.96 / 4)


def _linear() -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        layer.bias.zero_()
    return layer


def test_one_step_of_the_probe_by_hand():
    net = _linear()
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    probe = StepProbe("classify", "cross-entropy", every=1)
    probe(net, x, y)
    # logits (3, 0) -> class 0, d/dx = W[0] = (1, 0); logits (0, 2) -> class 1, W[1] = (0, 2)
    assert probe.batch_norms == pytest.approx([(1.0 + 2.0) / 2])
    # cross-entropy: dL/dz_i = (softmax(z_i) - onehot(y_i)) / 2; dW = sum_i g_i x_i^T, db = sum g_i
    p0 = math.exp(3) / (math.exp(3) + 1)  # softmax(3, 0)[0]
    p1 = math.exp(2) / (math.exp(2) + 1)  # softmax(0, 2)[1]
    g0 = [(p0 - 1) / 2, (1 - p0) / 2]
    g1 = [(1 - p1) / 2, (p1 - 1) / 2]
    dw = [[3 * g0[0], g1[0]], [3 * g0[1], g1[1]]]
    db = [g0[0] + g1[0], g0[1] + g1[1]]
    expected = math.sqrt(sum(v * v for row in dw for v in row) + sum(v * v for v in db))
    assert probe.weight_norms == pytest.approx([expected], rel=1e-6)
    assert net.weight.grad is None  # the training step's own gradients are not touched


def test_the_probe_samples_every_kth_step_and_leaves_the_polynomials_out():
    config = NetConfig(arch="mlp", input_shape=(6,), hidden=(5,), n_classes=3)
    net = build_net(config, seed=0)
    names = {n for n, p in net.named_parameters() if any(p is w for w in shared_weights(net))}
    assert names == {"blocks.0.weight", "blocks.0.bias", "blocks.2.weight", "blocks.2.bias"}
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    probe = StepProbe("classify", "cross-entropy", every=3)
    for _ in range(7):  # steps 1, 4 and 7 are sampled
        probe(net, x, y)
    assert len(probe.batch_norms) == len(probe.weight_norms) == 3
    # the batch value is the mean of the per-sample norms dreg's own metric takes
    assert probe.batch_norms[0] == pytest.approx(
        float(dreg.input_gradient_norms(net, x).mean()), rel=1e-6
    )
    m = probe.metrics()
    assert set(m) == {
        "batch_tail_ratio",
        "batch_peak_volatility",
        "step_tail_ratio",
        "step_peak_volatility",
    }
    assert m["step_tail_ratio"] == pytest.approx(1.0)  # one batch, unchanged weights: equal
