"""Observers: what each algorithm clips, that streaming is exact, and that memory stays flat."""

from __future__ import annotations

import gc
import math
import tracemalloc

import numpy as np
import pytest

from inc_core.calibration import ALGORITHMS, _kl_divergence, create_observer
from inc_core.errors import ConfigError, DataError
from inc_core.scheme import compute_qparams, fake_quantize

HISTOGRAM_ALGORITHMS = ("kl", "percentile", "mse")


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> np.ndarray:
    """500k N(0, 1) values and three outliers 50-80 standard deviations out."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, 500_000)
    x[[10, 20_000, 400_000]] = [70.0, -80.0, 55.0]
    return x


def _feed(algorithm: str, batches: list[np.ndarray], **options: object) -> tuple[float, float]:
    observer = create_observer(algorithm, **options)  # type: ignore[arg-type]
    for batch in batches:
        observer.update(batch)
    return observer.range()


def test_minmax_keeps_the_exact_extremes(gaussian_with_outliers: np.ndarray) -> None:
    batches = np.array_split(gaussian_with_outliers, 7)
    assert _feed("minmax", batches) == (-80.0, 70.0)


def test_histogram_observers_clip_outliers_that_minmax_keeps(
    gaussian_with_outliers: np.ndarray,
) -> None:
    x = gaussian_with_outliers
    kl_lo, kl_hi = _feed("kl", [x])
    pct_lo, pct_hi = _feed("percentile", [x])  # 99.999% keeps all but 5 values: the outliers go
    mse_lo, mse_hi = _feed("mse", [x])
    body = np.abs(x[np.abs(x) < 10]).max()  # the largest non-outlier, about 4.9
    assert kl_hi < 40 and kl_lo > -40
    assert body - 1 < pct_hi < body + 0.2 and -body - 0.2 < pct_lo < -body + 1
    # MSE weighs the 3 outliers' clipping against 500k values' rounding: it clips part way.
    assert 20 < mse_hi < 60 and -60 < mse_lo < -20
    for lo, hi in [(kl_lo, kl_hi), (pct_lo, pct_hi), (mse_lo, mse_hi)]:
        assert lo < -3 and hi > 3  # the body of the distribution stays inside


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ranges_do_not_depend_on_batch_order_or_size(
    algorithm: str, gaussian_with_outliers: np.ndarray
) -> None:
    x = gaussian_with_outliers
    one = create_observer(algorithm)
    one.update(x)
    expected = one.range()
    width = getattr(one, "width", 0.0)
    rng = np.random.default_rng(3)
    # ten uneven batches, shuffled, and the same values fed smallest magnitude first (so the
    # histogram grows many times)
    cuts = np.sort(rng.choice(np.arange(1, x.size), 9, replace=False))
    shuffled = np.split(rng.permutation(x), cuts)
    by_magnitude = np.array_split(x[np.argsort(np.abs(x))], 10)
    for batches in (shuffled, by_magnitude):
        lo, hi = _feed(algorithm, batches)
        assert abs(lo - expected[0]) <= width and abs(hi - expected[1]) <= width


@pytest.mark.parametrize("algorithm", HISTOGRAM_ALGORITHMS)
def test_memory_does_not_grow_with_the_number_of_batches(algorithm: str) -> None:
    rng = np.random.default_rng(0)
    tracemalloc.start()
    observer = create_observer(algorithm)

    def feed(n: int) -> None:
        for _ in range(n):
            observer.update(rng.normal(0.0, rng.uniform(0.5, 4.0), 5_000))

    try:
        feed(10)
        gc.collect()
        after_10 = tracemalloc.get_traced_memory()[0]
        feed(100)
        gc.collect()
        after_110 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_110 - after_10 < 4096  # bytes: the 2048-bin histogram is 16 KiB on its own
    observer.range()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_observer_that_saw_nothing_says_so(algorithm: str) -> None:
    observer = create_observer(algorithm)
    with pytest.raises(DataError, match="saw no values"):
        observer.range()
    observer.update(np.zeros((0, 4)))
    with pytest.raises(DataError, match="saw no values"):
        observer.range()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_batches_are_data_errors(algorithm: str, bad: float) -> None:
    observer = create_observer(algorithm)
    observer.update([1.0, 2.0])
    with pytest.raises(DataError, match="NaN" if np.isnan(bad) else "inf"):
        observer.update(np.array([0.5, bad]))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_all_zero_tensor_gives_a_zero_range(algorithm: str) -> None:
    assert _feed(algorithm, [np.zeros(10), np.zeros((3, 3))]) == (0.0, 0.0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_range_is_clipped_to_what_was_seen(algorithm: str) -> None:
    x = np.random.default_rng(1).uniform(0.3, 0.9, 10_000)
    lo, hi = _feed(algorithm, [x])
    assert x.min() <= lo <= hi <= x.max()
    assert hi > 0.85  # uniform data has no tail worth clipping


def test_percentile_by_hand_on_evenly_spaced_values() -> None:
    x = np.arange(1.0, 100_001.0)
    observer = create_observer("percentile", percentile=99.0)
    observer.update(x)
    lo, hi = observer.range()
    # 99% of |x| lies below 99000; the threshold is that bin's upper edge
    assert lo == 1.0 and 99_000 <= hi <= 99_000 + observer.width  # type: ignore[attr-defined]
    asym = create_observer("percentile", percentile=98.0, scheme="asym", dtype="uint8")
    asym.update(x - 50_000)
    lo, hi = asym.range()
    # 1% cut from each tail: [-49000, 49000], each to within one bin
    assert abs(lo + 49_000) <= asym.width and abs(hi - 49_000) <= asym.width  # type: ignore[attr-defined]


def test_percentile_100_is_minmax(gaussian_with_outliers: np.ndarray) -> None:
    assert _feed("percentile", [gaussian_with_outliers], percentile=100) == (-80.0, 70.0)


def _true_mse(x: np.ndarray, lo: float, hi: float, **scheme: object) -> float:
    params = compute_qparams(lo, hi, **scheme)  # type: ignore[arg-type]
    return float(np.mean((x - fake_quantize(x, params)) ** 2))


@pytest.mark.parametrize(
    ("dtype", "scheme", "relu"), [("int8", "sym", False), ("uint8", "asym", True)]
)
def test_mse_threshold_is_near_the_best_by_brute_force(dtype: str, scheme: str, relu: bool) -> None:
    rng = np.random.default_rng(5)
    x = rng.laplace(0.0, 1.0, 200_000)
    if relu:
        x = np.maximum(x, 0.0)
    options = {"dtype": dtype, "scheme": scheme, "convention": "onnxrt"}
    lo, hi = _feed("mse", [x], **options)
    assert hi < x.max()  # a Laplace tail is worth clipping
    best = min(_true_mse(x, max(x.min(), -t), t, **options) for t in np.linspace(2.0, x.max(), 400))
    assert _true_mse(x, lo, hi, **options) <= 1.02 * best


def _kl(p: list[float], q: list[float]) -> float:
    p_n, q_n = np.array(p) / sum(p), np.array(q) / sum(q)
    return float(np.sum(p_n * np.log(p_n / q_n)))


def test_kl_divergence_by_hand() -> None:
    # P = [3, 1, 2, 2] in 2 levels of 2 bins: Q = [2, 2, 2, 2]
    expected = 3 / 8 * math.log(1.5) + 1 / 8 * math.log(0.5)
    assert _kl_divergence(np.array([3.0, 1.0, 2.0, 2.0]), 0.0, 2) == pytest.approx(expected)
    # outliers go into P's last bin only: P = [3, 1, 2, 1 + 1], Q = [2, 2, 1.5, 1.5]
    assert _kl_divergence(np.array([3.0, 1.0, 2.0, 1.0]), 1.0, 2) == pytest.approx(
        _kl([3, 1, 2, 2], [2, 2, 1.5, 1.5])
    )
    # empty bins take no share of their level: P = [4, 0, 2, 2] quantizes without loss
    assert _kl_divergence(np.array([4.0, 0.0, 2.0, 2.0]), 0.0, 2) == pytest.approx(0.0, abs=1e-6)
    # all kept mass in one level: Q would copy P's spike whatever was clipped, so no candidate
    assert _kl_divergence(np.array([0.0, 0.0, 0.0, 5.0]), 100.0, 2) == math.inf


def test_kl_does_not_clip_a_distribution_without_tails() -> None:
    x = np.random.default_rng(2).uniform(-1.0, 1.0, 100_000)
    lo, hi = _feed("kl", [x])
    assert lo < -0.97 and hi > 0.97


def test_kl_on_relu_output_ignores_the_spike_at_zero() -> None:
    # half the values are exactly 0 after a ReLU; they are exact in any scheme and must not pull
    # the threshold down (a half-normal's 8-bit entropy threshold is about 4 sigma)
    x = np.maximum(np.random.default_rng(4).normal(0.0, 1.0, 300_000), 0.0)
    lo, hi = _feed("kl", [x], dtype="uint8", scheme="asym")
    assert lo == 0.0 and 3.5 < hi <= x.max()


def test_unknown_algorithm_and_option_list_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"'minmax', 'kl', 'percentile', 'mse'.*'kl'"):
        create_observer("kld")
    with pytest.raises(ConfigError, match="'bins'"):
        create_observer("kl", percentile=99.0)
    with pytest.raises(ConfigError, match="'dtype'"):
        create_observer("minmax", bins=128)


@pytest.mark.parametrize(
    "options",
    [{"bins": 7}, {"bins": 2047}, {"bins": 64.0}, {"percentile": 0}, {"percentile": 101}],
)
def test_bad_options_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        create_observer("percentile", **options)  # type: ignore[arg-type]


def test_a_scheme_the_convention_lacks_is_refused() -> None:
    with pytest.raises(ConfigError, match="mxnet has no asym"):
        create_observer("kl", convention="mxnet", scheme="asym", dtype="uint8")
