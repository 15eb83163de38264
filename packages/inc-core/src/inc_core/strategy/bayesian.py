"""``bayesian``: a Gaussian process over op choices, proposing by expected improvement.

Each tunable op gives two features: whether it stays in float, and the place of its quantized
choice in its list scaled to [0, 1]. After the default plan and a few seeded random plans (an op
stays in float with probability 1/4), each next plan is the one with the highest expected
improvement of the accuracy loss among a seeded random pool.
Options: ``strategy_kwargs={"seed": 0, "initial_points": 4, "pool": 256}``.
"""

from __future__ import annotations

import math

import numpy as np

from ..space import QuantPlan
from .base import Batch, Search, Strategy


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


FLOAT_SHARE = 0.25  # chance that a random draw keeps an op in float


class BayesianStrategy(Strategy):
    name = "bayesian"
    options = ("initial_points", "pool")

    def search(self) -> Search:
        space = self.space
        names = space.tunable()
        rng = np.random.default_rng(self.seed)
        quant = [[c for c in space.spaces[n].choices if c.quantized] for n in names]
        floats = [space.float_choice(n) for n in names]
        seen: dict[str, tuple[np.ndarray, float]] = {}

        def draw() -> QuantPlan:
            changes = {}
            for name, options, fallback in zip(names, quant, floats, strict=True):
                if fallback is not None and (not options or rng.random() < FLOAT_SHARE):
                    changes[name] = fallback
                else:
                    changes[name] = options[int(rng.integers(len(options)))]
            return space.base.with_ops(changes)

        def features(plan: QuantPlan) -> np.ndarray:
            """Per op: 1 when in float, else 0; and the quantized choice's place in [0, 1]."""
            out = []
            for name, options in zip(names, quant, strict=True):
                op = plan.ops[name]
                is_float = not op.quantized
                place = options.index(op) / max(len(options) - 1, 1) if op in options else 0.0
                out += [float(is_float), place]
            return np.array(out)

        initial = [space.base, *(draw() for _ in range(int(self.kwargs.get("initial_points", 4))))]
        plans = list({p.key(): p for p in initial if p.quantized_ops()}.values())
        outcomes = yield Batch(plans, "bayesian: initial")
        for plan, outcome in zip(plans, outcomes, strict=False):
            seen[plan.key()] = (features(plan), outcome.loss)
        pool_size = int(self.kwargs.get("pool", 256))
        while names:
            pool = list({p.key(): p for p in (draw() for _ in range(pool_size))}.values())
            pool = [p for p in pool if p.key() not in seen and p.quantized_ops()]
            if not pool or not seen:
                return
            x = np.array([v[0] for v in seen.values()])
            losses = np.array([v[1] for v in seen.values()])
            finite = np.isfinite(losses)
            cap = losses[finite].max() + 1.0 if finite.any() else 1.0
            y = np.where(finite, losses, cap)
            query = np.array([features(p) for p in pool])
            mu, sigma = gp_posterior(x, y, query)
            pick = pool[int(np.argmax(expected_improvement(mu, sigma, float(y.min()))))]
            outcomes = yield Batch([pick], "bayesian")
            if not outcomes:
                return
            seen[pick.key()] = (features(pick), outcomes[0].loss)
