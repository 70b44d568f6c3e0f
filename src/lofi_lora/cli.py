"""The one way a stage script becomes a Hydra app whose primary config is params.yaml.

Under DVC no override is passed, so a stage runs on exactly the parameters DVC tracks. By hand,
`python stages/<stage>.py key=value` overrides single values, and `-m key=a,b` runs a Hydra multirun in
which every job writes its outputs under its own job folder (never over the DVC outputs), followed by a
summary table of the jobs' results.
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

    from lofi_lora.errors import LofiLoraError

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
        outputs: keys of `paths` that this stage writes; in a multirun they are rebased under the job folder.
    """

    def deco(fn: Callable[[Any], Any]) -> Callable[[], None]:
        root = Path(inspect.getfile(fn)).resolve().parents[1]

        @functools.wraps(fn)
        def main() -> None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import hydra
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode
            from omegaconf import open_dict

            sweep: dict[str, Any] = {}

            @hydra.main(config_path=str(root), config_name="params", version_base=None)
            def _app(cfg) -> Any:
                hc = HydraConfig.get()
                multirun = hc.mode == RunMode.MULTIRUN
                if multirun:
                    job_dir = Path(hc.runtime.output_dir)
                    sweep["dir"] = Path(hc.sweep.dir)
                    with open_dict(cfg):
                        for key in outputs:
                            cfg.paths[key] = str(job_dir / cfg.paths[key])
                    log.info("multirun job %s: outputs under %s", hc.job.num, job_dir)
                from lofi_lora.config import load_config
                from lofi_lora.runtime import seed_everything

                cfg = _report_errors(lambda: load_config(cfg))  # before any data, model or output is touched
                if cfg.model.source != "hub":
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched unless asked for
                seed_everything(cfg.seed)
                result = _report_errors(lambda: fn(cfg))
                if multirun:
                    record = {"overrides": list(hc.overrides.task), "result": result or {}}
                    (job_dir / "result.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
                return result

            _app()
            if "dir" in sweep:
                print_sweep_summary(sweep["dir"])

        return main

    return deco


def print_sweep_summary(sweep_dir: Path) -> None:
    """Print one row per multirun job: its overrides and the scalar results it returned."""
    rows = []
    for f in sorted(sweep_dir.glob("*/result.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        rec = json.loads(f.read_text())
        flat = {k: v for k, v in (rec.get("result") or {}).items() if isinstance(v, (int, float, str)) or v is None}
        rows.append((f.parent.name, " ".join(rec["overrides"]), flat))
    if not rows:
        return
    keys = sorted({k for _, _, r in rows for k in r})
    header = ["job", "overrides", *keys]
    table = [header] + [[j, o, *[_fmt(r.get(k)) for k in keys]] for j, o, r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print(f"\nmultirun summary ({sweep_dir}):")
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else ("-" if v is None else str(v))
