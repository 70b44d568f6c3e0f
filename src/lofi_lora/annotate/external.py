"""Plug-in point for an external annotator: an audio-language model behind an HTTP endpoint or a command.

HTTP protocol (one POST per clip, JSON both ways):
    request  {"clip_id", "audio_sha256", "audio_format": "wav", "audio_b64", "prompt", "context": {...}}
             header `Authorization: Bearer $<token_env>` when the variable is set
    response 200 {"text": "<rich description>"}   ("caption" or "generated_text" are accepted too)
OpenAI-compatible protocol (kind `openai`: what vLLM serves for Audio Flamingo 3, Qwen2.5-Omni, Ultravox):
    POST <url> (e.g. http://host:8000/v1/chat/completions)
    request  {"model", "max_tokens", "temperature": 0, "messages": [{"role": "user", "content": [
               {"type": "text", "text": prompt}, {"type": "input_audio",
               "input_audio": {"data": <base64 of a 16 kHz mono WAV>, "format": "wav"}}]}]}
    response 200 {"choices": [{"message": {"content": "<rich description>"}}]}
Command protocol: `argv + [clip path]`, the description on stdout (plain text or the same JSON).

Responses are cached by the audio's sha256 in `cache_dir`, so a rerun (or a clip whose audio did not
change) costs no request. Timeouts, connection errors, 429/5xx and malformed responses are retried with
exponential backoff; 401/403 (auth) and 404 (wrong endpoint) fail at once with the reason.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

from lofi_lora.core.errors import LofiLoraError
from lofi_lora.core.fsutil import atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

DEFAULT_PROMPT = ("Describe this music in detail: genre, instruments, production, mood, tempo feel and how "
                  "the arrangement changes over time.")


CHAT_AUDIO_SR = 16000


class AnnotatorError(LofiLoraError):
    """The external annotator is unreachable, refuses our credentials or answers nonsense."""


class _Retryable(Exception):
    pass


class ExternalAnnotator:
    """Calls the configured annotator per clip, with caching, timeout and retries."""

    def __init__(self, cfg: Mapping[str, Any], cache_dir: str | Path, sleep: Callable[[float], None] = time.sleep):
        self.kind = str(cfg.get("kind", "http"))
        self.url = cfg.get("url")
        self.command = list(cfg.get("command") or [])
        self.token_env = str(cfg.get("token_env") or "HF_TOKEN")
        self.timeout_s = float(cfg.get("timeout_s", 120))
        self.retries = int(cfg.get("retries", 3))
        self.backoff_s = float(cfg.get("backoff_s", 2.0))
        self.prompt = str(cfg.get("prompt") or DEFAULT_PROMPT)
        self.model = cfg.get("model")
        self.max_tokens = int(cfg.get("max_tokens") or 256)
        self.cache_dir = Path(cache_dir)
        self.sleep = sleep
        self.requests = 0
        self.cache_hits = 0
        if self.kind in ("http", "openai") and not self.url:
            raise AnnotatorError(f"annotate.external.kind={self.kind} needs annotate.external.url")
        if self.kind == "openai" and not self.model:
            raise AnnotatorError("annotate.external.kind=openai needs annotate.external.model (the served model name)")
        if self.kind == "command" and not self.command:
            raise AnnotatorError("annotate.external.kind=command needs annotate.external.command (an argv list)")
        if self.kind not in ("http", "openai", "command"):
            raise AnnotatorError(f"annotate.external.kind={self.kind!r}: expected http, openai or command")

    @property
    def endpoint(self) -> str:
        if self.kind == "openai":
            return f"{self.url} ({self.model})"
        return str(self.url) if self.kind == "http" else " ".join(self.command)

    def annotate(self, clip_id: str, audio_path: str | Path, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Rich text for one clip: `{"text", "audio_sha256", "cached", "annotator"}`."""
        audio_path = Path(audio_path)
        digest = sha256_file(audio_path)
        # A chat model's answer depends on the model and the prompt too: they are part of its cache key.
        tag = "" if self.kind != "openai" else "-" + hashlib.sha256(f"{self.model}\n{self.prompt}".encode()).hexdigest()[:10]
        cache_file = self.cache_dir / f"{digest}{tag}.json"
        if cache_file.is_file():
            entry = read_json(cache_file)
            if isinstance(entry, dict) and isinstance(entry.get("text"), str):
                self.cache_hits += 1
                return {**entry, "cached": True}
            log.warning("%s: unreadable cache entry, asking the annotator again", cache_file)
        text = self._with_retries(clip_id, lambda: self._request(clip_id, audio_path, digest, context or {}))
        entry = {"text": text, "audio_sha256": digest, "annotator": self.endpoint,
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(cache_file, entry)
        return {**entry, "cached": False}

    def _with_retries(self, clip_id: str, call: Callable[[], str]) -> str:
        last = ""
        for attempt in range(self.retries + 1):
            try:
                self.requests += 1
                return call()
            except _Retryable as e:
                last = str(e)
                if attempt < self.retries:
                    wait = self.backoff_s * 2 ** attempt
                    log.warning("annotator %s, clip %s: %s; retry %d/%d in %.1f s", self.endpoint, clip_id, last,
                                attempt + 1, self.retries, wait)
                    self.sleep(wait)
        raise AnnotatorError(f"annotator {self.endpoint} failed for clip {clip_id} after {self.retries + 1} "
                             f"attempts: {last}")

    def _token(self) -> str | None:
        return os.environ.get(self.token_env) or None

    def _request(self, clip_id: str, audio_path: Path, digest: str, context: Mapping[str, Any]) -> str:
        if self.kind == "command":
            return self._run_command(audio_path)
        if self.kind == "openai":
            body = json.dumps(self._chat_body(audio_path)).encode()
        else:
            body = json.dumps({"clip_id": clip_id, "audio_sha256": digest,
                               "audio_format": audio_path.suffix.lstrip("."),
                               "audio_b64": base64.b64encode(audio_path.read_bytes()).decode("ascii"),
                               "prompt": self.prompt, "context": dict(context)}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(str(self.url), data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                hint = (f"the token in ${self.token_env} was refused" if token
                        else f"no token: set ${self.token_env} (or annotate.external.token_env)")
                raise AnnotatorError(f"annotator {self.url}: HTTP {e.code} (authentication): {hint}") from e
            if e.code in (404, 405):
                raise AnnotatorError(f"annotator {self.url}: HTTP {e.code}: no annotation endpoint at this URL; "
                                     f"check annotate.external.url") from e
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}") from e
            raise AnnotatorError(f"annotator {self.url}: HTTP {e.code} for clip {clip_id}: "
                                 f"{e.read()[:200].decode(errors='replace')}") from e
        except (socket.timeout, TimeoutError) as e:
            raise _Retryable(f"no answer within {self.timeout_s:g} s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise _Retryable(f"no answer within {self.timeout_s:g} s") from e
            raise _Retryable(f"cannot reach endpoint ({e.reason})") from e
        return _parse(raw)

    def _chat_body(self, audio_path: Path) -> dict[str, Any]:
        """One user message: the prompt and the clip as a 16 kHz mono WAV (the rate audio LLMs take)."""
        import soundfile

        from lofi_lora.data import audio as audio_io

        y, sr = audio_io.read(audio_path)
        y = audio_io.resample(audio_io.to_channels(y, 1), sr, CHAT_AUDIO_SR)[0]
        buf = io.BytesIO()
        soundfile.write(buf, y, CHAT_AUDIO_SR, format="WAV", subtype="PCM_16")
        audio_part = {"type": "input_audio",
                      "input_audio": {"data": base64.b64encode(buf.getvalue()).decode("ascii"), "format": "wav"}}
        return {"model": str(self.model), "max_tokens": self.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": [{"type": "text", "text": self.prompt}, audio_part]}]}

    def _run_command(self, audio_path: Path) -> str:
        env = dict(os.environ)
        try:
            proc = subprocess.run([*self.command, str(audio_path)], capture_output=True, timeout=self.timeout_s,
                                  env=env, check=False)
        except subprocess.TimeoutExpired as e:
            raise _Retryable(f"command ran past {self.timeout_s:g} s") from e
        except FileNotFoundError as e:
            raise AnnotatorError(f"annotator command not found: {self.command[0]}") from e
        if proc.returncode != 0:
            raise _Retryable(f"exit status {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-200:]}")
        return _parse(proc.stdout, allow_plain=True)


def _parse(raw: bytes, allow_plain: bool = False) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        if allow_plain and text:
            return text
        raise _Retryable(f"bad response (not JSON): {text[:80]!r}")
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):  # HF inference endpoints wrap in a list
        doc = doc[0]
    if isinstance(doc, dict) and isinstance(doc.get("choices"), list):  # OpenAI chat completions
        msg = (doc["choices"][0] if doc["choices"] and isinstance(doc["choices"][0], dict) else {}).get("message")
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str) and content.strip():
            return content
        raise _Retryable(f"bad response (no choices[0].message.content): {text[:80]!r}")
    if isinstance(doc, dict):
        for key in ("text", "caption", "generated_text"):
            if isinstance(doc.get(key), str) and doc[key].strip():
                return doc[key]
    raise _Retryable(f"bad response (no non-empty text/caption/generated_text field): {text[:80]!r}")


_TIMESTAMP = re.compile(r"[\[(]?\b\d{1,2}:\d{2}(?:\.\d+)?(?:\s*[-–]\s*\d{1,2}:\d{2}(?:\.\d+)?)?\b[\])]?:?")


def clean_rich_text(text: str, max_chars: int = 300) -> str:
    """Rich annotator prose -> caption text: timestamps dropped, sentences deduplicated, trimmed, capped."""
    from lofi_lora.annotate.captions import cap_length

    text = _TIMESTAMP.sub(" ", text)
    kept: list[str] = []
    seen: list[set[str]] = []
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", text):
        s = " ".join(sentence.split()).strip(" -*•,;")
        if len(s) < 3:
            continue
        words = set(re.findall(r"[a-z0-9']+", s.lower()))
        if not words or any(len(words & w) >= 0.8 * len(words) for w in seen):
            continue  # exact or near repeat of an earlier sentence
        seen.append(words)
        kept.append(s if s[-1] in ".!?" else s + ".")
    return cap_length(" ".join(kept), max_chars)


def fold_into_caption(caption: str, rich: str, max_chars: int) -> str:
    """Append the cleaned rich text to the preset caption, skipping sentences the caption already says."""
    from lofi_lora.annotate.captions import cap_length

    base = set(re.findall(r"[a-z0-9']+", caption.lower()))
    extra = []
    for s in re.split(r"(?<=[.!?])\s+", rich):
        words = set(re.findall(r"[a-z0-9']+", s.lower()))
        if words and len(words - base) >= 0.3 * len(words):
            extra.append(s)
    return cap_length(" ".join([caption, *extra]), max_chars)
