"""Stage `train`: PEFT LoRA on the ACE-Step 1.5 DiT over the cached conditions (dvc.yaml: train)."""
from lofi_lora.cli import stage_app
from lofi_lora.train.stage import run_train


@stage_app(outputs=["lora", "metrics"])
def main(cfg):
    return run_train(cfg)


if __name__ == "__main__":
    main()
