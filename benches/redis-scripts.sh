#!/usr/bin/env bash
# What the Redis store's scripts cost Redis, without the proxy: one reserve
# then one settle (unbatched) per flagged request, 10,000 users in turn,
# against a redis-server of its own under callgrind. Prints redis-server's
# instructions per flagged request (a figure that does not move with the
# machine's load) and the commands the scripts ran per request (INFO
# commandstats; its µs mean nothing under callgrind).
#
#   apt-get install -y valgrind redis-server
#   benches/redis-scripts.sh [DIR]      # DIR holds reserve.lua and settle.lua
#                                       # (default src/store/redis); ~1 minute
#
# To compare two commits: git show OLD:src/store/redis/reserve.lua > /tmp/a/reserve.lua
# (and settle.lua), then run it on /tmp/a and on src/store/redis.
# On loopback only, on a fixed port (BASE_PORT, default 18520).
set -euo pipefail

dir=${1:-src/store/redis}
port=${BASE_PORT:-18520}
warm=${WARM:-20000}
counted=${COUNTED:-10000}
work=$(mktemp -d)
redis=
cleanup() {
    [[ -n $redis ]] && kill "$redis" 2>/dev/null && wait "$redis" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

for tool in valgrind callgrind_control redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "needs $tool (see the top of $0)" >&2; exit 1; }
done

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
    redis-server --port "$port" --save "" --appendonly no >"$work/redis.log" 2>&1 &
redis=$!
for _ in $(seq 60); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.5
done
cli() { redis-cli -p "$port" "$@"; }
reserve=$(cli script load "$(cat "$dir/reserve.lua")")
settle=$(cli script load "$(cat "$dir/settle.lua")")

# requests FIRST N: the commands of N flagged requests, as redis-cli reads
# them, with the arguments the store sends (src/store/redis/mod.rs).
requests() {
    awk -v first="$1" -v n="$2" -v r="$reserve" -v s="$settle" 'BEGIN {
        now = 1764800000000
        for (i = first; i < first + n; i++) {
            u = "u" (i % 10000); id = "id" i
            k = "q:{" u "}:d q:{" u "}:w q:{" u "}:m q:{" u "}:res"
            print "EVALSHA " r " 4 " k " " now " " id " " now + 180000 " 240000 1000000000 1000000000 1000000000"
            print "EVALSHA " s " 5 " k " q:{" u "}:done 86400000 -4097 " now " " id " 1 90000000 600000000 2600000000 " now - 86400000
        }
    }'
}

requests 0 "$warm" | cli >/dev/null
cli config resetstat >/dev/null
callgrind_control -i on "$redis" >/dev/null 2>&1
requests "$warm" "$counted" | cli >/dev/null
callgrind_control -i off "$redis" >/dev/null 2>&1
callgrind_control -d "$redis" >/dev/null 2>&1
stats=$(cli info commandstats | tr -d '\r')
sleep 1
total=$(cat "$work"/cg.* | awk '/^totals:/ { sum += $2 } END { print sum + 0 }')
echo "scripts: $dir"
printf 'redis-server %d instructions per flagged request (reserve + settle), %d requests\n' \
    $((total / counted)) "$counted"
awk -F'[:,=]' -v n="$counted" '/^cmdstat_/ && !/^cmdstat_(config|command)/ {
    sub(/^cmdstat_/, "", $1); printf "  %-17s %5.2f per request\n", $1, $3 / n
}' <<<"$stats" | sort
