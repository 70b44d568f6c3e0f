"""The README's download lines fetch what the pipeline needs: each `hf download` line runs through the installed
huggingface_hub CLI with its two network calls (snapshot_download, hf_hub_download) replaced by recorders, and the
patterns it would pass are applied to the files of the repository; the VGGish line names the published file and the
hash the pipeline checks."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lofi_lora.model.native.convert import TEXT_DIR, VAE_DIR, variant_dir_name
from lofi_lora.core.params import REPO_ROOT

# What ACE-Step/Ace-Step1.5 holds at the top (upstream's model card): the 2B turbo DiT, the VAE, the text encoder and
# the 5 Hz language models, which this project does not use.
ACE_STEP_FILES = [f"{d}/{f}" for d in ("acestep-v15-turbo", VAE_DIR, TEXT_DIR, "acestep-5Hz-lm-1.7B")
                  for f in ("config.json", "model.safetensors")] + ["README.md", ".gitattributes"]


def _readme_lines(prefix: str) -> list[str]:
    """Command lines of the README's bash blocks that start with `prefix`, comments stripped."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [ln.split("  #", 1)[0].strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith(prefix)]


@pytest.fixture
def hf(monkeypatch):
    """Run one `hf ...` line through the installed CLI; returns what it would download: (call, kwargs)."""
    from huggingface_hub.cli import download
    from huggingface_hub.cli.hf import app

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(download, "snapshot_download", lambda **kw: calls.append(("snapshot", kw)) or "/stub")
    monkeypatch.setattr(download, "hf_hub_download", lambda **kw: calls.append(("file", kw)) or "/stub")

    def run(line: str, checkpoints: Path) -> tuple[str, dict]:
        args = shlex.split(line.replace("$C", str(checkpoints)))
        assert args[:2] == ["hf", "download"], line
        calls.clear()
        app(args=args[1:], prog_name="hf", standalone_mode=False, windows_expand_args=False)
        assert len(calls) == 1, (line, calls)
        return calls[0]

    return run


def _fetched_folders(call: tuple[str, dict], files: list[str]) -> set[str]:
    from huggingface_hub.utils import filter_repo_objects

    kind, kw = call
    if kind == "file":
        kept = [kw["filename"]] if kw["filename"] in files else []
    else:
        kept = list(filter_repo_objects(files, allow_patterns=kw["allow_patterns"], ignore_patterns=kw["ignore_patterns"]))
    return {f.split("/")[0] for f in kept if "/" in f}


def test_readme_hf_download_lines_fetch_the_folders_the_native_checkpoint_needs(hf, tmp_path):
    lines = _readme_lines("hf download ACE-Step/")
    main = next(ln for ln in lines if "ACE-Step/Ace-Step1.5 " in ln)
    call = hf(main, tmp_path)
    assert _fetched_folders(call, ACE_STEP_FILES) == {variant_dir_name("turbo", False), VAE_DIR, TEXT_DIR}
    assert call[1]["local_dir"] == str(tmp_path)  # the checkpoints root the converter reads
    for line in (ln for ln in lines if ln is not main):  # one repository per variant, into its own folder
        repo = shlex.split(line)[2]
        kind, kw = hf(line, tmp_path)
        assert kind == "snapshot" and kw["allow_patterns"] is None and kw["repo_id"] == repo
        assert Path(kw["local_dir"]) == tmp_path / repo.split("/")[1]
        assert re.fullmatch(r"acestep-v15(-xl)?-(turbo|base|sft)", repo.split("/")[1])


def test_several_patterns_after_one_include_miss_the_first_folder(hf, tmp_path):
    """The line the README printed before (issue 23): the CLI takes the words after the first pattern as file names
    and drops `--include`, so the DiT folder is not fetched. The stub reproduces what users saw."""
    old = 'hf download ACE-Step/Ace-Step1.5 --include "acestep-v15-turbo/*" "vae/*" "Qwen3-Embedding-0.6B/*" --local-dir $C'
    with pytest.warns(UserWarning, match="Ignoring `--include`"):
        call = hf(old, tmp_path)
    assert _fetched_folders(call, ACE_STEP_FILES) == {VAE_DIR, TEXT_DIR}


def test_readme_clap_lines_pin_a_revision_into_the_folder_eval_reads(hf, tmp_path):
    lines = _readme_lines("hf download laion/")
    assert {shlex.split(ln)[2] for ln in lines} == {"laion/clap-htsat-unfused", "laion/larger_clap_music"}
    for line in lines:
        kind, kw = hf(line, tmp_path)
        assert kind == "snapshot" and re.fullmatch(r"[0-9a-f]{40}", kw["revision"]), line
        assert Path(kw["local_dir"]).name == kw["repo_id"].split("/")[1]


def test_readme_vggish_lines_fetch_the_file_whose_hash_the_pipeline_checks():
    from lofi_lora.core.config import compose_config

    (curl,) = _readme_lines("curl ")
    (check,) = _readme_lines('echo "')
    url = shlex.split(curl)[-1]
    expected, path = shlex.split(check)[1].split()
    assert url.startswith("https://github.com/harritaylor/torchvggish/releases/download/")
    assert Path(url).name == Path(path).name == "vggish-10086976.pth" and expected.startswith("10086976")
    for eval_cfg in ("tiny", "full"):
        cfg = compose_config([f"eval={eval_cfg}", "eval.vggish_path=x", "eval.clap_path=null"])
        assert cfg.eval.vggish_sha256 == expected
