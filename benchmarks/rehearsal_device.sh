#!/usr/bin/env bash
# The 2B and XL rehearsals at once on a host with two GPUs, then a queued 2-member sweep (benchmarks/NOTES.md,
# "Full-size rehearsal"). The 2B rehearsal runs the data stages; the XL one converts its checkpoint meanwhile, then
# takes the data stages' outputs and dvc.lock entries from the 2B work folder; each runs its model stages on a GPU
# of its own (stages claim a free GPU: lofi_lora.core.runtime.pick_device). Given XL_KILL, the XL train stage is
# SIGKILLed after that step and resumed (about 5 more minutes: a second compile). Once the 2B rehearsal has ended
# (ok or not), `dvc queue start -j 2` runs lora.r=32 and lora.r=64 (200 steps, up to evaluate) in its work folder;
# the members take GPU locks of their own, so one may share a GPU with the XL rehearsal's last stages instead of
# waiting for it. Measured on 2 x H200 without the kill: 2B rehearsal 1,002 s, then the sweep 410 s; XL 1,218 s
# (about 24 minutes in all, 1,474 s of device time with the machine's start).
#   bash benchmarks/rehearsal_device.sh WORK_ROOT RESULTS_DIR [XL kill step]
# WORK_ROOT holds about 60 GB (checkpoints, conversions, ONNX files): keep it outside the checkout, where nothing
# that syncs or cleans the checkout can remove it while the rehearsals run (that ended the first attempt).
set -u
root=${1:?work root}
out=${2:?results folder}
kill=(); [ -n "${3:-}" ] && kill=(--kill-at-step "$3")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$root" "$out"
rm -f "$root/data-ready" "$out/done"
(
  python3 "$here/rehearsal.py" --variant 2b --work "$root/2b" --cache-dir "$root/dvc-cache" \
    --notify-after annotate "$root/data-ready" --json "$out/rehearsal-2b.json" >"$out/2b.log" 2>&1
  python3 "$here/queued_sweep.py" --work "$root/2b" --set lora.r=32 --set lora.r=64 \
    --also train.max_steps=200 train.checkpoint_every=100 --target evaluate --lock-dir "$root/sweep-locks" \
    --json "$out/sweep.json" >"$out/sweep.log" 2>&1
) &
python3 "$here/rehearsal.py" --variant xl --work "$root/xl" --cache-dir "$root/dvc-cache" "${kill[@]}" \
  --early base_model --wait-for "$root/data-ready" --data-from "$root/2b" --json "$out/rehearsal-xl.json" \
  >"$out/xl.log" 2>&1 &
wait
touch "$out/done"
