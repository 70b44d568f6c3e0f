#!/usr/bin/env bash
# The 2B and XL rehearsals at once on a host with two GPUs (benchmarks/NOTES.md, "Full-size rehearsal").
# The 2B rehearsal runs the data stages; the XL one converts its checkpoint meanwhile, then takes the data stages'
# outputs and dvc.lock entries from the 2B work folder; each runs its model stages on a GPU of its own (stages
# claim a free GPU: lofi_lora.runtime.pick_device). The whole run takes about 25 minutes on 2 x H200.
#   bash benchmarks/rehearsal_device.sh WORK_ROOT RESULTS_DIR [2B kill step]
# WORK_ROOT holds about 60 GB (checkpoints, conversions, ONNX files): keep it outside the checkout, where nothing
# that syncs or cleans the checkout can remove it while the rehearsals run (that ended the first attempt).
set -u
root=${1:?work root}
out=${2:?results folder}
kill_at=${3:-1100}
mkdir -p "$root" "$out"
rm -f "$root/data-ready"
python3 benchmarks/rehearsal.py --variant 2b --work "$root/2b" --cache-dir "$root/dvc-cache" \
  --notify-after annotate "$root/data-ready" --kill-at-step "$kill_at" --json "$out/rehearsal-2b.json" \
  >"$out/2b.log" 2>&1 &
python3 benchmarks/rehearsal.py --variant xl --work "$root/xl" --cache-dir "$root/dvc-cache" \
  --early base_model --wait-for "$root/data-ready" --data-from "$root/2b" --json "$out/rehearsal-xl.json" >"$out/xl.log" 2>&1 &
wait
touch "$out/done"
