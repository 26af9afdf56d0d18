#!/usr/bin/env bash
# The redesign's GPU acceptance (#27): the same benchmark scripts (each tree's prefill/memory_bench, identical in what
# they measure; this tree's decode_bench, which asks three cached questions, for both engines) on the
# commit before the redesign merge (312164b, carried as .ab_old/: `git archive 312164b lighthouse server bench/perf
# bench/__init__.py clients/python/lighthouse_client | tar -C .ab_old -x`, without lighthouse/assets) and on this
# tree, one after the other in separate processes on the same card:
#   bash ab.sh prefill          # prefill_bench (HTTP TTFT 32K/128K/512K, all-sparse 512K, peak, ITL)
#   bash ab.sh memory           # memory_bench's 1M compact prompt only
#   bash ab.sh decode           # decode_bench without the eager comparison
#   bash ab.sh cached           # the cached 128K question under the profiler, old and new
# Results in $OUT/<old|new>/<bench>.json and logs.
set -uo pipefail
PART="${1:?usage: ab.sh prefill|memory|decode|cached}"
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-07_ruler_base/device_env.sh >/dev/null
OUT="${OUT:-/tmp/out}"
ROOT=$PWD
rm -f /tmp/site/lighthouse_server
ln -sfn "$ROOT/lighthouse/assets" "$ROOT/.ab_old/lighthouse/assets"
for which in old new; do
    mkdir -p "/tmp/site_$which" "$OUT/$which"
    src=$ROOT; [ $which = old ] && src=$ROOT/.ab_old
    ln -sfn "$src/server" "/tmp/site_$which/lighthouse_server"
done
run() {  # which, bench, args...
    local which=$1 bench=$2; shift 2
    local src=$ROOT; [ $which = old ] && src=$ROOT/.ab_old
    local script="-m bench.perf.$bench"  # each tree's own, except decode_bench: this tree's drives both engines
    [ $bench = decode_bench ] && script="$ROOT/bench/perf/decode_bench.py"
    echo "== $which $bench $(date +%T)"
    (cd "$src" && PYTHONPATH=/tmp/site_$which:/tmp/site:$src:$ROOT/clients/python \
        timeout -k 5 280 python3 $script --out "$OUT/$which" "$@" > "$OUT/$which/$bench.log" 2>&1)
    echo "rc $? $(date +%T)"; grep -v "Warn\|warn" "$OUT/$which/$bench.log" | tail -14
}
case $PART in
    prefill)
        for which in old new; do run $which prefill_bench --repeats 2 "${@:2}"; done ;;
    memory)
        for which in old new; do run $which memory_bench --skip sessions,concurrent,host,equal; done ;;
    decode)
        # this tree's decode_bench (three cached questions each) drives both engines; the measures the old engine
        # lacks (speculation, structured output) are off; fp8 runs in both. DECODE_RUNS="old new old new" alternates
        # (each run's files then in $OUT/<which>_<i>; e.g. with --no-fp8 to fit a phase), as the host's share of a
        # step moved between holds (2026-12-07 session 7: same kernel time per step, slower steps in one process)
        i=0
        for which in ${DECODE_RUNS:-old new}; do
            i=$((i + 1))
            mkdir -p "$OUT/$which"
            run $which decode_bench --no-eager-compare --no-spec --no-structured "${@:2}"
            [ -n "${DECODE_RUNS:-}" ] && mv "$OUT/$which" "$OUT/${which}_$i"
        done ;;
    cached)  # the cached 128K question under the profiler (cached_question_profile.py)
        for which in old new; do
            src=$ROOT; [ $which = old ] && src=$ROOT/.ab_old
            (cd "$src" && PYTHONPATH=/tmp/site_$which:/tmp/site:$src:$ROOT/clients/python timeout -k 5 200 \
                python3 "$ROOT/bench/experiments/2026-12-07_redesign_ab/cached_question_profile.py" \
                "$OUT/$which/cached_question_profile.txt" 2>&1 | grep -v "Warn\|warn")
        done ;;
esac
