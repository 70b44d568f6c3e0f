"""Stage `base_model`: build the tiny ACE-Step 1.5 pipeline, convert a native checkpoint or verify a diffusers folder
(dvc.yaml: base_model)."""
from lofi_lora.model.stage import run_base_model
from lofi_lora.cli import stage_app


@stage_app(outputs=["base_model"])
def main(cfg):
    return run_base_model(cfg)


if __name__ == "__main__":
    main()
