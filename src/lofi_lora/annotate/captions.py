"""Captions from the resolved preset(s), the estimated attributes and (optionally) the events.

The seed notes' global normalisation applies: every caption starts with "<artist>: ", time signature and
vocal language come from the config. Clips of one track share their presets, so which descriptors a clip
names and in what order is drawn from a generator seeded by the clip id: deterministic, yet not one
template stamped on every clip (the repetition audit measures how well that works).
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Iterable, Sequence

from lofi_lora.annotate.events import Event

_INTENSITY_WORDS = ((0.35, "sparse"), (0.65, "mellow"), (0.85, "full"), (1.01, "full-volume"))


def merge_presets(presets: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """List fields of several presets merged in order, duplicates dropped."""
    out: dict[str, list[str]] = {}
    for field in ("base_tags", "mood", "instruments", "production"):
        out[field] = list(dict.fromkeys(x for p in presets for x in p[field]))
    return out


def _rng(clip_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "big"))


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _pick(rng: random.Random, items: Sequence[str], k_min: int, k_max: int) -> list[str]:
    k = min(len(items), rng.randint(k_min, k_max))
    chosen = rng.sample(list(items), k)
    return sorted(chosen, key=list(items).index) if rng.random() < 0.5 else chosen


def describe_events(events: Iterable[Event]) -> str:
    """'sparse intro 0-4 s, full loop 4-22 s, ...' (intensity words, then type, then seconds)."""
    parts = []
    for e in events:
        word = next(w for limit, w in _INTENSITY_WORDS if e.intensity < limit)
        parts.append(f"{word} {e.type} {e.start:.0f}-{e.end:.0f} s")
    return ", ".join(parts)


def compose_caption(clip_id: str, presets: Sequence[dict[str, Any]], bpm: int | None, keyscale: str | None,
                    timesignature: str, artist: str, events: Sequence[Event] = (), event_captions: bool = False,
                    max_chars: int = 512) -> str:
    """The ACE-Step caption of one clip."""
    rng = _rng(clip_id)
    m = merge_presets(presets)
    tags = m["base_tags"]
    genre = [tags[-1], *_pick(rng, tags[:-1], 1, 2)]  # the most specific tag (listed last) leads
    mood = _pick(rng, m["mood"], 1, 3)
    instruments = _pick(rng, m["instruments"], 2, 4)
    production = _pick(rng, m["production"], 2, 4)
    openers = (f"{_join(mood)} {genre[0]}", f"{genre[0]} with a {_join(mood)} feel", f"a {_join(mood)} {genre[0]} beat")
    sentences = [f"{rng.choice(openers)} ({', '.join(genre[1:])})" if len(genre) > 1 else rng.choice(openers)]
    lead = rng.choice(("featuring", "built on", "led by", "with"))
    sentences.append(f"{lead} {_join(instruments)}")
    sentences.append(rng.choice(("production: ", "sound: ", "mix: ", "")) + ", ".join(production))
    facts = []
    if bpm:
        facts.append(f"{bpm} BPM")
    if keyscale:
        facts.append(f"in {keyscale}")
    if timesignature:
        facts.append(f"{timesignature}/4 time" if timesignature.isdigit() else f"{timesignature} time")
    sentences.append(", ".join(facts))
    if event_captions and events:
        sentences.append("structure: " + describe_events(events))
    text = ". ".join(s[0].upper() + s[1:] for s in sentences if s) + "."
    return cap_length(f"{artist}: {text}" if artist else text, max_chars)


def compose_tags(presets: Sequence[dict[str, Any]], bpm: int | None, keyscale: str | None) -> str:
    """ACE-Step v1 prompt: comma-separated tags."""
    m = merge_presets(presets)
    tags = [*m["base_tags"], *m["mood"], *m["instruments"], *m["production"]]
    if bpm:
        tags.append(f"{bpm} bpm")
    if keyscale:
        tags.append(keyscale)
    return ", ".join(dict.fromkeys(tags))


def cap_length(text: str, max_chars: int) -> str:
    """Cut at the last sentence, comma or word boundary that fits, so a caption never ends mid-word."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 2]  # a separator may start right at the limit
    for sep in (". ", ", ", " "):
        i = cut.rfind(sep)
        if max_chars // 3 < i <= max_chars - (sep == ". "):  # room for the closing full stop
            out = cut[:i].rstrip(" ,;:")
            return out + "." if sep == ". " else out
    return text[:max_chars].rstrip(" ,;:")
