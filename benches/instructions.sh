#!/usr/bin/env bash
# Instructions per request through quota-proxy, counted by callgrind: a
# figure that, unlike req/s or CPU seconds, does not move with the noise of
# a shared machine, so it shows what one code change does (BENCHMARKS.md,
# "Instruction counts"). Kernel time (syscalls, loopback TCP) is not counted.
#
#   apt-get install -y valgrind nginx-light wrk redis-server
#   cargo build --release
#   benches/instructions.sh [path/to/quota-proxy]     # about 3 minutes
#
# On loopback only, on fixed ports (BASE_PORT, default 18500, to +4): an
# nginx upstream answering 200 with 20 bytes (and `X-Images-Saved: 1` on
# the chat route), quota-proxy with one serving thread under callgrind, and
# for the Redis store a redis-server under callgrind too. wrk drives 8
# connections: 5 s of warm-up uncounted, then 15 s counted. Everything it
# starts is stopped when it ends.
set -euo pipefail

bin=$(realpath "${1:-target/release/quota-proxy}")
base=${BASE_PORT:-18500}
upstream_port=$base
proxy_port=$((base + 1))
redis_port=$((base + 2))
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $work/nginx.pid ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    done
    rm -rf "$work"
}
trap cleanup EXIT

for tool in valgrind callgrind_control nginx wrk redis-server; do
    command -v "$tool" >/dev/null || { echo "needs $tool (see the top of $0)" >&2; exit 1; }
done

cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$upstream_port;
    keepalive_requests 1000000;
    location /chat/ { add_header X-Images-Saved 1; return 200 "01234567890123456789"; }
    location / { return 200 "01234567890123456789"; }
  }
}
EOF
nginx -c "$work/nginx.conf"

# The flagged request: the bench's JSON body, 10,000 users in turn.
cat >"$work/flagged.lua" <<'EOF'
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"message": "draw a cat sitting on a persian rug", "generate_image": true}'
request = function()
  n = n + 1
  wrk.headers["X-User-Id"] = "u" .. (n % 10000)
  return wrk.format(nil, "/chat/session/17/send/")
end
EOF

config() { # config STORE-TABLE
    cat <<EOF
listen = "127.0.0.1:$proxy_port"
upstream = "http://127.0.0.1:$upstream_port"
threads = 1
[store]
$1
on_store_error = "deny"
command_timeout = "5s"
[identity]
default_plan = "bench"
[plans]
bench = { daily = 1000000000, weekly = 1000000000, monthly = 1000000000 }
[[routes]]
method = "POST"
path = "/chat/session/{session_id}/send/"
deny_status = 403
[admin]
listen = "127.0.0.1:0"
EOF
}

# under_callgrind NAME COMMAND...: starts COMMAND with counting off; prints its pid.
under_callgrind() {
    local name=$1
    shift
    valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$work/$name.%p" "$@" >"$work/$name.log" 2>&1 &
    echo $!
}

# total NAME: instructions in every dump of NAME.
total() {
    cat "$work/$1".* | awk '/^totals:/ { sum += $2 } END { print sum + 0 }'
}

# measure LABEL URL-PATH [LUA] [REDIS-PID]: one line of the table.
measure() {
    local label=$1 path=$2 script=${3:-} redis=${4:-}
    local counted=("$proxy")
    [[ -n $redis ]] && counted+=("$redis")
    for _ in $(seq 120); do
        curl -s -o /dev/null "http://127.0.0.1:$proxy_port/" && break
        sleep 0.5
    done
    local args=(-t1 -c8 ${script:+-s "$work/$script"})
    wrk "${args[@]}" -d5s "http://127.0.0.1:$proxy_port$path" >/dev/null
    for pid in "${counted[@]}"; do callgrind_control -i on "$pid" >/dev/null 2>&1; done
    local out
    out=$(wrk "${args[@]}" -d15s "http://127.0.0.1:$proxy_port$path")
    for pid in "${counted[@]}"; do
        callgrind_control -i off "$pid" >/dev/null 2>&1
        callgrind_control -d "$pid" >/dev/null 2>&1
    done
    local requests
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "$label: answers other than 2xx: $(grep Non-2xx <<<"$out")" >&2
        exit 1
    fi
    sleep 1
    local line
    line=$(printf '%-34s %8d requests  proxy %7d instr/req' "$label" "$requests" \
        $(($(total "proxy-$label") / requests)))
    [[ -n $redis ]] && line+=$(printf '  redis-server %7d instr/req' $(($(total "redis-$label") / requests)))
    echo "$line"
}

config 'kind = "memory"' >"$work/memory.toml"
config "kind = \"redis\"
url = \"redis://127.0.0.1:$redis_port\"" >"$work/redis.toml"

echo "quota-proxy: $bin"
for shape in pass-through flagged,memory flagged,redis; do
    case $shape in
    pass-through)
        proxy=$(RUST_LOG=warn under_callgrind "proxy-$shape" "$bin" --config "$work/memory.toml")
        pids+=("$proxy")
        measure "$shape" /static/js/chat.bundle.js
        ;;
    flagged,memory)
        proxy=$(RUST_LOG=warn under_callgrind "proxy-$shape" "$bin" --config "$work/memory.toml")
        pids+=("$proxy")
        measure "$shape" /chat/session/17/send/ flagged.lua
        ;;
    flagged,redis)
        redis=$(under_callgrind "redis-$shape" redis-server --port "$redis_port" --save "" --appendonly no)
        pids+=("$redis")
        for _ in $(seq 60); do
            redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
            sleep 0.5
        done
        proxy=$(RUST_LOG=warn under_callgrind "proxy-$shape" "$bin" --config "$work/redis.toml")
        pids+=("$proxy")
        measure "$shape" /chat/session/17/send/ flagged.lua "$redis"
        ;;
    esac
    kill "$proxy"
    while kill -0 "$proxy" 2>/dev/null; do sleep 0.2; done
done
