"""The GPU rehearsal's record (benchmarks/rehearsal.json) is what the README's "What to expect" quotes: it must cover
every stage dvc.yaml has now, for a 2B and an XL variant, or the README's figures describe another pipeline. Stage
`check` (params and the raw folder checked on the CPU in about a second, before any stage's outputs are touched) came
after the last rehearsal and costs nothing a GPU budget would show, so it is the one stage a record may lack."""
import json

import yaml

from lofi_lora.core.params import REPO_ROOT


def test_rehearsal_record_covers_every_stage_for_2b_and_xl():
    record = json.loads((REPO_ROOT / "benchmarks" / "rehearsal.json").read_text())
    stages = set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    runs = {run["variant"]: run for run in record["runs"]}
    assert {"2b", "xl"} <= set(runs)
    for variant in ("2b", "xl"):
        run = runs[variant]
        assert run["status"] == "ok", variant
        assert set(run["stages"]) | {"check"} == stages, variant
        assert all(s["wall_s"] > 0 for s in run["stages"].values()), variant
        assert "/root" not in json.dumps(run), "machine paths are written as <work root>"
    assert [m["status"] for m in record["sweep"]["members"]] == ["Success", "Success"]
    assert len({m["devices"][0] for m in record["sweep"]["members"]}) == 2, "one GPU per queued member"
