#!/usr/bin/env bash
# The paper's pre-training run (VasoMIM §8) on one node with 8 GPUs: ViT-B/16, 800 epochs,
# effective batch 2,048 = 8 GPUs x 256 images per GPU per step, as 4 accumulated micro-batches
# of 64 (lower MAX_MICRO_BATCH when memory is short: the update stays the same). One process
# per GPU, NCCL between them; rank 0 writes the run folder. See docs/DISTRIBUTED.md.
#
#   scripts/distributed/pretrain_8gpu.sh <XA-170K folder> <segmentor.safetensors> [pretrain flags]
#   DRY_RUN=1 scripts/distributed/pretrain_8gpu.sh ...     # print each rank's command, run nothing
#
# Environment: VASOMIM (the command, default `npx vasomim`), GPUS (default 0,1,2,3,4,5,6,7),
# MAX_MICRO_BATCH (default 64), RUNS (runs folder, default runs). Resume with
# `vasomim pretrain --resume runs/<name> --gpus ...` (any number of GPUs dividing 2,048).
set -euo pipefail
usage="usage: $0 <XA-170K folder> <segmentor.safetensors> [pretrain flags]"
data=${1:?$usage}
segmentor=${2:?$usage}
shift 2
read -ra vasomim <<<"${VASOMIM:-npx vasomim}"
cmd=("${vasomim[@]}" pretrain --preset vasomim-vit-b --data "$data" --segmentor "$segmentor"
  --runs "${RUNS:-runs}" --max-micro-batch "${MAX_MICRO_BATCH:-64}" --gpus "${GPUS:-0,1,2,3,4,5,6,7}" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then
  cmd+=(--dry-run)
fi
exec "${cmd[@]}"
