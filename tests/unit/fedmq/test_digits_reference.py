"""The benchmark data split and the plain-numpy FedAvg reference follow the spec."""

from __future__ import annotations

import numpy as np

from fedmq.digits import dirichlet_partition, load_digits_split
from fedmq.reference_fedavg import reference_fedavg


def test_digits_split_matches_the_spec() -> None:
    """80/20 stratified split of the 1,797 digits, X scaled into [0, 1] as float32."""
    split = load_digits_split()
    assert split.x_train.shape == (1437, 64)
    assert split.x_test.shape == (360, 64)
    assert split.x_train.dtype == np.float32
    assert split.x_train.min() >= 0.0
    assert split.x_train.max() <= 1.0
    assert np.bincount(split.y_test).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def test_dirichlet_partition_is_the_specified_procedure() -> None:
    """Shares are disjoint, cover the training set, and equal an inline copy of the spec."""
    y = load_digits_split().y_train
    shares = dirichlet_partition(y, 10)
    assert sorted(np.concatenate(shares).tolist()) == list(range(len(y)))
    rng = np.random.default_rng(0)
    expected: list[list[int]] = [[] for _ in range(10)]
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        p = rng.dirichlet([0.5] * 10)
        for k, part in enumerate(np.split(idx, (np.cumsum(p) * len(idx)).astype(int)[:-1])):
            expected[k].extend(part.tolist())
    assert [s.tolist() for s in shares] == expected
    assert len({len(s) for s in shares}) > 5, "alpha=0.5 gives unbalanced shares"


def test_reference_fedavg_learns_the_digits() -> None:
    """Ten devices, ten rounds of sync FedAvg reach > 90% test accuracy, deterministically."""
    split = load_digits_split()
    shares = dirichlet_partition(split.y_train, 10)
    first = reference_fedavg(split, shares, rounds=10)
    again = reference_fedavg(split, shares, rounds=10)
    assert first[-1].accuracy > 0.90
    assert first[0].accuracy < first[-1].accuracy
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(a.params[n], b.params[n]) for n in a.params)
