"""Stage `export`: merged LoRA -> ONNX FP32/FP16/INT8/INT4, each parity-checked (dvc.yaml: export)."""
from lofi_lora.cli import stage_app
from lofi_lora.export.stage import run_export


@stage_app(outputs=["onnx", "metrics"])
def main(cfg):
    return run_export(cfg)


if __name__ == "__main__":
    main()
