#!/usr/bin/env bash
# Starts a three-node adclick cluster (release build) on loopback in a temporary
# directory, runs `cluster-load` against it with the arguments given (it reports each
# node's CPU time and peak RSS per phase), and stops the nodes. Bounded: each offered rate
# runs for --duration seconds (default 20) and the script kills anything left when it
# exits.
#
#   bench/scripts/cluster-load.sh --clients 8 --rate 0,50000 --duration 20 --json out.json
#   bench/scripts/cluster-load.sh --clients 1 --duration 20
#   ADCLICKD=/path/to/other/adclickd bench/scripts/cluster-load.sh ...   (A/B a build)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -q -p adclick-server -p adclick-bench --bin adclickd --bin cluster-load
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/release"
dir=$(mktemp -d -t adclick-bench.XXXXXX)
base=${ADCLICK_BENCH_PORT:-27400}
peers="1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    # A node drains and stops within ~20 s (hand-off, drain, group stop limits).
    for _ in $(seq 1 200); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
for i in 1 2 3; do
    RUST_LOG=${RUST_LOG:-warn} "${ADCLICKD:-$bin/adclickd}" --node-id $i --data-dir "$dir/n$i" \
        --listen 127.0.0.1:$((base + i)) --http 127.0.0.1:$((base + 100 + i)) \
        --peers "$peers" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 1 100); do
    ok=0
    for i in 1 2 3; do
        curl -sf "127.0.0.1:$((base + 100 + i))/healthz" >/dev/null && ok=$((ok + 1))
    done
    [ "$ok" = 3 ] && break
    sleep 0.2
done
[ "$ok" = 3 ] || { echo "cluster did not become healthy"; tail -n 20 "$dir"/n*.log; exit 1; }
"$bin/cluster-load" --targets "127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))" \
    --pids "1=${pids[0]},2=${pids[1]},3=${pids[2]}" "$@"
