"""Sound of each style category, matched to the preset families in presets/ (CORE, JAZZ, AMB, CHILL, DUSK)."""
from __future__ import annotations

from dataclasses import dataclass, replace

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
    swing_unit: int      # 8: the off-beat 8th lands late; 16: the off-beat 16ths do
    lowpass_hz: float
    crackle: float
    rain: float
    wow_ms: float
    reverb_mix: float
    tremolo: float       # stereo tremolo depth on the keys
    duck: float = 0.0    # side-chain dip of keys/lead on each kick


STYLES: dict[str, Style] = {
    # Classic boom-bap lofi hip hop: Rhodes, lazy 8th swing, dusty and pumping.
    "CORE": Style("CORE", bpm_range=(70, 90), minor_prob=0.5,
                  progressions_major=("I-iii-vi-IV", "I-vi-ii-V", "I-IV-iii-vi"),
                  progressions_minor=("i-VI-III-VII", "i-iv-VII-III", "i-VI-iv-v"), ninths=True,
                  keys="rhodes", comp="hold", lead="piano", bass_voice="bass", bass_pattern="roots",
                  drums="boombap", swing=0.58, swing_unit=8, lowpass_hz=5000.0, crackle=0.05, rain=0.0,
                  wow_ms=1.6, reverb_mix=0.18, tremolo=0.25, duck=0.3),
    # Jazzhop: extended chords, ii-V-I, walking upright, brushes and ride, heavy swing.
    "JAZZ": Style("JAZZ", bpm_range=(75, 95), minor_prob=0.45, progressions_major=("ii-V-I", "I-vi-ii-V"),
                  progressions_minor=("ii-V-i", "i-iv-VII-III"), ninths=True, keys="piano", comp="charleston",
                  lead="rhodes", bass_voice="upright", bass_pattern="walking", drums="brushes", swing=0.62,
                  swing_unit=8, lowpass_hz=5500.0, crackle=0.035, rain=0.0, wow_ms=1.0, reverb_mix=0.22,
                  tremolo=0.0),
    # Ambient / sleep: slow pads, bell, sustained bass, a whisper of percussion, rain.
    "AMB": Style("AMB", bpm_range=(60, 75), minor_prob=0.5, progressions_major=("Imaj-long", "I-IV"),
                 progressions_minor=("i-long", "i-iv"), ninths=True, keys="pad", comp="pad", lead="bell",
                 bass_voice="bass", bass_pattern="sustain", drums="sparse", swing=0.55, swing_unit=8,
                 lowpass_hz=2800.0, crackle=0.03, rain=0.06, wow_ms=2.2, reverb_mix=0.4, tremolo=0.0),
    # Chillhop: brighter, busier syncopated bass and 16th hats, light 16th swing, mostly major.
    "CHILL": Style("CHILL", bpm_range=(85, 95), minor_prob=0.25,
                   progressions_major=("I-vi-IV-V", "I-iii-vi-IV", "I-vi-ii-V"),
                   progressions_minor=("i-VI-III-VII",), ninths=True, keys="rhodes", comp="stabs", lead="rhodes",
                   bass_voice="bass", bass_pattern="syncopated", drums="chill", swing=0.54, swing_unit=16,
                   lowpass_hz=7000.0, crackle=0.025, rain=0.0, wow_ms=1.0, reverb_mix=0.15, tremolo=0.2,
                   duck=0.25),
    # Dusk: dark minor, plain 7ths on detuned synth keys, slow half-time drums, heavy wow, a little rain.
    "DUSK": Style("DUSK", bpm_range=(60, 80), minor_prob=1.0, progressions_major=("I-iii-vi-IV",),
                  progressions_minor=("i-iv", "i-VI-iv-v", "i-VI-III-VII"), ninths=False, keys="synth_keys",
                  comp="hold", lead="piano", bass_voice="bass", bass_pattern="roots", drums="heavy", swing=0.57,
                  swing_unit=8, lowpass_hz=3200.0, crackle=0.06, rain=0.02, wow_ms=2.4, reverb_mix=0.3,
                  tremolo=0.0, duck=0.3),
}


@dataclass(frozen=True)
class PresetFit:
    """A preset of presets/ whose instruments these voices can play: its tempo range, keys and voice changes.

    Copied from presets/<family>.json (flats spelled as sharps); tests/test_synth.py checks the copy still matches.
    """

    tempo_range: tuple[int, int]
    keys: tuple[str, ...]
    voices: tuple[tuple[str, object], ...] = ()


# Only presets whose instrumentation is synthesised here are assigned, so captions describe the audio.
RENDERABLE: dict[str, PresetFit] = {
    "CORE-01": PresetFit((75, 88), ("A minor", "D minor", "F major")),  # mellow Rhodes, warm sub bass
    "CORE-02": PresetFit((70, 82), ("E minor", "C major", "G major"),  # felt piano, round sine bass, rain
                         (("keys", "piano"), ("tremolo", 0.0), ("rain", 0.05))),
    "CORE-08": PresetFit((70, 80), ("B minor", "E minor", "D major"),  # celesta, soft piano
                         (("keys", "piano"), ("lead", "bell"), ("tremolo", 0.0))),
    "JAZZ-04": PresetFit((80, 92), ("F major", "D minor", "G minor"), (("lead", "bell"),)),  # vibraphone, walking bass
    "JAZZ-05": PresetFit((75, 85), ("A# major", "G minor", "F major"), (("lead", "piano"),)),  # piano trio, ride
    "JAZZ-08": PresetFit((82, 95), ("E minor", "B minor", "G major"),  # neo-soul electric piano, synth bass
                         (("keys", "rhodes"), ("bass_voice", "bass"), ("tremolo", 0.15))),
    "AMB-01": PresetFit((60, 68), ("C major", "F major", "A minor"), (("lead", "piano"),)),  # analog pad, felt piano
    "AMB-03": PresetFit((62, 72), ("E minor", "G major", "C major")),  # music box, string pad
    "AMB-08": PresetFit((62, 74), ("D minor", "F major", "A minor"),  # muffled upright piano, rain on the roof
                        (("keys", "piano"), ("lead", "piano"), ("rain", 0.12))),
    "CHILL-01": PresetFit((86, 95), ("E major", "C# minor", "A major")),  # Rhodes chords
    "CHILL-04": PresetFit((88, 95), ("D major", "A major", "G major"), (("lead", "synth_keys"),)),  # bright synth lead
    "DUSK-03": PresetFit((70, 80), ("F minor", "C minor", "A# minor")),  # dark analog synth
    "DUSK-04": PresetFit((60, 72), ("B minor", "E minor", "F# minor"), (("lead", "bell"),)),  # minor music box
    "DUSK-07": PresetFit((66, 78), ("E minor", "B minor", "A minor"),  # sad Rhodes chords
                         (("keys", "rhodes"), ("tremolo", 0.2))),
}


def renderable_ids(category: str) -> list[str]:
    return [pid for pid in RENDERABLE if pid.split("-")[0] == category]


def category_of(style_id: str) -> str:
    cat = style_id.split("-")[0]
    if cat not in STYLES:
        raise ValueError(f"style id {style_id!r}: unknown category {cat!r} (one of {sorted(STYLES)})")
    return cat


def style_for(style_id: str) -> Style:
    """The family's sound, with the voices of the preset when it is one of RENDERABLE."""
    base = STYLES[category_of(style_id)]
    fit = RENDERABLE.get(style_id)
    return replace(base, **dict(fit.voices)) if fit else base


def all_preset_ids() -> list[str]:
    return [f"{c}-{i:02d}" for c, k in CATEGORY_SIZES.items() for i in range(1, k + 1)]
