"""The one way a stage script becomes a Hydra app whose primary config is params.yaml.

Under DVC no override is passed, so a stage runs on exactly the parameters DVC tracks. By hand,
`python stages/<stage>.py key=value` overrides single values, and `-m key=a,b` runs a Hydra multirun in
which every job reads and writes only its own files under `multirun/jobs/<overrides>/` (never the DVC outputs;
see `lofi_lora.experiments.multirun`), followed by a table of the jobs' headline figures.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def _report_errors(run: Callable[[], Any]) -> Any:
    """Run `run`; a project error (or an unset `???` parameter) ends the process with one line and exit code 2.

    LOFI_LORA_DEBUG=1 keeps the traceback.
    """
    from omegaconf.errors import MissingMandatoryValue

    from lofi_lora.core.errors import LofiLoraError

    try:
        return run()
    except (LofiLoraError, MissingMandatoryValue) as e:
        if os.environ.get("LOFI_LORA_DEBUG") == "1":
            raise
        if isinstance(e, MissingMandatoryValue):
            message = f"parameter `{e.full_key}` is required but not set: set it in conf/ or with `-S {e.full_key}=...`"
        else:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def stage_app(outputs: Sequence[str] = ()) -> Callable[[Callable[[Any], Any]], Callable[[], None]]:
    """Decorate `fn(cfg) -> dict | None` as a stage entry point.

    Args:
        outputs: keys of `paths` that this stage writes (documentation: under `-m`, `lofi_lora.experiments.multirun` rebases
            every path dvc.yaml names under the job folder and checks the stage's inputs belong to the job).
    """

    def deco(fn: Callable[[Any], Any]) -> Callable[[], None]:
        root = Path(inspect.getfile(fn)).resolve().parents[1]

        @functools.wraps(fn)
        def main() -> None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import hydra
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            from lofi_lora.core.fsutil import atomic_write_text

            sweep: dict[str, Any] = {}

            @hydra.main(config_path=str(root), config_name="params", version_base=None)
            def _app(cfg) -> Any:
                hc = HydraConfig.get()
                multirun = hc.mode == RunMode.MULTIRUN
                if multirun:
                    from lofi_lora.experiments.multirun import JobRefused, enter_job

                    sweep["dir"] = Path(hc.sweep.dir)
                from lofi_lora.core.config import load_config

                cfg = _report_errors(lambda: load_config(cfg))  # before any data, model or output is touched
                if multirun:
                    try:
                        job = enter_job(root, Path(inspect.getfile(fn)).stem, cfg, list(hc.overrides.task))
                    except JobRefused as e:  # the next jobs would refuse alike: stop the sweep, say why
                        print(f"refused: {e}", file=sys.stderr)
                        raise SystemExit(2) from None
                    log.info("multirun job %s: files under %s", hc.job.num, job.dir)
                from lofi_lora.core.runtime import seed_everything

                if cfg.model.source != "hub":
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched unless asked for
                seed_everything(cfg.seed)
                result = _report_errors(lambda: fn(cfg))
                if multirun:
                    job.finish()
                    record = {"overrides": job.overrides, "job_dir": str(job.dir), "result": result or {}}
                    atomic_write_text(Path(hc.runtime.output_dir) / "result.json",
                                      json.dumps(record, indent=2, default=str) + "\n")
                return result

            _app()
            if "dir" in sweep:
                print_sweep_summary(sweep["dir"])

        return main

    return deco


def print_sweep_summary(sweep_dir: Path) -> None:
    """Print one row per multirun job (its overrides and headline figures) and write it to `summary.md`."""
    from lofi_lora.core.fsutil import atomic_write_text
    from lofi_lora.experiments.headline import headline_metrics
    from lofi_lora.experiments.sweep import markdown_table

    rows = []
    for f in sorted(sweep_dir.glob("*/result.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        rec = json.loads(f.read_text())
        metrics_dir = Path(rec["job_dir"]) / "metrics"

        def read(name: str, d: Path = metrics_dir) -> Any:
            return json.loads((d / name).read_text()) if (d / name).is_file() else None

        rows.append({"job": f.parent.name, "overrides": " ".join(rec["overrides"]), **headline_metrics(read),
                     "folder": os.path.relpath(rec["job_dir"])})
    if not rows:
        return
    empty = {k for k in rows[0] if all(r[k] is None for r in rows)}  # figures this stage does not make
    table = markdown_table([{k: v for k, v in r.items() if k not in empty} for r in rows])
    atomic_write_text(sweep_dir / "summary.md", table)
    print(f"\nmultirun summary ({sweep_dir / 'summary.md'}):\n{table}")
