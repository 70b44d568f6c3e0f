"""Stage `preprocess`: quality checks, loudness normalisation, segmenting, WAV + MP3 clips (dvc.yaml: preprocess)."""
from lofi_lora.cli import stage_app
from lofi_lora.preprocess.stage import run_preprocess


@stage_app(outputs=["clips", "metrics"])
def main(cfg):
    return run_preprocess(cfg)


if __name__ == "__main__":
    main()
