#!/usr/bin/env bash
# The ablation of VasoMIM's two parts (docs/PRETRAIN.md §Ablation): pre-train under the same
# budget and seeds with
#   mae          random masking, no L_cons            (--masking random --eta 1 --cons-weight 0 --segmentor none)
#   guided       vessel-guided masking, no L_cons     (--cons-weight 0)
#   guided-cons  vessel-guided masking + L_cons       (the method)
#   scratch      no pre-training: the fine-tuning baseline
# then fine-tune each encoder on fercer-xca80 (Angios_40_training, 8 images held out for
# validation) and evaluate best.safetensors on Angios_40_testing, through
# scripts/table/finetune_xca.sh with the same recipe as the fine-tuning table. Pre-training seed s
# goes with fine-tuning seed s. Mean ± sample std over seeds, per variant.
#
# usage: scripts/table/ablation.sh [--validation-only] [seeds...]        (default seeds: 0 1 2)
#   --validation-only  report the validation DSC only; the test split is not touched.
# env: PRESET (demo: ViT-Ti on the bundled angiograms; vasomim-vit-b with DATA set on a GPU
#      machine is the paper-scale command), PRETRAIN_ARGS (extra pretrain flags, e.g. "--epochs 20"),
#      VARIANTS (scratch mae guided guided-cons), FT_EPOCHS (40), OUT (runs/ablation),
#      RECORD (docs/tables/ablation[-val]; empty = no record), DATA (pre-training data; default bundled).
#
# Repeatable: a pre-training run that has its encoder.safetensors, or a fine-tuning run that has
# best.safetensors, is reused (delete the folder to repeat it). The record holds per run the resolved
# config.json and metrics.jsonl (pre-training and fine-tuning) and the test summary.json, plus
# manifest.json (this command, the commit, whether the tree was dirty, the date) and table.md /
# table.json from summarise.mjs. Runs left out of the table stay listed in manifest.json with the reason.
set -euo pipefail
MODE=full
if [ "${1:-}" = "--validation-only" ]; then MODE=validation; shift; fi
SEEDS=${*:-0 1 2}
PRESET=${PRESET:-demo}
PRETRAIN_ARGS=${PRETRAIN_ARGS:-}
VARIANTS=${VARIANTS:-scratch mae guided guided-cons}
FT_EPOCHS=${FT_EPOCHS:-40}
OUT=${OUT:-runs/ablation}
DEFAULT_RECORD=docs/tables/ablation$([ "$MODE" = validation ] && echo -val || true)
RECORD=${RECORD-$DEFAULT_RECORD}
CLI=(npx tsx ts/src/cli/main.ts)
DATA_ARGS=()
[ -n "${DATA:-}" ] && DATA_ARGS=(--data "$DATA")

flags() {
  case "$1" in
    mae) echo "--masking random --eta 1 --cons-weight 0 --segmentor none" ;;
    guided) echo "--masking vessel-guided --cons-weight 0" ;;
    guided-cons) echo "--masking vessel-guided" ;;
    *) echo "ablation: unknown variant $1 (scratch, mae, guided, guided-cons)" >&2; exit 2 ;;
  esac
}

mkdir -p "$OUT/pretrain" "$OUT/ft"
for v in $VARIANTS; do
  for s in $SEEDS; do
    name="$v-s$s"
    enc=scratch
    if [ "$v" != scratch ]; then
      enc="$OUT/pretrain/$name/encoder.safetensors"
      if [ ! -f "$enc" ]; then
        rm -rf "$OUT/pretrain/$name"
        # shellcheck disable=SC2046,SC2086
        "${CLI[@]}" pretrain --preset "$PRESET" "${DATA_ARGS[@]}" $(flags "$v") --seed "$s" $PRETRAIN_ARGS \
          --runs "$OUT/pretrain" --name "$name" 2>&1 | tee "$OUT/pretrain/$name.log"
      fi
      [ -f "$enc" ] || { echo "ablation: $enc was not written" >&2; exit 1; }
    fi
    # One fine-tuning run per (variant, seed), named <variant>-s<seed> in $OUT/ft.
    FT_ARGS=()
    [ "$MODE" = validation ] && FT_ARGS=(--validation-only)
    INITS="$v" EPOCHS="$FT_EPOCHS" OUT="$OUT/ft" RECORD="" \
      scripts/table/finetune_xca.sh "${FT_ARGS[@]}" "$enc" "$s" >/dev/null
  done
done

SUMMARY_ARGS=("$OUT/ft")
[ "$MODE" = validation ] && SUMMARY_ARGS+=(--validation-only)
if [ -z "$RECORD" ]; then
  node scripts/table/summarise.mjs "${SUMMARY_ARGS[@]}"
  exit 0
fi
mkdir -p "$RECORD"
for v in $VARIANTS; do
  for s in $SEEDS; do
    name="$v-s$s"
    mkdir -p "$RECORD/$name/finetune"
    if [ "$v" != scratch ]; then
      mkdir -p "$RECORD/$name/pretrain"
      cp "$OUT/pretrain/$name/config.json" "$OUT/pretrain/$name/metrics.jsonl" "$RECORD/$name/pretrain/"
    fi
    cp "$OUT/ft/$name/config.json" "$OUT/ft/$name/metrics.jsonl" "$RECORD/$name/finetune/"
    if [ "$MODE" = full ]; then cp "$OUT/ft/$name/eval/summary.json" "$RECORD/$name/finetune/"; fi
  done
done
DIRTY=$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo true || echo false)
cat > "$RECORD/manifest.json" <<JSON
{
  "command": "PRESET=$PRESET PRETRAIN_ARGS='$PRETRAIN_ARGS' FT_EPOCHS=$FT_EPOCHS scripts/table/ablation.sh $([ "$MODE" = validation ] && echo '--validation-only ')$SEEDS",
  "mode": "$MODE",
  "variants": "$VARIANTS",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git rev-parse HEAD 2>/dev/null || echo unknown)",
  "dirty": $DIRTY,
  "discarded": []
}
JSON
node scripts/table/summarise.mjs "${SUMMARY_ARGS[@]}" --markdown "$RECORD/table.md" --json "$RECORD/table.json"
echo "recorded in $RECORD"
