"""Fréchet distance math: closed forms, scipy reference, self-distance, 1/N bias, FD-inf, KAD."""
import numpy as np
import pytest
import scipy.linalg

from lofi_lora.metrics.fad import GaussianStats, fd_inf, frechet_distance, gaussian_stats, kad, trace_sqrt_product


def _stats(mu, cov, n=1000):
    return GaussianStats(np.asarray(mu, float), np.asarray(cov, float), n)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    got = frechet_distance(_stats(mu1, np.diag(v1)), _stats(mu2, np.diag(v2)))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_scipy_sqrtm_reference_full_covariance():
    rng = np.random.default_rng(1)
    d = 24
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref_sqrt = scipy.linalg.sqrtm(s1 @ s2)
    ref = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(ref_sqrt).real)
    assert frechet_distance(_stats(mu1, s1), _stats(mu2, s2)) == pytest.approx(ref, rel=1e-9)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(ref_sqrt).real, rel=1e-10)


def test_self_distance_is_zero_even_rank_deficient():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 32))  # N < d: rank-9 covariance
    s = gaussian_stats(x)
    assert s.cov.dtype == np.float64 and s.n_vectors == 10
    assert frechet_distance(s, s) == pytest.approx(0.0, abs=1e-9)
    # ddof=1
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False, ddof=1))


def test_bias_falls_like_one_over_n():
    """Two samples of the same 8-d Gaussian: E[FD] ~ k/N, so N*FD stays roughly constant."""
    rng = np.random.default_rng(3)
    d = 8
    scaled = []
    for n in (100, 400, 1600):
        vals = [frechet_distance(gaussian_stats(rng.normal(size=(n, d))), gaussian_stats(rng.normal(size=(n, d))))
                for _ in range(20)]
        scaled.append(n * float(np.mean(vals)))
    assert scaled[0] > 0
    for s in scaled[1:]:
        assert 0.7 < s / scaled[0] < 1.4, scaled
    # and the raw FD shrinks ~16x from N=100 to N=1600
    assert scaled[2] / 1600 < scaled[0] / 100 / 8


def test_fd_inf_removes_bias_and_recovers_known_value():
    rng = np.random.default_rng(4)
    d = 8
    ref = _stats(np.zeros(d), np.eye(d))  # exact reference statistics
    # Same distribution: true FD = 0. 60 clips x 10 vectors each.
    clips = [rng.normal(size=(10, d)) for _ in range(60)]
    full = frechet_distance(gaussian_stats(np.concatenate(clips)), ref)
    res = fd_inf(clips, ref, num_points=8, seed=0, repeats=4)
    assert full > 0.01
    assert abs(res.fd_inf) < 0.25 * full
    assert res.slope > 0 and res.r2 > 0.8
    assert res.n_clips[-1] == 60 and res.n_vectors[-1] == 600
    # Shifted mean: true FD = ||delta||^2 = 0.5; FD-inf lands near it, the full-set FD above it.
    delta = np.full(d, np.sqrt(0.5 / d))
    shifted = [c + delta for c in clips]
    res2 = fd_inf(shifted, ref, num_points=8, seed=0, repeats=4)
    assert res2.fd_inf == pytest.approx(0.5, abs=0.06)
    # reproducible
    assert fd_inf(shifted, ref, num_points=8, seed=0, repeats=4).fd == res2.fd


def test_kad_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(200, 4))
    same, bw = kad(rng.normal(size=(200, 4)), y)
    diff, bw2 = kad(rng.normal(size=(200, 4)) + 1.0, y)
    assert bw == bw2 > 0
    assert abs(same) < 0.01 < diff


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(_stats(np.zeros(2), np.eye(2)), _stats(np.zeros(3), np.eye(3)))
