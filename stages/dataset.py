"""Stage `dataset`: HF dataset split by track, repeat count, cache of VAE latents and conditions (dvc.yaml: dataset)."""
from lofi_lora.cli import stage_app
from lofi_lora.dataset.stage import run_dataset


@stage_app(outputs=["dataset", "cache"])
def main(cfg):
    return run_dataset(cfg)


if __name__ == "__main__":
    main()
