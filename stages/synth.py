"""Stage `synth`: the procedural lofi corpus with ground truth, the embedded default data (dvc.yaml: synth)."""
from lofi_lora.cli import stage_app
from lofi_lora.synth.stage import run_synth


@stage_app(outputs=["synth", "synth_metadata"])
def main(cfg):
    return run_synth(cfg)


if __name__ == "__main__":
    main()
