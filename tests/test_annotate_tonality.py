"""Key from tonal function (relative keys, the dominant, seventh-chord loops, modulation) and the tempo octave
folded into the configured range, on signals whose key and tempo are known by construction."""
import dataclasses

import numpy as np
import pytest

from lofi_lora.annotate.analysis import AnalysisOptions, analyze
from lofi_lora.annotate.key import pitch_class
from lofi_lora.annotate.tempo import _autocorr
from lofi_lora.annotate.tonality import evidence
from lofi_lora.annotate.track import analyse_track, choose_tempo_level, key_segments

HOP = 0.1
BEAT = 0.75   # 80 BPM


def chord_chroma(chords: list[tuple[str, tuple[int, ...]]], beats_each: int = 4, loops: int = 4):
    """[12, T] chroma and bass chroma of a chord loop: every chord tone with its first five partials (as a
    sampled instrument sounds), the bass on the chord's root."""
    frames = int(round(BEAT / HOP)) * beats_each
    cols, bass = [], []
    for _ in range(loops):
        for root, tones in chords:
            r = pitch_class(root)
            v, b = np.zeros(12), np.zeros(12)
            for t in tones:
                for h in range(1, 6):
                    v[(r + t + int(round(12 * np.log2(h)))) % 12] += 0.6 ** (h - 1)
            b[r] = 1.0
            cols += [v] * frames
            bass += [b] * frames
    return np.array(cols).T, np.array(bass).T


MAJ, MIN, DOM7, MAJ7, MIN7 = (0, 4, 7), (0, 3, 7), (0, 4, 7, 10), (0, 4, 7, 11), (0, 3, 7, 10)


def key_of(chords, **kw) -> str:
    c, b = chord_chroma(chords, **kw)
    return evidence(c, b, HOP, BEAT).key()[0].keyscale


def test_minor_key_with_its_dominant_is_not_its_relative_major():
    # i-iv-V7-i in A minor: the E major chord (G#) resolving to A minor names A minor, not C major.
    assert key_of([("A", MIN), ("D", MIN), ("E", DOM7), ("A", MIN)]) == "A minor"
    # Its relative major's own cadence: I-IV-V7-I in C.
    assert key_of([("C", MAJ), ("F", MAJ), ("G", DOM7), ("C", MAJ)]) == "C major"


def test_tonic_is_not_read_as_the_dominant():
    # ii7-V7-Imaj7-Imaj7 in F: the partials of F-A-C put C (the dominant) everywhere; the key is still F.
    assert key_of([("G", MIN7), ("C", DOM7), ("F", MAJ7), ("F", MAJ7)]) == "F major"
    # i-VI-VII-i in E minor (no leading tone) still E minor: the tonic chord and bass dominate.
    assert key_of([("E", MIN7), ("C", MAJ7), ("D", MAJ), ("E", MIN7)]) == "E minor"


def test_modulation_is_found_and_a_steady_track_has_none():
    a, ab = chord_chroma([("C", MAJ), ("F", MAJ), ("G", DOM7), ("C", MAJ)], loops=4)
    b, bb = chord_chroma([("D#", MAJ), ("G#", MAJ), ("A#", DOM7), ("D#", MAJ)], loops=4)
    segs, _ = key_segments(np.concatenate([a, b], 1), np.concatenate([ab, bb], 1), HOP, BEAT, AnalysisOptions())
    assert [s.key.keyscale for s in segs] == ["C major", "D# major"]
    assert abs(segs[1].start_s - a.shape[1] * HOP) < 4 * BEAT
    segs, _ = key_segments(np.concatenate([a, a], 1), np.concatenate([ab, ab], 1), HOP, BEAT, AnalysisOptions())
    assert [s.key.keyscale for s in segs] == ["C major"]


def straight_loop(bpm: float, seconds: float = 24.0, sr: int = 22050) -> np.ndarray:
    """Kick on every beat and equally loud, straight eighth hats: the half and the double tempo fit alike."""
    n = int(seconds * sr)
    y = np.zeros(n)
    rng = np.random.default_rng(1)
    k = np.arange(int(0.12 * sr))
    kick = np.sin(2 * np.pi * 60 * k / sr) * np.exp(-k / (0.03 * sr))
    hat = rng.standard_normal(900) * np.exp(-np.arange(900) / 150)
    step = 60.0 / bpm / 2
    for i in range(int(seconds / step)):
        j = int(i * step * sr)
        y[j:j + 900] += 0.5 * hat[: min(900, n - j)]
        if i % 2 == 0:
            y[j:j + len(kick)] += kick[: n - j][: len(kick)] * 0.7
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def test_double_time_reading_folds_into_the_range_and_says_so():
    a = analyze(straight_loop(63.0), 22050)
    if abs(a.rhythm_bpm / 126.0 - 1) > 0.04:
        pytest.skip(f"the beat tracker read {a.rhythm_bpm:.1f} here, not the double time this test is about")
    track = analyse_track([a])
    assert abs(track.bpm - 63.0) < 1.5 and track.bpm_source == "range" and track.bpm_audio == a.rhythm_bpm
    assert track.octave is not None and track.octave.other == pytest.approx(a.rhythm_bpm, abs=0.01)
    # A range that already holds 126 leaves the tracker's reading alone.
    kept = analyse_track([a], AnalysisOptions(tempo_lo=90.0, tempo_hi=140.0))
    assert kept.bpm == a.rhythm_bpm and kept.bpm_source == "audio" and kept.octave is None


def reel_onsets(bpm: float, hop_s: float, seconds: float = 30.0) -> np.ndarray:
    """Onset strength of a deadpan single-line reel in 2/4: even sixteenths, no accent on the beat, each note's
    onset as strong as its melodic step makes it, the same eight steps every bar (seeded)."""
    steps = np.random.default_rng(3).uniform(0.2, 1.0, 8)
    env = np.zeros(int(seconds / hop_s))
    for i in range(int(seconds * bpm * 4 / 60)):
        env[int(round(i * 60.0 / bpm / 4 / hop_s))] = steps[i % 8]
    return np.convolve(env, np.hanning(7)[1:-1], "same")  # an onset spreads over ~60 ms, as spectral flux does


def test_a_beat_the_bar_does_not_repeat_gives_way_to_the_onsets():
    """A tracker reading of four thirds of the beat (three sixteenths: a pulse the note grid crosses but the bar
    does not) is no octave of the truth; the onsets' bar periodicity puts it back on the beat ("onsets")."""
    clip = analyze(straight_loop(66.0), 22050)
    env = reel_onsets(66.0, clip.onset_hop_s)
    reel = dataclasses.replace(clip, onset_ac=_autocorr(env, len(clip.onset_ac) - 1))
    bpm, source, choice = choose_tempo_level([reel], 88.0, 60.0, 100.0, AnalysisOptions().tracker_margin)
    assert abs(bpm / 66.0 - 1) < 0.04 and source == "onsets" and choice.other == 88.0
    # The beat itself, read by the tracker, stays as it was.
    assert choose_tempo_level([reel], 66.0, 60.0, 100.0, AnalysisOptions().tracker_margin) == (66.0, "audio", None)


def test_tempo_range_config_is_checked():
    assert AnalysisOptions.from_cfg({"tempo_range": [55, 95]}).tempo_hi == 95.0
    with pytest.raises(ValueError, match="annotate.tempo_range"):
        AnalysisOptions.from_cfg({"tempo_range": [95, 55]})


def groove_onsets(bpm: float, hop_s: float, seconds: float = 40.0) -> np.ndarray:
    """Onset strength of a 3-3-3-3-2-2 drum groove on a straight sixteenth grid: kick on steps 0, 6, 12, snare on
    3, 9, 14, hats on every off-beat sixteenth, so most hits fall off the beat and the strongest recur every
    three sixteenths until the bar's 2+2 turns them around."""
    strength = np.zeros(16)
    strength[[1, 3, 5, 7, 9, 11, 13, 15]] = 0.3
    strength[[0, 6, 12]] += 1.0
    strength[[3, 9, 14]] += 0.8
    env = np.zeros(int(seconds / hop_s))
    for i in range(int(seconds * bpm * 4 / 60)):
        env[int(round(i * 60.0 / bpm / 4 / hop_s))] = strength[i % 16]
    return np.convolve(env, np.hanning(7)[1:-1], "same")


def test_a_dotted_eighth_reading_of_a_332_groove_goes_back_to_the_quarter(monkeypatch):
    """The tracker's four thirds of the quarter (the groove's dotted-eighth pulse) has about the quarter's metrical
    salience; only the quarter's bar repeats, so the bar-lag test moves the reading back (source "onsets")."""
    from lofi_lora.annotate import track as track_mod
    from lofi_lora.annotate.analysis import ClipAnalysis
    from lofi_lora.annotate.key import KeyEstimate
    from lofi_lora.annotate.tempo import TempoEstimate

    hop = 512 / 44100
    ac = _autocorr(groove_onsets(72.0, hop), int(4 * 60 / 30 / hop) + 3)
    clip = ClipAnalysis(40.0, TempoEstimate(96.0, 1.0, 96.0, 0.625), 96.0, KeyEstimate("C", "major", 0.5, 0.5), 4,
                        0.5, np.zeros((12, 1)), np.zeros((12, 1)), 0.1, ac, hop)
    margin = AnalysisOptions().tracker_margin
    bpm, source, choice = choose_tempo_level([clip], 96.0, 60.0, 100.0, margin)
    assert abs(bpm / 72.0 - 1) < 0.04 and source == "onsets" and choice.other == 96.0
    # Without the bar-lag test the reading stands: the rule, not the octave fold, does it.
    monkeypatch.setattr(track_mod, "BAR_MARGIN", 9.0)
    assert choose_tempo_level([clip], 96.0, 60.0, 100.0, margin)[0] == 96.0
    monkeypatch.undo()
    # A reading already on the quarter stays as it was.
    assert choose_tempo_level([clip], 72.0, 60.0, 100.0, margin) == (72.0, "audio", None)


def waltz_onsets(bpm: float, hop_s: float, seconds: float = 40.0) -> np.ndarray:
    """Onset strength of a country waltz's oom-pah-pah: a strong bass on beat one, light chords on two and three, so
    the strongest onsets recur every three beats and the single beats barely show."""
    env = np.zeros(int(seconds / hop_s))
    for i in range(int(seconds * bpm / 60)):
        env[int(round(i * 60.0 / bpm / hop_s))] = 1.0 if i % 3 == 0 else 0.2
    return np.convolve(env, np.hanning(7)[1:-1], "same")


def test_a_waltz_read_on_its_beat_keeps_it(monkeypatch):
    """A 3-beat bar is also two beats at two thirds the tempo, where the 1-2-4 beat salience alone moved a tracker
    that was right (MMA's CountryWaltz, 96.9 read as 64.6). The 3-6 beat salience keeps the reading, since the beat
    itself repeats better than the two-thirds level's (1.5 beats)."""
    from lofi_lora.annotate import tempo
    from lofi_lora.annotate.analysis import ClipAnalysis
    from lofi_lora.annotate.key import KeyEstimate
    from lofi_lora.annotate.tempo import TempoEstimate

    hop = 512 / 44100
    ac = _autocorr(waltz_onsets(96.0, hop), int(4 * 60 / 30 / hop) + 3)
    clip = ClipAnalysis(40.0, TempoEstimate(96.0, 1.0, 96.0, 0.625), 96.0, KeyEstimate("C", "major", 0.5, 0.5), 3,
                        0.5, np.zeros((12, 1)), np.zeros((12, 1)), 0.1, ac, hop)
    margin = AnalysisOptions().tracker_margin
    assert choose_tempo_level([clip], 96.0, 60.0, 100.0, margin) == (96.0, "audio", None)
    duple_only = tempo.metrical_salience
    monkeypatch.setattr(tempo, "metrical_salience", lambda ac, hop_s, bpm=tempo.BPM_GRID, bar=4:
                        duple_only(ac, hop_s, bpm, 4))
    from lofi_lora.annotate import track as track_mod
    monkeypatch.setattr(track_mod, "metrical_salience", tempo.metrical_salience)
    bpm, source, _ = choose_tempo_level([clip], 96.0, 60.0, 100.0, margin)
    assert abs(bpm / 64.0 - 1) < 0.04 and source == "onsets"  # without the 3-beat bar, the two-thirds level won
