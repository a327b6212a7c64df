#!/usr/bin/env bash
# The quality sweep behind RESULTS.md's issue-21 tables: candidates x ratios x precompute mode on
# MuSiQue dev (50) and the synthetic set (100). One process per (mode, dataset, selector group, part),
# all in parallel on one GPU (SmolLM2 fp32 is host-bound: the processes overlap). Resumable: rows
# already in an output directory are skipped. Each group's processes share the whole dataset as the
# neighbour pool (--part splits the examples, not the pool).
#   benchmarks/quality_sweep.sh MODEL.gguf MUSIQUE.json NEIGHBORS.json OUT_DIR
# Environment: PARTS (default 2), MODES (default "standalone similar"), and the groups below.
set -u
model=$1 musique=$2 neighbors=$3 out=$4
parts=${PARTS:-2}
here=$(cd "$(dirname "$0")" && pwd)
similar_groups=("epic cacheblend" "fusionrag qcfuse"
  "hybrid:budget=deviation,sink=0,adaptive=0 hybrid:budget=global,sink=1,adaptive=0"
  "hybrid:budget=deviation,sink=1,adaptive=1 hybrid:budget=global,sink=1,adaptive=1"
  "hybrid:budget=global,sink=4,adaptive=0 hybrid:budget=global,sink=16,adaptive=0")
# standalone baselines: issue 8's runs; over standalone KV the hybrid's sinks count only with sinks=all
# (its default scope, "context", leaves them out there: it is QCFuse itself)
standalone_groups=("" "")
for group in "${similar_groups[@]:2}"; do standalone_groups+=("$(echo "$group" | sed 's/adaptive=[01]/&,sinks=all/g')"); done
pids=()
for mode in ${MODES:-standalone similar}; do
  for dataset in musique synthetic; do
    for g in 0 1 2 3 4; do
      if [ "$mode" = similar ]; then group=${similar_groups[$g]}; else group=${standalone_groups[$g]}; fi
      [ -n "$group" ] || continue
      for part in $(seq 1 "$parts"); do
        dir="$out/${dataset}_${mode}_g${g}_p$part"
        pgrep -f "$dir/cache" > /dev/null && continue  # still running (a re-run restarts only the others)
        mkdir -p "$dir"
        if [ "$dataset" = musique ]; then data=(--data "$musique" --limit 50); else data=(--synthetic 100); fi
        # shellcheck disable=SC2206
        selectors=($group)
        python3 "$here/device_quality.py" run --neighbors-json "$neighbors" -- --model "$model" \
          --device "${DEVICE:-cuda}" --dtype float32 --threads 1 "${data[@]}" --part "$part/$parts" \
          --precompute "$mode" --selectors "${selectors[@]}" --ratios 0.05 0.15 0.3 --store-gb 0.5 0.5 2 \
          --cache-dir "$dir/cache" --out "$dir" >> "$dir/log.txt" 2>&1 &
        pids+=($!)
      done
    done
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
