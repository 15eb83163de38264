"""Observers: what each algorithm clips, that streaming is exact, and that memory stays flat."""

from __future__ import annotations

import gc
import math
import tracemalloc
import warnings

import numpy as np
import pytest

from inc_core.calibration import (
    ALGORITHMS,
    FAR_OCTAVES,
    TOP,
    CalibrationWarning,
    Octaves,
    _kl_divergence,
    create_observer,
)
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
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float32_batches_are_data_errors(algorithm: str, bad: float) -> None:
    # float32 batches are checked through their min and max, without a float64 copy
    observer = create_observer(algorithm)
    batch = np.ones((4, 8), np.float32)
    batch[2, 3] = bad
    with pytest.raises(DataError, match="NaN" if np.isnan(bad) else "inf"):
        observer.update(batch)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float32_batches_give_what_their_float64_copies_give(algorithm: str) -> None:
    """Observers read float32 batches as they are (exponent bits, min/max): ranges, octave
    counts and the far-value warning must be exactly those of the same values in float64,
    zeros, -0.0, float32 subnormals and the largest float32 included."""
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(3):
        x = (rng.normal(0.0, 1.0, (16, 500)) * 10.0 ** rng.integers(-44, 30, (16, 500))).astype(
            np.float32
        )
        x[0, :4] = [0.0, -0.0, np.float32(1e-45), -np.float32(3e-39)]  # zeros and subnormals
        x[1, ::7] = 0.0
        batches.append(x[:, ::2])  # a strided view, as a sliced output would be
    batches[1][2, 0] = np.finfo(np.float32).max
    as32, as64 = create_observer(algorithm), create_observer(algorithm)
    for batch in batches:
        as32.update(batch)
        as64.update(batch.astype(np.float64))
    assert np.array_equal(as32.octaves.counts, as64.octaves.counts)  # type: ignore[attr-defined]
    with warnings.catch_warnings(record=True) as w32:
        warnings.simplefilter("always")
        range32 = as32.range()
    with warnings.catch_warnings(record=True) as w64:
        warnings.simplefilter("always")
        range64 = as64.range()
    assert range32 == range64
    assert [str(w.message) for w in w32] == [str(w.message) for w in w64]


@pytest.mark.parametrize("size", [1, 2, 4_001, (1 << 20) * 2 + 3])
def test_octave_counts_of_float32_are_those_of_float64_at_every_size(size: int) -> None:
    """Large float32 batches are counted two exponents at a time, in chunks: every value is
    counted once in its octave, odd sizes and chunk edges included, like its float64 copy."""
    rng = np.random.default_rng(11)
    x = (rng.normal(0.0, 1.0, size) * 2.0 ** rng.integers(-140, 120, size)).astype(np.float32)
    x[rng.random(size) < 0.4] = 0.0  # a ReLU's zeros, -0.0 too
    x[rng.random(size) < 0.1] = -0.0
    x[-1] = np.float32(3e-42)  # a subnormal last: the odd value a pair leaves over
    as32, as64 = Octaves(), Octaves()
    as32.update(x)
    as64.update(x.astype(np.float64))
    assert np.array_equal(as32.counts, as64.counts)
    assert as32.counts.sum() == size


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


# -- a few values orders of magnitude above the rest (issue 13: one 1e30 pixel) -----------------


def _image_batches(outlier: float | None = None) -> list[np.ndarray]:
    """Four batches of 50 8x8 'images' in [0, 1]; ``outlier`` replaces one pixel of batch 2."""
    rng = np.random.default_rng(11)
    batches = [rng.uniform(0.0, 1.0, (50, 1, 8, 8)) for _ in range(4)]
    if outlier is not None:
        batches[2][7, 0, 3, 4] = outlier
    return batches


def _range_and_warnings(
    algorithm: str, batches: list[np.ndarray], **options: object
) -> tuple[tuple[float, float], list[str]]:
    observer = create_observer(algorithm, name="image", **options)  # type: ignore[arg-type]
    for batch in batches:
        observer.update(batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = observer.range()
    return found, [str(w.message) for w in caught if w.category is CalibrationWarning]


def test_one_huge_value_makes_minmax_warn_naming_the_tensor_and_the_remedy() -> None:
    (_, hi), messages = _range_and_warnings("minmax", _image_batches(1e30))
    assert hi == 1e30  # minmax stays the exact range; the warning says what that does
    assert len(messages) == 1
    message = messages[0]
    assert "calibration tensor 'image'" in message
    assert "1 of 12800 non-zero values have |x| >= 6.34e+29" in message
    assert "all below 1" in message and "round to 0" in message
    assert "corrupt sample" in message and "'percentile' or 'kl'" in message


@pytest.mark.parametrize("algorithm", HISTOGRAM_ALGORITHMS)
@pytest.mark.parametrize("scheme", ["sym", "asym"])
def test_histogram_observers_leave_a_few_huge_values_out(algorithm: str, scheme: str) -> None:
    # the remedy the warning names must work: before, the histogram stretched to 2**100 and
    # every other value shared its first bin, so kl/percentile/mse returned about 1e27..1e30
    dtype = "uint8" if scheme == "asym" else "int8"
    clean, _ = _range_and_warnings(algorithm, _image_batches(), dtype=dtype, scheme=scheme)
    (lo, hi), messages = _range_and_warnings(
        algorithm, _image_batches(1e30), dtype=dtype, scheme=scheme
    )
    assert messages == []  # nothing to warn about: the range leaves them out
    assert lo == clean[0] and clean[1] - 0.01 <= hi <= 1.0  # the other values' range


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ranges_with_a_huge_value_do_not_depend_on_batch_order(algorithm: str) -> None:
    batches = _image_batches(-3e12)
    expected, _ = _range_and_warnings(algorithm, batches)
    for order in ([2, 0, 1, 3], [3, 1, 0, 2]):
        assert _range_and_warnings(algorithm, [batches[i] for i in order])[0] == expected


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_warning_for_heavy_tails_or_moderate_outliers(
    algorithm: str, gaussian_with_outliers: np.ndarray
) -> None:
    rng = np.random.default_rng(5)
    relu = np.maximum(rng.normal(0.0, 1.0, 100_000), 0.0)  # half exact zeros
    heavy = rng.lognormal(0.0, 3.0, 100_000)  # spans 2**-20 .. 2**20 with no gap
    tiny_and_large = np.concatenate([rng.normal(0, 1e-6, 5_000), rng.normal(0, 1, 5_000)])
    # a group beyond the gap, but too many to be implausible: 10% of the values
    two_groups = np.concatenate([rng.normal(0, 1, 9_000), rng.normal(0, 1e6, 1_000)])
    just_inside = np.concatenate([rng.uniform(-1, 1, 10_000), [2.0 ** (FAR_OCTAVES - 1)]])
    for x in (gaussian_with_outliers, relu, heavy, tiny_and_large, two_groups, just_inside):
        assert _range_and_warnings(algorithm, [x])[1] == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_too_many_far_values_to_leave_out_say_so(algorithm: str) -> None:
    x = np.random.default_rng(6).normal(0.0, 1.0, 400_000)
    x[: TOP + 10] = 1e20  # 1% of the values, more than the observers keep aside
    (_, hi), messages = _range_and_warnings(algorithm, np.array_split(x, 4))
    assert hi == 1e20 and len(messages) == 1
    assert f"{TOP + 10} of 400000" in messages[0] and f"more than {TOP}" in messages[0]


def test_the_warning_is_given_once_per_observer() -> None:
    observer = create_observer("minmax", name="t")
    observer.update(np.append(np.linspace(0.1, 1.0, 100), 1e9))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        observer.range()
        observer.range()
    assert len([w for w in caught if w.category is CalibrationWarning]) == 1


def test_an_observer_name_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match=r"name=3 must be a string"):
        create_observer("kl", name=3)  # type: ignore[arg-type]
