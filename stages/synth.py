"""Stage `synth`: the procedural lofi corpus with ground truth, the embedded default data (dvc.yaml: synth)."""
from lofi_lora.cli import stage_app
from lofi_lora.synth import generate_corpus


@stage_app(outputs=["synth", "synth_metadata"])
def main(cfg):
    return generate_corpus(cfg)


if __name__ == "__main__":
    main()
