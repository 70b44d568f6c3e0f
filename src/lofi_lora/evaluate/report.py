"""The listening report `reports/index.html`: per prompt, the holdout clip and every model's samples side by side.

It opens from disk with no network: audio (OGG Vorbis) and spectrograms (PNG) are embedded as data URIs
while the media fit in `embed_max_mb`, otherwise linked as relative files under `reports/media/`. A small
inline script records each player's decoded duration into the DOM (`data-duration`, `#audio-status`), which
is what the headless-Chromium test reads.
"""
from __future__ import annotations

import base64
import html
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lofi_lora.data import audio as audio_io
from lofi_lora.core.fsutil import atomic_dir, atomic_path, atomic_write_text
from lofi_lora.metrics import METRICS

log = logging.getLogger(__name__)

SCRIPT = """
<script>
(function () {
  var players = document.querySelectorAll('audio');
  var status = document.getElementById('audio-status');
  var ok = 0, bad = 0;
  function show() { status.textContent = 'players: ' + players.length + ', decoded: ' + ok + ', errors: ' + bad;
                    status.setAttribute('data-decoded', ok); status.setAttribute('data-errors', bad); }
  players.forEach(function (a) {
    a.addEventListener('loadedmetadata', function () {
      a.setAttribute('data-duration', a.duration.toFixed(3)); ok += 1; show(); });
    a.addEventListener('error', function () { a.setAttribute('data-error', '1'); bad += 1; show(); });
    a.load();
  });
  show();
})();
</script>
"""

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}
th{background:#f2f2f2}
tr.best td{background:#eaf6ea}
.prompt{margin:1.5em 0;padding-top:0.5em;border-top:2px solid #999}
.cap{font-style:italic}
audio{width:260px;display:block}
img.spec{width:260px;height:80px;display:block;image-rendering:pixelated}
.na{color:#a33}
small{color:#666}
"""


def spectrogram_png(audio: np.ndarray, sample_rate: int, path: Path) -> None:
    """A small log-mel spectrogram image of mono-mixed audio."""
    from lofi_lora.core.librosa_guard import load
    librosa = load()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(audio, dtype=np.float32).mean(axis=0)
    mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, n_fft=2048, hop_length=1024, n_mels=64)
    db = librosa.power_to_db(mel + 1e-10, ref=np.max(mel) if mel.max() > 0 else 1.0, top_db=80.0)
    fig = plt.figure(figsize=(3.2, 1.0), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0)
    ax.set_axis_off()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _media(src: str | Path, dst_stem: Path) -> tuple[Path, Path]:
    """OGG Vorbis copy + spectrogram PNG of one audio file."""
    x, sr = audio_io.read(src)
    ogg, png = dst_stem.with_suffix(".ogg"), dst_stem.with_suffix(".png")
    audio_io.write(ogg, x, sr)
    spectrogram_png(x, sr, png)
    return ogg, png


def _label(metric_id: str) -> str:
    m = METRICS.get(metric_id)
    return m.label if m else metric_id


def _fmt(v: Any) -> str:
    if v is None:
        return '<span class="na">n/a</span>'
    if isinstance(v, float):
        return f"{v:.5g}"
    return html.escape(str(v))


ANCHOR_LABELS = {"noise": "white noise (what no learning scores)",
                 "train clips": "real training clips (what a model could get to)"}


def _cell(rec: Any) -> str:
    """A record's value, its interval below it, or its reason when it is null."""
    cell = _fmt(rec.value if rec else None)
    if rec and rec.low is not None:
        cell += f"<br><small>[{rec.low:.5g}, {rec.high:.5g}]</small>"
    if rec and rec.value is None and rec.reason:
        cell += f"<br><small>{html.escape(str(rec.reason))}</small>"
    return cell


def write_report(reports_dir: str | Path, models: Sequence[Any], prompts: Sequence[Any], best: Any,
                 metric_keys: Sequence[str], flat: dict[str, Any], embed_max_mb: float = 16.0,
                 anchors: Sequence[Any] = (), words: Sequence[str] = ()) -> Path:
    """Build `reports_dir` (index.html + media) atomically; returns the index path.

    `models` have `.label`, `.step`, `.samples` (dicts with `path`, `prompt_index`, `seed`) and `.records` (metric
    id -> `lofi_lora.core.records.Record`); columns are titled with the registered metric's label;
    `prompts` have `.index`, `.clip_id`, `.caption`, `.audio_path`. `anchors`: rows scored like models that
    frame the distances (white noise, real training clips);
    `words`: sentences saying whether the LoRA beat the base beyond the interval.
    """
    reports_dir = Path(reports_dir)
    with atomic_dir(reports_dir) as tmp:
        media = tmp / "media"
        refs: dict[tuple, tuple[Path, Path]] = {}
        for p in prompts:
            (media / "holdout").mkdir(parents=True, exist_ok=True)
            refs[("holdout", p.index)] = _media(p.audio_path, media / "holdout" / f"p{p.index:02d}_{p.clip_id}")
        for m in models:
            (media / m.label).mkdir(parents=True, exist_ok=True)
            for s in m.samples:
                refs[(m.label, s["prompt_index"], s["seed"])] = _media(s["path"], media / m.label / Path(s["file"]).stem)
        total = sum(f.stat().st_size for pair in refs.values() for f in pair)
        embed = total <= embed_max_mb * 1e6

        def src(f: Path, mime: str) -> str:
            if embed:
                return f"data:{mime};base64," + base64.b64encode(f.read_bytes()).decode("ascii")
            return html.escape(f.relative_to(tmp).as_posix())

        def player(key: tuple, title: str) -> str:
            ogg, png = refs[key]
            return (f'<audio controls preload="metadata" title="{html.escape(title)}">'
                    f'<source src="{src(ogg, "audio/ogg")}" type="audio/ogg"></audio>'
                    f'<img class="spec" alt="spectrogram {html.escape(title)}" src="{src(png, "image/png")}">')

        seeds = sorted({s["seed"] for m in models for s in m.samples})
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lofi-lora listening report</title>"
                 f"<style>{CSS}</style></head><body>",
                 "<h1>lofi-lora listening report</h1>",
                 f"<p>Best checkpoint: <b>step {best.step}</b> by <code>{html.escape(str(flat.get('best_metric')))}"
                 f"</code> ({html.escape(str(flat.get('best_mode')))}). Variant "
                 f"<code>{html.escape(str(flat.get('variant')))}</code>, {flat.get('sampling_steps')} sampling steps, "
                 f"{flat.get('num_prompts')} prompts &times; {len(seeds)} seeds, {flat.get('duration_s')} s each; "
                 f"reference: {flat.get('holdout_clips')} holdout clips.</p>",
                 '<p id="audio-status" data-decoded="0" data-errors="0">players: loading</p>',
                 "<h2>Did the LoRA work?</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words)
                 + "</ul><p>Differences are best minus base (lower is closer to the holdout clips), with a paired "
                 f"bootstrap interval over clips ({flat.get('bootstrap_replicates')} replicates); a distance's "
                 "interval is under its value in the table.</p>" if words else "",
                 "<h2>Metrics</h2><table><tr><th>model</th><th>step</th>"]
        parts += [f"<th title='{html.escape(_label(k))}'>{html.escape(k)}</th>" for k in metric_keys]
        parts.append("</tr>")
        for m in [*models, *anchors]:
            cls = ' class="best"' if m is best else ""
            anchor = any(m is a for a in anchors)
            label = ANCHOR_LABELS.get(m.label, m.label) if anchor else m.label
            parts.append(f"<tr{cls}><td>{html.escape(label)}</td><td>{'' if anchor else m.step}</td>")
            parts += [f"<td>{_cell(m.records.get(k)) if not anchor or k in m.records else '-'}</td>"
                      for k in metric_keys]
            parts.append("</tr>")
        parts.append("</table><ul>")
        parts += [f"<li><code>{html.escape(k)}</code>: {html.escape(_label(k))}</li>" for k in metric_keys]
        sizes = [f"<code>{html.escape(r.id)}_best</code> = {_fmt(r.value)}" for r in best.records.values()
                 if r.metric.unit in ("clips", "vectors")]
        sizes += [f"<code>{html.escape(k)}</code> = {_fmt(v)}" for k, v in flat.items()
                  if k.endswith(("_reference_clips", "_reference_vectors"))]
        if sizes:
            parts.append("<li>sample sizes behind the distances: " + ", ".join(sizes) + "</li>")
        parts.append("</ul><h2>Samples</h2>")
        for p in prompts:
            parts.append(f'<div class="prompt"><h3>Prompt {p.index}</h3><p class="cap">{html.escape(p.caption)}</p>'
                         f"<p><small>holdout clip {html.escape(p.clip_id)}</small></p>"
                         "<table><tr><th>model</th>" + "".join(f"<th>seed {s}</th>" for s in seeds) + "</tr>"
                         f"<tr><td>holdout (real)</td><td colspan='{max(1, len(seeds))}'>"
                         f"{player(('holdout', p.index), 'holdout ' + p.clip_id)}</td></tr>")
            for m in models:
                cls = ' class="best"' if m is best else ""
                cells = "".join(f"<td>{player((m.label, p.index, s), f'{m.label} p{p.index} s{s}')}</td>"
                                if (m.label, p.index, s) in refs else "<td>-</td>" for s in seeds)
                parts.append(f"<tr{cls}><td>{html.escape(m.label)}</td>{cells}</tr>")
            parts.append("</table></div>")
        parts.append(SCRIPT + "</body></html>\n")
        if embed:
            shutil.rmtree(media)
        atomic_write_text(tmp / "index.html", "".join(parts))
    log.info("report: %s (%d players, media %.1f MB, %s)", reports_dir / "index.html", len(refs), total / 1e6,
             "embedded" if embed else "linked")
    return reports_dir / "index.html"
