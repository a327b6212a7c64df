#!/usr/bin/env bash
# The quality sweep behind RESULTS.md's issue-21 tables: every candidate x ratio x precompute mode on
# MuSiQue dev (50) and the synthetic set (100), one process per (dataset, mode, selector group), in
# parallel on one GPU (SmolLM2 fp32 is launch-bound: the processes overlap). Resumable: rows already
# in an output directory are skipped.
#   benchmarks/quality_sweep.sh MODEL.gguf MUSIQUE.json NEIGHBORS.json OUT_DIR [GROUP ...]
# A GROUP is a quoted, space-separated list of selector specs (evaluation/variants.py).
set -u
model=$1 musique=$2 neighbors=$3 out=$4
shift 4
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=("epic cacheblend" "fusionrag qcfuse" "hybrid:sink=0,adaptive=0 hybrid:adaptive=0" "hybrid")
here=$(cd "$(dirname "$0")" && pwd)
pids=()
for mode in standalone similar; do
  for dataset in musique synthetic; do
    for i in "${!groups[@]}"; do
      dir="$out/${dataset}_${mode}_g$i"
      mkdir -p "$dir"
      if [ "$dataset" = musique ]; then data=(--data "$musique" --limit 50); else data=(--synthetic 100); fi
      # shellcheck disable=SC2206
      selectors=(${groups[$i]})
      python3 "$here/device_quality.py" run --neighbors-json "$neighbors" -- --model "$model" \
        --device "${DEVICE:-cuda}" --dtype float32 --threads 1 "${data[@]}" --precompute "$mode" \
        --selectors "${selectors[@]}" --ratios 0.05 0.15 0.3 --store-gb 1 0.5 2 --cache-dir "$dir/cache" --out "$dir" \
        > "$dir/log.txt" 2>&1 &
      pids+=($!)
    done
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
