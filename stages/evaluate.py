"""Stage `evaluate`: samples, validation loss, FD/FAD and CLAP per checkpoint, best checkpoint, report (dvc.yaml: evaluate)."""
from lofi_lora.cli import stage_app
from lofi_lora.evaluate.stage import run_evaluate


@stage_app(outputs=["reports", "metrics", "plots"])
def main(cfg):
    return run_evaluate(cfg)


if __name__ == "__main__":
    main()
