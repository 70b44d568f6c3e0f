"""Stage `annotate`: ACE-Step 1.5 sidecars per clip (BPM, key, events, preset captions), repetition audit (dvc.yaml: annotate)."""
from lofi_lora.annotate.stage import run_annotate
from lofi_lora.cli import stage_app


@stage_app(outputs=["annotations", "annotator_cache", "metrics"])
def main(cfg):
    return run_annotate(cfg)


if __name__ == "__main__":
    main()
