"""Stage `ingest`: licence gate, duplicate detection, quarantine (dvc.yaml: ingest)."""
from lofi_lora.cli import stage_app
from lofi_lora.ingest.stage import run_ingest


@stage_app(outputs=["interim"])
def main(cfg):
    return run_ingest(cfg)


if __name__ == "__main__":
    main()
