#!/usr/bin/env bash
# The fine-tuning table of docs/SEGMENTATION.md §5 on fercer-xca80: for each init (scratch, a
# pre-trained encoder) and seed, `vasomim finetune` on Angios_40_training (8 images held out for
# validation) then `vasomim evaluate` of best.safetensors on Angios_40_testing.
# usage: scripts/table/finetune_xca.sh <encoder.safetensors> [seeds...]   (runs in runs/table/)
set -euo pipefail
ENC=${1:?encoder checkpoint}; shift
SEEDS=${*:-0 1 2}
INITS=${INITS:-scratch pretrained}
EPOCHS=${EPOCHS:-40}
OUT=${OUT:-runs/table}
DATA=data/samples/fercer-xca80
mkdir -p "$OUT"
for init in $INITS; do
  for s in $SEEDS; do
    name="$init-s$s"
    src=$([ "$init" = scratch ] && echo scratch || echo "$ENC")
    if [ ! -f "$OUT/$name/checkpoints/best.safetensors" ]; then
      rm -rf "$OUT/$name"
      npx tsx ts/src/cli/main.ts finetune --task vessel-seg --data "$DATA" --init "$src" --seed "$s" \
        --epochs "$EPOCHS" --warmup-epochs 2 --lr 2e-3 --batch-size 4 --head-scale 0.25 --img-size 224 --runs "$OUT" --name "$name" 2>&1 | tee "$OUT/$name.train.log"
    fi
    npx tsx ts/src/cli/main.ts evaluate "$OUT/$name/checkpoints/best.safetensors" --data "$DATA" \
      --out "$OUT/$name/eval" --jobs 2 2>&1 | tee "$OUT/$name.eval.log"
  done
done
