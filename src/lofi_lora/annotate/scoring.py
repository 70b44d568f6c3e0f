"""Scores of estimates against ground truth: BPM Acc1/Acc2 and the MIREX weighted key score."""
from __future__ import annotations

from lofi_lora.annotate.key import pitch_class

OCTAVE_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


def bpm_acc1(est: float, ref: float, tol: float = 0.04) -> bool:
    """Within `tol` (4 %) of the reference tempo."""
    return abs(est - ref) <= tol * ref


def bpm_acc2(est: float, ref: float, tol: float = 0.04) -> bool:
    """Acc1 allowing octave errors: x2, x1/2, x3, x1/3 of the reference."""
    return any(abs(est - f * ref) <= tol * f * ref for f in OCTAVE_FACTORS)


def parse_keyscale(keyscale: str) -> tuple[int, str]:
    tonic, mode = keyscale.split()
    return pitch_class(tonic), mode.lower()


def mirex_key_score(est: str, ref: str) -> float:
    """MIREX key weighting as in mir_eval.key.weighted_score: 1 exact, 0.5 a perfect fifth above the reference
    (same mode), 0.3 relative major/minor, 0.2 parallel major/minor, else 0."""
    (ep, em), (rp, rm) = parse_keyscale(est), parse_keyscale(ref)
    if (ep, em) == (rp, rm):
        return 1.0
    if em == rm and (ep - rp) % 12 == 7:
        return 0.5
    if rm == "major" and em == "minor" and (ep - rp) % 12 == 9:
        return 0.3
    if rm == "minor" and em == "major" and (ep - rp) % 12 == 3:
        return 0.3
    if ep == rp and em != rm:
        return 0.2
    return 0.0
