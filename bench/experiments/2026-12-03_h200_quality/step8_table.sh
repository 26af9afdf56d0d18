#!/usr/bin/env bash
# Device call: the retrieval table (20 prompts per cell) on the checkpoint in the working tree, as parallel pieces of
# bench/evals/quality_bench.py on the one GPU (the 6-layer model leaves it mostly idle; 12 GB KV budget each), merged into
# $OUT/table/retrieval.json.
#   bash step8_table.sh all       completion cells, the layer table at 128K, documents_ask cells (a new checkpoint;
#                                 this mode has not been run)
#   bash step8_table.sh ask       documents_ask cells only, merged into the committed table's completion cells
#   bash step8_table.sh fill      the 256K and 512K cells the committed table lacks (tails 0 and 1024, sparse decode
#                                 at 512K): each piece starts from the committed table, so only missing cells run
#   bash step8_table.sh fill256   the passkey cells at 256K that `fill` did not reach
# then, if time is left, item 3's training profile (alone on the GPU) into $OUT/profile_training.txt.
set -uo pipefail
MODE="${1:-all}"
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=lighthouse/assets/default-checkpoint
COMMITTED=bench/results/2026-12-02_h200_quality/retrieval.json
PIECES="${PIECES:-/tmp/pieces}"
mkdir -p "$OUT/table" "$PIECES"
start=$(date +%s)
left() { echo $(( ${BUDGET:-480} - ($(date +%s) - start) )); }
piece() {  # name, quality_bench flags
    local name=$1; shift
    mkdir -p "$PIECES/$name"
    [ "${MODE#fill}" != "$MODE" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['checkpoint']=sys.argv[2]; \
json.dump(d, open(sys.argv[3], 'w'))" "$COMMITTED" "$CK" "$PIECES/$name/retrieval.json"
    ( for args in "$@"; do
        [ "$(left)" -gt 15 ] || break
        # shellcheck disable=SC2086
        timeout -k 5 "$(left)" python3 -m bench.evals.quality_bench --checkpoint "$CK" --trials 20 --kv-cache-gb 12 \
            --out "$PIECES/$name" $args 2>&1 | grep -v "^\[transformers\]" | sed "s/^/[$name] /"
      done; echo "[$name] done at $(( $(date +%s) - start ))s" ) &
}
if [ "$MODE" = all ]; then
    piece long "--formats completion --contexts 524288 --tails 64 --decodes dense --layers-at 0" \
               "--formats completion --contexts 262144 --tails 64 --decodes dense sparse --layers-at 0"
    piece short "--formats completion --contexts 16384 131072 --decodes dense sparse --layers-at 0" \
                "--formats completion --contexts 65536 --decodes dense sparse --layers-at 0"
    piece layers "--formats completion --tasks passkey --contexts 131072 --tails 64 --decodes dense --layers-at 131072"
fi
if [ "$MODE" = fill256 ]; then  # what the fill call's 350 s left out: passkey at 256K, tails 0 and 1024
    for fmt in completion documents_ask; do
        piece "pk_$fmt" "--formats $fmt --tasks passkey --contexts 262144 --decodes dense sparse --layers-at 0"
    done
elif [ "$MODE" = fill ]; then  # passkey before kv; 512K cells first in each piece (they are the slow ones)
    for fmt in completion documents_ask; do
        piece "pk_$fmt" "--formats $fmt --tasks passkey --contexts 524288 --tails 64 --decodes sparse --layers-at 0" \
            "--formats $fmt --tasks passkey --contexts 524288 --tails 0 1024 --decodes dense --layers-at 0" \
            "--formats $fmt --tasks passkey --contexts 262144 --decodes dense sparse --layers-at 0"
        piece "kv_$fmt" "--formats $fmt --tasks kv --contexts 524288 --tails 64 --decodes sparse --layers-at 0" \
            "--formats $fmt --tasks kv --contexts 262144 --decodes dense sparse --layers-at 0" \
            "--formats $fmt --tasks kv --contexts 524288 --tails 0 1024 --decodes dense --layers-at 0"
    done
else
piece ask_short "--formats documents_ask --contexts 16384 131072 --decodes dense sparse --layers-at 0" \
                "--formats documents_ask --contexts 65536 --decodes dense sparse --layers-at 0"
piece ask_long "--formats documents_ask --contexts 524288 --tails 64 --decodes dense --layers-at 0" \
               "--formats documents_ask --contexts 262144 --tails 64 --decodes dense sparse --layers-at 0"
fi
wait
python3 - "$MODE" "$CK" "$COMMITTED" "$OUT/table/retrieval.json" $PIECES/*/retrieval.json <<'PY'
import json, sys
mode, ck, committed, out, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
FIELDS = ("task", "context_requested", "prefill", "dense_tail", "decode", "kv_mode", "layout", "format")
docs = [json.load(open(p)) for p in paths]
base = json.load(open(committed)) if mode != "all" else dict(docs[0])
if mode == "ask":
    base["records"] = [r for r in base["records"] if r["format"] == "completion"]
cells = {tuple(r[k] for k in FIELDS): r for r in base["records"]}
for d in docs:
    assert d["trials"] == 20 and d["seed"] == base["seed"], (d["trials"], d["seed"])
    cells.update({tuple(r[k] for k in FIELDS): r for r in d["records"] if r.get("n")})
    if d.get("layers") and d["layers"] != base.get("layers") and mode == "all":
        base["layers"] = d["layers"]
    base["chat_template"] = d["chat_template"]
if mode == "all":
    base["date"] = docs[0]["date"]
base.update(checkpoint=ck, records=sorted(cells.values(), key=lambda r: (
    r["format"], r["task"], r["context_requested"], r["prefill"], r["dense_tail"] or 0, r["decode"])))
json.dump(base, open(out, "w"), indent=1)
print(f"merged {len(cells)} cells from {len(paths)} pieces into {out}")
PY
echo "-- table done at $(( $(date +%s) - start ))s"
if [ "${MODE#fill}" = "$MODE" ] && [ "$(( 590 - ($(date +%s) - start) ))" -gt 100 ]; then
    timeout -k 5 $(( 585 - ($(date +%s) - start) )) python3 bench/experiments/2026-12-03_h200_quality/profile_training.py \
        "$OUT/profile_training.txt" 2>&1 | grep "^==\|Error\|error" 
fi
echo "-- all done at $(( $(date +%s) - start ))s"
