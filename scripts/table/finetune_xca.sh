#!/usr/bin/env bash
# The fine-tuning table of docs/SEGMENTATION.md §5 on fercer-xca80: for each init (scratch, a
# pre-trained encoder) and seed, `vasomim finetune` on Angios_40_training (8 images held out for
# validation), then `vasomim evaluate` of best.safetensors on Angios_40_testing.
#
# usage: scripts/table/finetune_xca.sh [--validation-only] <encoder.safetensors> [seeds...]
#   --validation-only  train and report the validation DSC only; the test split is not touched.
#                      Use it while choosing a recipe, so no test figure is seen before the recipe
#                      is fixed; then run without it, once, for the test column.
# env: INITS (scratch pretrained), EPOCHS (40), OUT (runs/table: run folders),
#      RECORD (docs/tables/finetune-xca[-val]: what is committed; empty = no record).
#
# Repeatable: the record holds, per run, the resolved config.json and metrics.jsonl (and the test
# summary.json), plus manifest.json (this command, the git commit and whether the tree was dirty,
# the encoder's sha256 and the config of the pre-training run it came from when that is beside it)
# and table.md / table.json from summarise.mjs. A run folder that already has best.safetensors is
# reused, not retrained: delete it to repeat a run.
set -euo pipefail
MODE=full
if [ "${1:-}" = "--validation-only" ]; then MODE=validation; shift; fi
ENC=${1:?encoder checkpoint}; shift
SEEDS=${*:-0 1 2}
INITS=${INITS:-scratch pretrained}
EPOCHS=${EPOCHS:-40}
OUT=${OUT:-runs/table}
DEFAULT_RECORD=docs/tables/finetune-xca$([ "$MODE" = validation ] && echo -val || true)
RECORD=${RECORD-$DEFAULT_RECORD}
DATA=data/samples/fercer-xca80
CLI=(npx tsx ts/src/cli/main.ts)
mkdir -p "$OUT"
for init in $INITS; do
  for s in $SEEDS; do
    name="$init-s$s"
    src=$([ "$init" = scratch ] && echo scratch || echo "$ENC")
    if [ ! -f "$OUT/$name/checkpoints/best.safetensors" ]; then
      rm -rf "$OUT/$name"
      "${CLI[@]}" finetune --task vessel-seg --data "$DATA" --init "$src" --seed "$s" \
        --epochs "$EPOCHS" --warmup-epochs 2 --lr 2e-3 --batch-size 4 --head-scale 0.25 --img-size 224 \
        --runs "$OUT" --name "$name" 2>&1 | tee "$OUT/$name.train.log"
    fi
    if [ "$MODE" = full ]; then
      "${CLI[@]}" evaluate "$OUT/$name/checkpoints/best.safetensors" --data "$DATA" \
        --out "$OUT/$name/eval" --jobs 2 2>&1 | tee "$OUT/$name.eval.log"
    fi
  done
done

SUMMARY_ARGS=("$OUT")
[ "$MODE" = validation ] && SUMMARY_ARGS+=(--validation-only)
if [ -z "$RECORD" ]; then
  node scripts/table/summarise.mjs "${SUMMARY_ARGS[@]}"
  exit 0
fi
mkdir -p "$RECORD"
for init in $INITS; do
  for s in $SEEDS; do
    name="$init-s$s"
    mkdir -p "$RECORD/$name"
    cp "$OUT/$name/config.json" "$OUT/$name/metrics.jsonl" "$RECORD/$name/"
    if [ "$MODE" = full ]; then cp "$OUT/$name/eval/summary.json" "$RECORD/$name/"; fi
  done
done
ENC_DIR=$(dirname "$ENC")
PRETRAIN_CONFIG=null
if [ -f "$ENC_DIR/config.json" ]; then PRETRAIN_CONFIG=$(cat "$ENC_DIR/config.json"); fi
DIRTY=$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo true || echo false)
cat > "$RECORD/manifest.json" <<JSON
{
  "command": "scripts/table/finetune_xca.sh $([ "$MODE" = validation ] && echo '--validation-only ')$ENC $SEEDS",
  "mode": "$MODE",
  "inits": "$INITS",
  "epochs": $EPOCHS,
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git rev-parse HEAD 2>/dev/null || echo unknown)",
  "dirty": $DIRTY,
  "encoder": "$ENC",
  "encoder_sha256": "$(sha256sum "$ENC" | cut -d' ' -f1)",
  "encoder_pretrain_config": $PRETRAIN_CONFIG
}
JSON
node scripts/table/summarise.mjs "${SUMMARY_ARGS[@]}" --markdown "$RECORD/table.md" --json "$RECORD/table.json"
echo "recorded in $RECORD"
