"""Stage `check`: params.yaml and the raw folder checked before DVC removes any stage's outputs (dvc.yaml: check)."""
from lofi_lora.cli import stage_app
from lofi_lora.check.stage import run_check


@stage_app()
def main(cfg):
    return run_check(cfg)


if __name__ == "__main__":
    main()
