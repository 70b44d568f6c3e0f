"""Sound of each style category, matched to the preset families in presets/ (CORE, JAZZ, AMB, CHILL, DUSK)."""
from __future__ import annotations

from dataclasses import dataclass

CATEGORY_SIZES = {"CORE": 8, "JAZZ": 8, "AMB": 8, "CHILL": 7, "DUSK": 7}


@dataclass(frozen=True)
class Style:
    category: str
    bpm_range: tuple[int, int]
    minor_prob: float
    progressions_major: tuple[str, ...]
    progressions_minor: tuple[str, ...]
    ninths: bool
    keys: str            # voice for the chords
    comp: str            # hold | charleston | pad | stabs
    lead: str | None     # voice for the sparse top line
    bass_voice: str
    bass_pattern: str    # roots | walking | sustain | syncopated
    drums: str | None    # drums.PATTERNS key, None = no drums
    swing: float         # 0.5 straight .. ~0.62 heavy MPC swing
    lowpass_hz: float
    crackle: float
    rain: float
    wow_ms: float
    reverb_mix: float
    tremolo: float       # stereo tremolo depth on the keys


STYLES: dict[str, Style] = {
    "CORE": Style("CORE", (70, 90), 0.5, ("I-iii-vi-IV", "I-vi-ii-V", "I-IV-iii-vi"),
                  ("i-VI-III-VII", "i-iv-VII-III", "i-VI-iv-v"), True, "rhodes", "hold", "piano", "bass",
                  "roots", "boombap", 0.58, 5000.0, 0.05, 0.0, 1.6, 0.18, 0.25),
    "JAZZ": Style("JAZZ", (75, 95), 0.45, ("ii-V-I", "I-vi-ii-V"), ("ii-V-i", "i-iv-VII-III"), True,
                  "piano", "charleston", "rhodes", "upright", "walking", "brushes", 0.62, 5500.0, 0.035,
                  0.0, 1.0, 0.22, 0.0),
    "AMB": Style("AMB", (60, 75), 0.5, ("Imaj-long", "I-IV"), ("i-long", "i-iv"), True, "pad", "pad", "bell",
                 "bass", "sustain", "sparse", 0.55, 2800.0, 0.03, 0.06, 2.2, 0.4, 0.0),
    "CHILL": Style("CHILL", (85, 95), 0.25, ("I-vi-IV-V", "I-iii-vi-IV", "I-vi-ii-V"), ("i-VI-III-VII",),
                   True, "rhodes", "stabs", "rhodes", "bass", "syncopated", "chill", 0.54, 7000.0, 0.025,
                   0.0, 1.0, 0.15, 0.2),
    "DUSK": Style("DUSK", (60, 80), 1.0, (), ("i-iv", "i-VI-iv-v", "i-VI-III-VII"), False, "synth_keys",
                  "hold", "piano", "bass", "roots", "heavy", 0.57, 3200.0, 0.06, 0.02, 2.4, 0.3, 0.0),
}


def category_of(style_id: str) -> str:
    cat = style_id.split("-")[0]
    if cat not in STYLES:
        raise ValueError(f"style id {style_id!r}: unknown category {cat!r} (one of {sorted(STYLES)})")
    return cat


def style_for(style_id: str) -> Style:
    return STYLES[category_of(style_id)]


def all_preset_ids() -> list[str]:
    return [f"{c}-{i:02d}" for c, k in CATEGORY_SIZES.items() for i in range(1, k + 1)]
