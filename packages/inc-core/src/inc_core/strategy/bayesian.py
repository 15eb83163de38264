"""``bayesian``: a Gaussian process over op choices, proposing by expected improvement.

Each tunable op is one dimension: the index of its choice scaled to [0, 1] (default 0, float
fallback 1). After the default plan and a few seeded random plans, each next plan is the one
with the highest expected improvement of the accuracy loss among a seeded random pool.
Options: ``strategy_kwargs={"seed": 0, "initial_points": 4, "pool": 256}``.
"""

from __future__ import annotations

import math

import numpy as np

from ..space import QuantPlan
from .base import Batch, Search, Strategy, TuningSpace


def encode(space: TuningSpace, names: list[str], indices: np.ndarray) -> QuantPlan:
    changes = {n: space.spaces[n].choices[int(i)] for n, i in zip(names, indices, strict=True)}
    return space.base.with_ops(changes)


def gp_posterior(
    x: np.ndarray, y: np.ndarray, query: np.ndarray, length: float = 0.5, noise: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a unit RBF Gaussian process at ``query``."""

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.asarray(np.exp(-0.5 * d2 / length**2))

    mean, scale = y.mean(), y.std() or 1.0
    z = (y - mean) / scale
    k = kernel(x, x) + noise * np.eye(len(x))
    chol = np.linalg.cholesky(k + 1e-9 * np.eye(len(x)))
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, z))
    ks = kernel(query, x)
    mu = ks @ alpha
    v = np.linalg.solve(chol, ks.T)
    var = np.clip(1.0 - (v**2).sum(0), 1e-12, None)
    return mu * scale + mean, np.sqrt(var) * scale


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray:
    z = (best - mu) / sigma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return np.asarray((best - mu) * cdf + sigma * pdf)


class BayesianStrategy(Strategy):
    name = "bayesian"
    options = ("initial_points", "pool")

    def search(self) -> Search:
        space = self.space
        names = space.tunable()
        sizes = np.array([len(space.spaces[n].choices) for n in names])
        rng = np.random.default_rng(self.seed)
        seen: dict[str, tuple[np.ndarray, float]] = {}

        def draw(count: int) -> np.ndarray:
            return np.asarray(rng.integers(0, sizes, size=(count, len(names))))

        def record(indices: list[np.ndarray], outcomes: list[float]) -> None:
            for idx, loss in zip(indices, outcomes, strict=False):
                seen[encode(space, names, idx).key()] = (idx / np.maximum(sizes - 1, 1), loss)

        first = [np.zeros(len(names), dtype=int)]
        first += [i for i in draw(int(self.kwargs.get("initial_points", 4)))]
        first = [i for k, i in {encode(space, names, i).key(): i for i in first}.items()]
        plans = [encode(space, names, i) for i in first]
        outcomes = yield Batch(plans, "bayesian: initial")
        record(first, [o.loss for o in outcomes])
        pool_size = int(self.kwargs.get("pool", 256))
        while names:
            pool = [i for i in draw(pool_size) if encode(space, names, i).key() not in seen]
            pool = [i for i in pool if encode(space, names, i).quantized_ops()]
            if not pool:
                return
            x = np.array([v[0] for v in seen.values()])
            losses = np.array([v[1] for v in seen.values()])
            finite = np.isfinite(losses)
            cap = losses[finite].max() + 1.0 if finite.any() else 1.0
            y = np.where(finite, losses, cap)
            query = np.array(pool) / np.maximum(sizes - 1, 1)
            mu, sigma = gp_posterior(x, y, query)
            pick = pool[int(np.argmax(expected_improvement(mu, sigma, float(y.min()))))]
            outcomes = yield Batch([encode(space, names, pick)], "bayesian")
            if not outcomes:
                return
            record([pick], [outcomes[0].loss])
