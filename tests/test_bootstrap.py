"""Bootstrap intervals: a replicate computed from per-clip sums equals the metric on the concatenated clips, and the
paired difference tells a real shift from noise."""
import numpy as np

from lofi_lora.metrics import bootstrap as bs
from lofi_lora.metrics.fad import frechet_distance, gaussian_stats, kad


def clips(rng, n, shift=0.0, d=6):
    return [rng.standard_normal((int(rng.integers(5, 12)), d)) + shift for _ in range(n)]


def test_a_replicate_equals_fd_and_kad_of_the_concatenated_resample():
    rng = np.random.default_rng(0)
    gen, ref_clips = clips(rng, 7, 0.3), clips(rng, 5)
    y = np.concatenate(ref_clips)
    bw = kad(y, y)[1]
    ref = bs.Reference.of(ref_clips, bw)
    d = bs.draws(len(gen), len(ref_clips), 3, seed=1)
    reps = bs.replicates(gen, ref, d)
    for b in range(3):
        x = np.concatenate([gen[i] for i in d.gen[b]])
        yy = np.concatenate([ref_clips[i] for i in d.ref[b]])
        assert np.isclose(reps["fd"][b], frechet_distance(gaussian_stats(x), gaussian_stats(yy)), rtol=1e-9)
        assert np.isclose(reps["kad"][b], kad(x, yy, bw)[0], rtol=1e-9, atol=1e-12)


def test_the_paired_difference_separates_a_shift_from_noise():
    rng = np.random.default_rng(2)
    ref_clips = clips(rng, 10)
    y = np.concatenate(ref_clips)
    ref = bs.Reference.of(ref_clips, kad(y, y)[1])
    near, far, near2 = clips(rng, 16), clips(rng, 16, shift=1.0), clips(rng, 16)
    d = bs.draws(16, 10, 200, seed=0)
    r_near, r_far, r_near2 = (bs.replicates(c, ref, d) for c in (near, far, near2))
    x = {name: np.concatenate(c) for name, c in (("near", near), ("far", far), ("near2", near2))}
    point = {name: {"fd": frechet_distance(gaussian_stats(v), gaussian_stats(y)), "kad": kad(v, y, ref.bandwidth)[0]}
             for name, v in x.items()}
    for key in ("fd", "kad"):
        n, f, n2 = point["near"][key], point["far"][key], point["near2"][key]
        assert bs.verdict(*bs.interval(r_near[key] - r_far[key], 0.95, n - f)) == "better"
        assert bs.verdict(*bs.interval(r_far[key] - r_near[key], 0.95, f - n)) == "worse"
        assert bs.verdict(*bs.interval(r_near[key] - r_near2[key], 0.95, n - n2)) == "within noise"
        lo, hi = bs.interval(r_far[key], 0.95, f)
        assert lo < f < hi
