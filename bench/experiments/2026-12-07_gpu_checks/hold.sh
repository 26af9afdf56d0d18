#!/usr/bin/env bash
# One device hold's checks and measurements, phase by phase (each under its own time limit, output under
# $OUT/<phase>/ as it goes, so a call cut short still returns what finished):
#   bash hold.sh tests prefill_ab ttft decode_ab spec documents ...
# tests:       the GPU tests of the kernels changed since the last hold (paged decode with Q queries per row,
#              speculation, structured output) and of prefill/decode graphs
# prefill_ab:  #27's prefill regression below HTTP: prefill_engine_ab.py in the old tree (.ab_old) and this one,
#              alternating old/new twice, cProfile + torch.profiler in the first pair
# prefill_http: ab.sh prefill (the HTTP benchmark of the acceptance) old then new, 3 repeats
# ttft:        #29 item 6 on the GPU: short_prompt_ttft, the burst and shorts every 0.5 s, old tree and this one
# memory_ab:   ab.sh memory (the 1M compact prompt, old then new)
# decode_ab:   ab.sh decode (the decode kernel now takes Q queries per row: the plain decode floor old vs new)
# spec:        decode_bench's speculative and structured measures (this tree); speconly: speculation's alone
# fp8:         #31 item 3: the float8 paged decode under kernel variants (fp8_decode_variants.py)
# documents_smollm2: documents_bench, every part at 512K in SmolLM2-135M's shape (its full document fits the disk)
# documents:   documents_bench: 512K cold + compact store restore + concurrency; 256K full (the disk holds no 64 GB)
set -uo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$PWD
source bench/experiments/2026-12-07_ruler_base/device_env.sh >/dev/null
export OUT="${OUT:-/tmp/out}" ROOT X=bench/experiments
phase() {  # name, seconds, command...
    local name=$1 secs=$2; shift 2
    mkdir -p "$OUT/$name"
    echo "== $name $(date +%T) (limit ${secs}s)"
    timeout -k 5 "$secs" "$@" > "$OUT/$name/log.txt" 2>&1
    echo "rc $? $(date +%T)"
    grep -v "Warn\|warn\|USDT" "$OUT/$name/log.txt" | tail -25
    # one file per phase: a call returns only so many files, and the machine is wiped after it
    tar -C "$OUT" -czf "$OUT/$name.tgz" "$name" && rm -rf "${OUT:?}/$name"
}
tree_env() {  # old|new -> the PYTHONPATH that serves that tree
    local src=$ROOT; [ "$1" = old ] && src=$ROOT/.ab_old
    mkdir -p "/tmp/site_$1"; ln -sfn "$src/server" "/tmp/site_$1/lighthouse_server"
    [ "$1" = old ] && ln -sfn "$ROOT/lighthouse/assets" "$ROOT/.ab_old/lighthouse/assets"
    echo "/tmp/site_$1:/tmp/site:$src:$ROOT/clients/python"
}
prefill_ab() {
    local i=0
    for which in ${AB_RUNS:-old new old new}; do
        i=$((i + 1))
        local src=$ROOT; [ $which = old ] && src=$ROOT/.ab_old
        local prof=""; [ $i -le 2 ] && [ "${AB_PROFILE:-1}" = 1 ] && prof=--profile
        echo "-- $which run $i $(date +%T)"
        (cd "$src" && PYTHONPATH=$(tree_env $which) timeout -k 5 150 python3 \
            "$ROOT/$X/2026-12-07_redesign_ab/prefill_engine_ab.py" "$OUT/prefill_ab/${which}_$i" $prof 2>&1 \
            | grep -v "Warn\|warn\|USDT")
    done
}
ttft() {  # run from the tree served (its cwd and PYTHONPATH reach the server subprocess); the script is this tree's
    for run in ${TTFT_RUNS:-old:0 new:0 new:0.5}; do
        local which=${run%%:*} gap=${run#*:} src=$ROOT
        [ $which = old ] && src=$ROOT/.ab_old
        echo "-- $which gap $gap $(date +%T)"
        (cd "$src" && PYTHONPATH=$(tree_env $which) timeout -k 5 130 python3 "$ROOT/bench/perf/short_prompt_ttft.py" \
            --short-gap-s $gap --timeout-s 120 --json "$OUT/ttft/${which}_gap$gap.json" 2>&1 | grep -v "Warn\|warn" | tail -8)
    done
}
for p in "$@"; do
    case $p in
        tests)
            phase tests 240 env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider --timeout 150 -rs \
                tests/ops/test_paged_attention.py tests/ops/test_paged_verify_attention.py \
                tests/engine/test_decode_graphs_gpu.py tests/engine/speculative/test_speculative_gpu.py \
                tests/engine/structured/test_structured_gpu.py tests/engine/test_prefill_gpu.py \
                tests/engine/test_kv_cache_fp8.py tests/ops/test_triton_matches_reference_gpu.py \
                tests/engine/test_engine_warmup.py ;;
        prefill_ab) phase prefill_ab 400 bash -c "$(declare -f tree_env prefill_ab); prefill_ab" ;;
        prefill_http) phase prefill_http 300 env OUT=$OUT/prefill_http bash $X/2026-12-07_redesign_ab/ab.sh prefill \
            --kv-cache-gb 62 --repeats 3 ;;
        ttft) phase ttft 420 bash -c "$(declare -f tree_env ttft); ttft" ;;
        memory_ab) phase memory_ab 200 env OUT=$OUT/memory_ab bash $X/2026-12-07_redesign_ab/ab.sh memory ;;
        decode_ab) phase decode_ab 300 env OUT=$OUT/decode_ab bash $X/2026-12-07_redesign_ab/ab.sh decode --kv-cache-gb 62 ;;
        decode_ab4)  # old new old new, without the fp8 engine (~100 s a run; a new run also measures its engine
            # with overlap_decode off: dense/sparse 512K and batch 32, the _no_overlap fields)
            phase decode_ab4 570 env OUT=$OUT/decode_ab4 DECODE_RUNS="old new old new" \
                bash $X/2026-12-07_redesign_ab/ab.sh decode --kv-cache-gb 62 --no-fp8 ;;
        spec) phase spec 420 python3 -m bench.perf.decode_bench --out "$OUT/spec" --no-eager-compare --spec \
            --structured --kv-cache-gb 62 --budget-s 380 ;;
        speconly) phase speconly 360 env SPEC_EXTRA_K=${SPEC_EXTRA_K-8} python3 -m bench.perf.decode_bench --out "$OUT/speconly" --no-base --spec \
            --no-structured --kv-cache-gb 62 --budget-s 330 ;;
        documents)
            phase documents "${DOC_LIMIT:-300}" python3 -m bench.perf.documents_bench --out "$OUT/documents" --skip full ;;
        documents_smollm2)  # all four fields in one run: SmolLM2-135M's shape (a full 512K document is 12 GB)
            phase documents_smollm2 "${DOC_LIMIT:-420}" python3 -m bench.perf.documents_bench \
                --out "$OUT/documents_smollm2" --shape smollm2 --profile ;;
        documents_full)
            phase documents_256k_full 240 python3 -m bench.perf.documents_bench --out "$OUT/documents_256k_full" \
                --tokens 262144 --skip cold,compact,concurrent ;;
        fp8check) phase fp8check 120 env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider --timeout 100 -rs \
            tests/engine/test_kv_cache_fp8.py ;;
        fp8) phase fp8 200 python3 $X/2026-12-07_gpu_checks/fp8_decode_variants.py "$OUT/fp8/fp8_decode_variants.json" ;;
        *) echo "unknown phase $p" ;;
    esac
done
df -h /tmp | tail -1
