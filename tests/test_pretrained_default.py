"""The default model config loads the committed pretrained tiny base (model.source=pretrained, issue 25)."""
from pathlib import Path

import pytest

from lofi_lora.model import pretrained as weights

FOLDER = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "tiny"


def test_stage_base_model_refuses_sizes_other_than_the_weights():
    from lofi_lora.core.errors import ConfigError
    from lofi_lora.model.pretrained import pretrained_pipeline

    rec = weights.verify(FOLDER)
    with pytest.raises(ConfigError, match="model.build.hidden_size"):
        pretrained_pipeline(str(FOLDER), {**rec["build"], "hidden_size": 32}, rec["variant"])
    with pytest.raises(ConfigError, match="model.variant"):
        pretrained_pipeline(str(FOLDER), rec["build"], "sft")


def test_default_model_config_names_the_pretrained_weights():
    import yaml

    conf = yaml.safe_load((FOLDER.parents[2] / "conf" / "model" / "tiny.yaml").read_text())
    assert conf["source"] == "pretrained" and conf["build"] == weights.verify(FOLDER)["build"]
