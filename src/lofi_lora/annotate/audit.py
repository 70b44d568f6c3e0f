"""Repetition audit over all captions: exact duplicates and template reuse (shared word n-grams).

The seed notes found no exact duplicates but heavy template reuse in model-written captions; both are
measured here. The constant "<artist>: " prefix is stripped first, since it is shared on purpose.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Mapping


def _words(caption: str, artist: str) -> list[str]:
    if artist and caption.startswith(f"{artist}:"):
        caption = caption[len(artist) + 1:]
    return re.findall(r"[a-z0-9#']+", caption.lower())


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def audit_captions(captions: Mapping[str, str], n: int = 4, artist: str = "", top: int = 10) -> dict[str, Any]:
    """Summary of repetition among `captions` (clip_id -> caption).

    Returns:
        exact_duplicate_groups: captions used by more than one clip, as lists of clip ids;
        clips_in_duplicates: how many clips share their caption with another clip;
        shared_ngram_ratio: mean over captions of the share of its word n-grams that occur in another caption
            (0 = every caption worded uniquely, 1 = every phrase reused);
        top_shared_ngrams: the most reused n-grams with the number of captions using them.
    """
    by_text: dict[str, list[str]] = defaultdict(list)
    for cid, cap in captions.items():
        by_text[" ".join(cap.split()).lower()].append(cid)
    groups = sorted((sorted(ids) for ids in by_text.values() if len(ids) > 1), key=lambda g: (-len(g), g))
    grams = {cid: ngrams(_words(cap, artist), n) for cid, cap in captions.items()}
    doc_freq: Counter = Counter(g for gs in grams.values() for g in gs)
    ratios = [sum(doc_freq[g] > 1 for g in gs) / len(gs) for gs in grams.values() if gs]
    # ties by n-gram, not by set order (string hashes differ per process: the table is a versioned DVC output)
    shared = [(" ".join(g), c) for g, c in sorted(doc_freq.items(), key=lambda gc: (-gc[1], gc[0]))[:top] if c > 1]
    return {
        "captions": len(captions),
        "unique_captions": len(by_text),
        "exact_duplicate_groups": groups,
        "clips_in_duplicates": sum(len(g) for g in groups),
        "ngram_n": n,
        "shared_ngram_ratio": round(sum(ratios) / len(ratios), 4) if ratios else 0.0,
        "top_shared_ngrams": [{"ngram": g, "captions": c} for g, c in shared],
    }
