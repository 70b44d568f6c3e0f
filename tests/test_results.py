"""Stage metrics: a few named headline numbers per stage, diagnostics as tables, and no wall-clock value on disk."""
import json

import pytest

from lofi_lora.core.results import count_numbers, split_eval, split_export, write_stage_metrics

PARITY = {"max_abs_err": 0.08, "max_rel_err": 0.03, "rel_l2": 0.03, "cosine": 0.9995, "non_finite": 0.0}


def _export_full():
    precisions = {}
    for i, p in enumerate(("fp32", "fp16", "int8", "int4")):
        precisions[p] = {"bytes": 1000 - 100 * i, "mb": 0.001, "ratio_to_fp32": 1 - 0.1 * i, "parity": PARITY,
                         "parity_cases": {"2x24": PARITY, "2x51": PARITY}, "latency_ms": 1.4 + i,
                         "latency": {"median_ms": 1.4 + i, "min_ms": 1.3, "max_ms": 1.6, "repeats": 10},
                         "sampler_audio": PARITY, "passed": True}
    return {"opset": 20, "providers": ["CPUExecutionProvider"], "lora_layers_merged": 16, "merge": PARITY,
            "parity_shapes": [[2, 24, 8]], "latency_shape": {"batch": 1}, "torch_fp32_latency_ms": 3.0,
            "precisions": precisions, "timing_s": {"export_fp32": 11.9}, "vae_decoder": {"parity": PARITY}}


def test_export_metrics_name_precisions_and_keep_latency_out_of_files(tmp_path, caplog):
    caplog.set_level("INFO")
    path = tmp_path / "metrics" / "export.json"
    write_stage_metrics("export", path, _export_full())
    m = json.loads(path.read_text())
    assert list(m) == ["export"]  # dvc exp show columns: export.int4.cosine, export.int4.size_ratio
    assert m["export"]["int4"]["cosine"] == PARITY["cosine"] and m["export"]["int4"]["size_ratio"] == pytest.approx(0.7)
    assert m["export"]["int4"]["passed"] is True  # dvc exp show: export.int4.passed
    assert count_numbers(m) <= 25
    rows = json.loads((tmp_path / "metrics" / "export" / "parity.json").read_text())
    assert len(rows) == 4 * 3 and {r["case"] for r in rows} == {"2x24", "2x51", "sampler_audio"}
    on_disk = path.read_text() + (tmp_path / "metrics" / "export" / "parity.json").read_text()
    assert "latency" not in on_disk and "timing" not in on_disk and "_ms" not in on_disk
    assert "latency" in caplog.text  # the timings are logged instead


def _recs(**values):
    from lofi_lora.core.records import Metric, Record
    from lofi_lora.metrics import METRICS

    return [Record(METRICS.get(k) or Metric(k, "", k, "clips"), v, "no CLAP weights" if v is None else None).as_dict()
            for k, v in values.items()]


def test_eval_headline_is_best_and_base_without_sample_sizes_or_strings():
    flat = {"best_step": 40, "best_metric": "val_loss", "num_checkpoints": 3, "seconds": 14.1,
            "records": {"best": _recs(val_loss=1.5, fd_logmel128_v1=1081.0, fd_logmel128_v1_n_clips=3, clap_score=None),
                        "base": _recs(val_loss=2.0, fd_logmel128_v1=1041.0, clap_score=None)}}
    head, tables, timings = split_eval(flat)
    assert head == {"best_step": 40, "val_loss": 1.5, "fd_logmel128_v1": 1081.0, "clap_score": None,
                    "base": {"val_loss": 2.0, "fd_logmel128_v1": 1041.0, "clap_score": None}}
    assert timings == {"seconds": 14.1} and tables == {}


def test_an_interval_flows_to_the_headline_beside_its_value():
    from dataclasses import replace

    from lofi_lora.core.records import Record
    from lofi_lora.metrics import metric

    rec = Record(metric("fd_logmel128_v1"), 1081.0, low=1002.5, high=1160.25)
    head, _, _ = split_eval({"best_step": 1, "records": {"best": [rec.as_dict()],
                                                         "base": [replace(rec, low=None, high=None).as_dict()]}})
    assert head["fd_logmel128_v1_low"] == 1002.5 and head["fd_logmel128_v1_high"] == 1160.2
    assert head["base"] == {"fd_logmel128_v1": 1081.0}


def test_flat_scores_keep_a_zero_bound_and_a_reason_only_where_there_is_one():
    from lofi_lora.core.records import Record, flat
    from lofi_lora.metrics import metric

    assert flat([Record(metric("kad_clap"), 0.1, low=0.0, high=0.2), Record(metric("val_loss"), 1.0),
                 Record(metric("clap_score"), None, "no CLAP weights")]) == {
        "kad_clap": 0.1, "kad_clap_low": 0.0, "kad_clap_high": 0.2, "val_loss": 1.0, "clap_score": None,
        "clap_score_reason": "no CLAP weights"}


def test_non_finite_headline_becomes_null_and_a_string_is_refused(tmp_path):
    head, _, _ = split_eval({"best_step": 1, "records": {"best": _recs(val_loss=float("nan")),
                                                         "base": _recs(val_loss=float("inf"))}})
    assert head["val_loss"] is None and head["base"]["val_loss"] is None
    with pytest.raises(TypeError, match="not a number"):
        write_stage_metrics("train", tmp_path / "train.json", {"final_loss": "1.0"})


def test_caption_audit_table_is_the_same_under_any_string_hash_seed():
    """Ties among shared n-grams were ordered by set iteration, i.e. by the per-process string hash: the versioned
    `metrics/annotate/shared_ngrams.json` differed between two runs of the same pipeline."""
    import subprocess
    import sys

    code = ("import json; from lofi_lora.annotate.audit import audit_captions; "
            "caps = {f'c{i}': f'x: warm piano loop {w} crisp hats and tape hiss {w} mellow' "
            "for i, w in enumerate(['a', 'b', 'c', 'd', 'e'])}; "
            "print(json.dumps(audit_captions(caps, n=3, artist='x', top=4)))")
    outs = {subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True, timeout=120).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1, outs
    top = json.loads(outs.pop())["top_shared_ngrams"]
    assert [t["ngram"] for t in top] == sorted(t["ngram"] for t in top)  # equal counts: alphabetical


def test_export_headline_is_parity_and_size_per_precision_and_latency_stays_out():
    prec = {"parity": {"cosine": 0.9999, "rel_l2": 0.007}, "ratio_to_fp32": 0.26, "mb": 0.3, "latency_ms": 1.7,
            "parity_cases": {"2x24": {"cosine": 0.9999, "rel_l2": 0.006}}, "sampler_audio": {"cosine": 0.998},
            "passed": True}
    head, tables, timings = split_export({"lora_layers_merged": 16, "merge": {"cosine": 1.0, "rel_l2": 0.0},
                                          "precisions": {"int8": prec}, "torch_fp32_latency_ms": 2.0})
    assert head["int8"] == {"passed": True, "cosine": 0.9999, "rel_l2": 0.007, "size_ratio": 0.26, "mb": 0.3, "audio_cosine": 0.998}
    assert [r["case"] for r in tables["parity"]] == ["2x24", "sampler_audio"]
    assert timings["latency"] == {"torch_fp32_ms": 2.0, "int8_ms": 1.7}
    assert "latency" not in str(head)


@pytest.mark.parametrize("committed, this_cpu, decimals", [  # metrics/*.json of two runs of the same commit
    (1.5222619771957397, 1.5222620010375976, None),          # eval.val_loss
    (1081.2995947515228, 1081.299577093658, None),           # eval.fd_logmel128_v1
    (1.1869671798227135, 1.1869671631707388, None),          # eval.kad_logmel128_v1
    (1.694670542994622e-06, 1.6904075438429268e-06, 6),      # export.fp32.rel_l2: float noise itself
    (1.7904008815531304e-07, 1.826131887201094e-07, 6),      # export.merge.rel_l2
    (0.006539775383151501, 0.006539770017361432, 6),         # export.fp16.rel_l2
    (0.999444683771113, 0.9994446836385339, 6)])             # export.int4.cosine
def test_headline_figures_keep_the_digits_two_cpus_agree_on(committed, this_cpu, decimals):
    """Pairs measured on two x86-64 CPUs (issue 23: the committed run at fc87567 and `dvc repro` of it on an AMD EPYC
    with AVX-512 VNNI): rounded to the meaningful digits they are one figure, so `make demo` mostly leaves
    metrics/*.json as committed."""
    from lofi_lora.core.results import meaningful

    assert committed != this_cpu and meaningful(committed, decimals) == meaningful(this_cpu, decimals)
    assert abs(meaningful(this_cpu, decimals) - this_cpu) <= max(abs(this_cpu) * 1e-4, 10.0 ** -(decimals or 99))
