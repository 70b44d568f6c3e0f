"""External annotator plug-in against a local HTTP server speaking the protocol: success and cache hit,
timeout, retry, bad response, auth and endpoint errors; the command kind; the text cleaning."""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from lofi_lora.data import audio as audio_io
from lofi_lora.annotate.external import AnnotatorError, ExternalAnnotator, clean_rich_text, fold_into_caption


class Server:
    """Answers POSTs from a script of (status, body, delay_s); the last entry repeats."""

    def __init__(self):
        self.script = [(200, {"text": "ok"}, 0.0)]
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(json.loads(body))
                outer.headers.append(dict(self.headers))
                status, reply, delay = outer.script[min(len(outer.requests) - 1, len(outer.script) - 1)]
                time.sleep(delay)
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/annotate"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip__000.wav"
    audio_io.write(path, (0.1 * np.sin(np.linspace(0, 2000, 8000))[None].repeat(2, 0)).astype(np.float32), 8000)
    return path


def make(server, tmp_path, sleeps=None, **over):
    cfg = {"kind": "http", "url": server.url, "token_env": "LOFI_TEST_TOKEN", "timeout_s": 1.0, "retries": 2,
           "backoff_s": 0.5, **over}
    sleeps = sleeps if sleeps is not None else []
    return ExternalAnnotator(cfg, tmp_path / "cache", sleep=sleeps.append)


def test_success_then_cache_hit(server, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("LOFI_TEST_TOKEN", "secret")
    server.script = [(200, {"text": "Warm Rhodes chords over dusty drums."}, 0.0)]
    ann = make(server, tmp_path)
    first = ann.annotate("clip__000", clip, {"bpm": 80})
    assert first["text"] == "Warm Rhodes chords over dusty drums." and not first["cached"]
    req = server.requests[0]
    assert req["clip_id"] == "clip__000" and req["context"] == {"bpm": 80} and len(req["audio_sha256"]) == 64
    assert server.headers[0]["Authorization"] == "Bearer secret"
    assert (tmp_path / "cache" / f"{req['audio_sha256']}.json").is_file()
    again = make(server, tmp_path).annotate("clip__000", clip)
    assert again["cached"] and again["text"] == first["text"]
    assert len(server.requests) == 1  # answered from the cache


def test_server_error_is_retried_with_backoff(server, clip, tmp_path):
    server.script = [(503, {"error": "loading"}, 0.0), (500, "oops", 0.0), (200, {"generated_text": "fine"}, 0.0)]
    sleeps = []
    out = make(server, tmp_path, sleeps).annotate("c", clip)
    assert out["text"] == "fine" and len(server.requests) == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_timeout_is_retried_then_reported(server, clip, tmp_path):
    server.script = [(200, {"text": "late"}, 1.5)]
    ann = make(server, tmp_path, timeout_s=0.3, retries=1)
    with pytest.raises(AnnotatorError, match=r"failed for clip c after 2 attempts: no answer within 0.3 s"):
        ann.annotate("c", clip)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_timeout_then_success(server, clip, tmp_path):
    server.script = [(200, {"text": "late"}, 3.0), (200, {"text": "on time"}, 0.0)]  # margins for a loaded box
    assert make(server, tmp_path, timeout_s=1.0).annotate("c", clip)["text"] == "on time"


@pytest.mark.parametrize("reply", ["not json at all", {"text": ""}, {"answer": "x"}])
def test_bad_response(server, clip, tmp_path, reply):
    server.script = [(200, reply, 0.0)]
    with pytest.raises(AnnotatorError, match="bad response"):
        make(server, tmp_path).annotate("c", clip)
    assert len(server.requests) == 3  # retried: a model endpoint sometimes answers garbage once


@pytest.mark.parametrize("token", [None, "wrong"])
def test_auth_error_fails_at_once_and_names_the_variable(server, clip, tmp_path, monkeypatch, token):
    if token:
        monkeypatch.setenv("LOFI_TEST_TOKEN", token)
    else:
        monkeypatch.delenv("LOFI_TEST_TOKEN", raising=False)
    server.script = [(401, {"error": "unauthorised"}, 0.0)]
    with pytest.raises(AnnotatorError, match=r"HTTP 401 \(authentication\).*\$LOFI_TEST_TOKEN"):
        make(server, tmp_path).annotate("c", clip)
    assert len(server.requests) == 1


def test_wrong_endpoint_and_unreachable(server, clip, tmp_path):
    server.script = [(404, {"error": "nope"}, 0.0)]
    with pytest.raises(AnnotatorError, match="HTTP 404: no annotation endpoint"):
        make(server, tmp_path).annotate("c", clip)
    dead = make(server, tmp_path, url="http://127.0.0.1:9/none", retries=1)
    with pytest.raises(AnnotatorError, match="cannot reach endpoint"):
        dead.annotate("c", clip)


def test_config_errors(tmp_path):
    with pytest.raises(AnnotatorError, match="needs annotate.external.url"):
        ExternalAnnotator({"kind": "http", "url": None}, tmp_path)
    with pytest.raises(AnnotatorError, match="expected http, openai or command"):
        ExternalAnnotator({"kind": "grpc", "url": "x"}, tmp_path)


def test_command_kind(clip, tmp_path):
    script = tmp_path / "describe.py"
    script.write_text("import sys, pathlib\nprint('Mellow keys. Mellow keys. ' + pathlib.Path(sys.argv[1]).stem)\n")
    ann = ExternalAnnotator({"kind": "command", "command": [sys.executable, str(script)], "timeout_s": 30,
                             "retries": 0}, tmp_path / "cache")
    assert ann.annotate("clip__000", clip)["text"].strip() == "Mellow keys. Mellow keys. clip__000"
    bad = tmp_path / "fail.py"
    bad.write_text("import sys\nsys.exit(3)\n")
    ann = ExternalAnnotator({"kind": "command", "command": [sys.executable, str(bad)], "retries": 1},
                            tmp_path / "cache2", sleep=lambda s: None)
    with pytest.raises(AnnotatorError, match="exit status 3"):
        ann.annotate("c", clip)


def test_clean_and_fold():
    rich = ("[00:00-00:12] Soft Rhodes chords open the track.\n[00:12] Soft Rhodes chords open the track!  "
            "A dusty boom-bap beat enters with vinyl crackle. 0:30 - 0:45: the bass drops out for a short break.")
    cleaned = clean_rich_text(rich, max_chars=400)
    assert "00:" not in cleaned and "0:30" not in cleaned
    assert cleaned.count("Soft Rhodes chords") == 1
    assert cleaned.endswith("short break.")
    assert len(clean_rich_text(rich * 5, max_chars=80)) <= 80
    caption = "artist: Mellow lofi. Featuring soft Rhodes chords. 80 BPM, in A minor."
    folded = fold_into_caption(caption, "Soft Rhodes chords. The bass drops out for a break.", 512)
    assert folded.startswith(caption) and folded.count("Rhodes") == 1 and "drops out" in folded
    assert len(fold_into_caption(caption, "x " * 400, 120)) <= 120


# ------------------------------------------------------------------ OpenAI-compatible chat completions
class ChatServer:
    """A local stand-in for `vllm serve <audio model>`: POST /v1/chat/completions with an `input_audio` part.

    It checks the request shape as vLLM's OpenAI server does (model, one user message, a text part and a base64
    WAV part), decodes the WAV and answers in the chat-completions shape with what it heard (duration, rate);
    it refuses a wrong bearer token with 401 and fails the first `fail_first` requests with 503."""

    def __init__(self, model="audio-flamingo-3", token=None, fail_first=0):
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                status, reply = outer.answer(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.model, self.token, self.fail_first = model, token, fail_first
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/chat/completions"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path, auth, body):
        import base64
        import io

        import soundfile

        if path != "/v1/chat/completions":
            return 404, {"error": {"message": "Not Found"}}
        if self.token and auth != f"Bearer {self.token}":
            return 401, {"error": {"message": "Unauthorized"}}
        if len(self.bodies) <= self.fail_first:
            return 503, {"error": {"message": "busy"}}
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        (msg,) = body["messages"]
        parts = {p["type"]: p for p in msg["content"]}
        assert msg["role"] == "user" and set(parts) == {"text", "input_audio"}
        assert parts["input_audio"]["input_audio"]["format"] == "wav"
        y, sr = soundfile.read(io.BytesIO(base64.b64decode(parts["input_audio"]["input_audio"]["data"])))
        text = f"A {len(y) / sr:.1f} second mono clip at {sr} Hz; soft keys. Prompt words: {len(parts['text']['text'].split())}."
        return 200, {"id": "chatcmpl-1", "object": "chat.completion", "model": self.model,
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_chat_completions_with_input_audio_and_cache(clip, tmp_path, monkeypatch):
    srv = ChatServer(token="sekret", fail_first=1)
    monkeypatch.setenv("LOFI_TEST_TOKEN", "sekret")
    try:
        sleeps = []
        ann = ExternalAnnotator({"kind": "openai", "url": srv.url, "model": "audio-flamingo-3",
                                 "token_env": "LOFI_TEST_TOKEN", "timeout_s": 5, "retries": 2, "backoff_s": 0.1},
                                tmp_path / "cache", sleep=sleeps.append)
        first = ann.annotate("clip__000", clip)
        assert first["text"].startswith("A 1.0 second mono clip at 16000 Hz") and not first["cached"]
        assert sleeps == [0.1] and len(srv.bodies) == 2             # one 503, retried, then the answer
        assert srv.bodies[-1]["max_tokens"] == 256 and srv.bodies[-1]["temperature"] == 0
        again = ann.annotate("clip__000", clip)
        assert again["cached"] and again["text"] == first["text"] and len(srv.bodies) == 2
        other = ExternalAnnotator({"kind": "openai", "url": srv.url, "model": "audio-flamingo-3",
                                   "token_env": "LOFI_TEST_TOKEN", "prompt": "Only the instruments."},
                                  tmp_path / "cache")
        assert not other.annotate("clip__000", clip)["cached"]       # another prompt is another cache entry
        monkeypatch.setenv("LOFI_TEST_TOKEN", "wrong")
        with pytest.raises(AnnotatorError, match="HTTP 401.*LOFI_TEST_TOKEN was refused"):
            ExternalAnnotator({"kind": "openai", "url": srv.url, "model": "audio-flamingo-3",
                               "token_env": "LOFI_TEST_TOKEN", "prompt": "x"}, tmp_path / "c2").annotate("c", clip)
        with pytest.raises(AnnotatorError, match="HTTP 404"):
            ExternalAnnotator({"kind": "openai", "url": srv.url.replace("/v1/", "/v2/"), "model": "m",
                               "token_env": "NOPE_UNSET"}, tmp_path / "c3").annotate("c", clip)
    finally:
        srv.close()
    with pytest.raises(AnnotatorError, match="needs annotate.external.model"):
        ExternalAnnotator({"kind": "openai", "url": "http://127.0.0.1:9/v1/chat/completions"}, tmp_path)
