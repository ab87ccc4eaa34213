#!/usr/bin/env bash
# L7 benchmark: rvs' ingress gateway vs nginx configured as ingress-nginx configures it, side
# by side in one run, on loopback; haproxy (HTTP mode, and a bare TCP relay) as reference
# points for what a proxy reaches on the machine.
#
#   bench/l7.sh            # full run (~8 minutes on 2 cores), rewrites its section of
#                          # docs/benchmarks.md
#   QUICK=1 bench/l7.sh    # ~2 minutes: 5 s steps, one repetition
#
# Environment: DURATION (seconds per step; 10, QUICK 5), REPS (repetitions, the median is
# reported; 2, QUICK 1), PIN (1: the proxy under test on CPU 1, load generators and backends
# on CPU 0; default 1 with 2+ CPUs), IDLE_CONNS (idle keep-alive connections for the memory
# step; 10000), OUT (docs/benchmarks.md), SKIP_BUILD=1, KEEP=1 (keep the work directory).
#
# Needs: Linux, root for apt-get (nginx, haproxy, wrk, nghttp2-client for h2load), cargo, python3.
# All traffic stays on 127.0.0.0/8. Everything the script starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-5}
    REPS=${REPS:-1}
else
    DURATION=${DURATION:-10}
    REPS=${REPS:-2}
fi
IDLE_CONNS=${IDLE_CONNS:-10000}
OUT=${OUT:-$ROOT/docs/benchmarks.md}
NCPU=$(nproc)
if [[ -z ${PIN:-} ]]; then
    PIN=$((NCPU >= 2 ? 1 : 0))
fi
if [[ $PIN == 1 ]]; then
    CPU_PROXY=1
    CPU_REST=0
else
    CPU_PROXY=""
    CPU_REST=""
fi

BACKEND_A=127.0.0.11
BACKEND_B=127.0.0.12
BACKEND_PORT=18080
STATUS=127.0.0.13:18089
NGINX_ADDR=127.51.0.1
RVS_ADDR=127.52.0.1
HAPROXY_ADDR=127.53.0.1
RELAY_ADDR=127.54.0.1
HTTP_PORT=8080
TLS_PORT=8443
RVS_ADMIN=127.0.0.1:19091
HOST=bench.example.com

[[ $(uname -s) == Linux ]] || die "Linux only"
apt_install wrk 'nginx-light|nginx' haproxy nghttp2-client curl util-linux iproute2 procps python3

WORK=$(mktemp -d /tmp/rvs-bench-l7.XXXXXX)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
mkdir -p "$WORK/runs" "$WORK/backend" "$WORK/peer" "$WORK/manifests" "$WORK/haproxy"

bench_exit_trap
build_rvs

for a in "$BACKEND_A:$BACKEND_PORT" "$BACKEND_B:$BACKEND_PORT" "$STATUS" "$NGINX_ADDR:$HTTP_PORT" \
    "$RVS_ADDR:$HTTP_PORT" "$RVS_ADDR:$TLS_PORT" "$RVS_ADMIN" "$HAPROXY_ADDR:$HTTP_PORT" \
    "$HAPROXY_ADDR:$((HTTP_PORT + 1))" "$RELAY_ADDR:$HTTP_PORT"; do
    port_free "${a%:*}" "${a##*:}" || die "$a is already in use"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)

# Backends: one nginx, two server blocks answering 100 bytes, and stub_status to count the
# connections the proxies open to them (upstream reuse).
BODY=$(printf 'rvs-bench %089d' 0)
{
    nginx_conf_head "$WORK/backend" "worker_connections 16384;"
    cat <<EOF
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen $BACKEND_A:$BACKEND_PORT backlog=4096;
        listen $BACKEND_B:$BACKEND_PORT backlog=4096;
        location / { default_type text/plain; return 200 "$BODY\n"; }
    }
    server {
        listen $STATUS;
        location / { stub_status; }
    }
}
EOF
} >"$WORK/backend/nginx.conf"

# The peer: nginx as ingress-nginx renders an Ingress (its nginx.tmpl defaults: upstream
# keepalive 320 / 60 s / 10000 requests, HTTP/1.1 upstream with the Connection header
# cleared, the proxy_set_header list, client keepalive 75 s / 1000 requests, JSON access
# log). ACCESS_LOG is switched per configuration.
peer_conf() { # ACCESS_LOG(on|off)
    local log_line="access_log off;"
    [[ $1 == on ]] && log_line="access_log $WORK/peer/access.log upstreaminfo;"
    nginx_conf_head "$WORK/peer" "worker_connections 32768; multi_accept on;"
    cat <<EOF
    log_format upstreaminfo escape=json '{"time":"\$time_iso8601","remote_addr":"\$remote_addr","method":"\$request_method","host":"\$host","path":"\$request_uri","protocol":"\$server_protocol","status":\$status,"bytes_sent":\$bytes_sent,"request_length":\$request_length,"request_time":\$request_time,"upstream_addr":"\$upstream_addr","upstream_status":"\$upstream_status","upstream_response_time":"\$upstream_response_time","namespace":"default","ingress":"bench","service":"bench","request_id":"\$request_id"}';
    $log_line
    keepalive_timeout 75s;
    keepalive_requests 1000;
    client_header_timeout 60s;
    client_body_timeout 60s;
    client_max_body_size 1m;
    large_client_header_buffers 4 8k;
    http2_max_concurrent_streams 128;
    upstream default-bench-80 {
        server $BACKEND_A:$BACKEND_PORT max_fails=0;
        server $BACKEND_B:$BACKEND_PORT max_fails=0;
        keepalive 320;
        keepalive_time 1h;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }
$(for listen in "$HTTP_PORT" "$((HTTP_PORT + 1)) http2"; do cat <<EOS
    server {
        server_name $HOST;
        listen $NGINX_ADDR:$listen backlog=4096;
        # h2load does not reconnect: the h2c port lifts the per-connection request limit
        # (rvs' h2 step does the same with its ConfigMap).
        $([[ $listen == *http2 ]] && echo "keepalive_requests 100000000;")
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Request-ID \$request_id;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Port \$server_port;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Scheme \$scheme;
            proxy_set_header X-Scheme \$scheme;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_buffering on;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_pass http://default-bench-80;
        }
    }
EOS
done)
}
EOF
}

# Reference points, access log off only (haproxy logs through syslog, not to a file):
# haproxy in HTTP mode set up as close to the peer as it allows (the same forwarded headers, a
# random request id (a UUID; nginx's is 32 hex digits), upstream connections reused, 3 tries;
# it has no per-client-connection request limit), and haproxy as a plain TCP relay: it parses nothing and gives each client connection
# its own backend connection, so it shows what relaying the bytes alone costs here.
haproxy_conf() { # http|tcp
    cat <<EOF
global
    nbthread 1
    # Two descriptors per connection; haproxy refuses to start above the descriptor limit.
    maxconn $(((NOFILE - 100) / 2))
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
EOF
    if [[ $1 == tcp ]]; then
        cat <<EOF
    mode tcp
listen relay
    bind $RELAY_ADDR:$HTTP_PORT backlog 4096
    balance roundrobin
    server a $BACKEND_A:$BACKEND_PORT
    server b $BACKEND_B:$BACKEND_PORT
EOF
        return
    fi
    cat <<EOF
    mode http
    option http-keep-alive
    timeout http-keep-alive 75s
    timeout http-request 60s
    retries 2
    option redispatch
frontend ingress
    bind $HAPROXY_ADDR:$HTTP_PORT backlog 4096
    bind $HAPROXY_ADDR:$((HTTP_PORT + 1)) backlog 4096 proto h2
    http-request set-header X-Request-ID %[uuid]
    http-request set-header X-Real-IP %[src]
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Scheme http
    http-request set-header X-Scheme http
    default_backend default-bench-80
backend default-bench-80
    balance roundrobin
    http-reuse always
    server a $BACKEND_A:$BACKEND_PORT pool-max-conn 320 pool-purge-delay 60s
    server b $BACKEND_B:$BACKEND_PORT pool-max-conn 320 pool-purge-delay 60s
EOF
}
haproxy_conf http >"$WORK/haproxy/http.cfg"
haproxy_conf tcp >"$WORK/haproxy/tcp.cfg"

cat >"$WORK/manifests/bench.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: rvs}
spec: {controller: rvs.io/ingress-controller}
---
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-1, namespace: default, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: http, port: $BACKEND_PORT, protocol: TCP}]
endpoints:
  - addresses: [$BACKEND_A]
  - addresses: [$BACKEND_B]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench, namespace: default}
spec:
  ingressClassName: rvs
  rules:
    - host: $HOST
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: bench, port: {name: http}}}}
EOF

mkdir -p "$WORK/manifests-h2"
cp "$WORK/manifests/bench.yaml" "$WORK/manifests-h2/"
cat >"$WORK/manifests-h2/configmap.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: bench-h2, namespace: default}
data: {keep-alive-requests: "100000000"}
EOF

write_wrk_report "$WORK/report.lua"

# Holds N idle HTTP/1.1 keep-alive connections (one request each, then quiet) until stdin
# closes; prints "ready N" once they are all open.
cat >"$WORK/idle.py" <<'EOF'
import asyncio, sys
async def one(host, port, hostname, conns):
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET / HTTP/1.1\r\nHost: {hostname}\r\n\r\n".encode())
    await w.drain()
    await r.readuntil(b"\n\n") if False else await r.read(4096)
    conns.append(w)
async def main():
    host, port, hostname, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    conns = []
    sem = asyncio.Semaphore(500)
    async def guarded():
        async with sem:
            await one(host, port, hostname, conns)
    await asyncio.gather(*(guarded() for _ in range(n)))
    print(f"ready {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
EOF

pinned() {
    if [[ -n $CPU_REST ]]; then taskset -c "$CPU_REST" "$@"; else "$@"; fi
}

start_bg backend "$CPU_REST" nginx -c "$WORK/backend/nginx.conf" -g 'daemon off;'
wait_until 10 curl -sf "http://$BACKEND_A:$BACKEND_PORT/" || die "backend nginx did not start"

PEER_PID="" RVS_PID="" HAPROXY_PID=""
start_peer() { # ACCESS_LOG
    peer_conf "$1" >"$WORK/peer/nginx.conf"
    start_bg "peer-$1" "$CPU_PROXY" nginx -c "$WORK/peer/nginx.conf" -g 'daemon off;'
    PEER_PID=$STARTED_PID
    wait_until 10 curl -sf -H "Host: $HOST" "http://$NGINX_ADDR:$HTTP_PORT/" || die "peer nginx did not start (see $WORK/peer-$1.log)"
}
start_rvs() { # ACCESS_LOG [h2]
    local target=off dir=$WORK/manifests extra=()
    [[ $1 == on ]] && target=$WORK/rvs-access.log
    # The h2 step: the same raised request limit per connection as the peer's h2c port.
    [[ ${2:-} == h2 ]] && dir=$WORK/manifests-h2 extra=(--configmap default/bench-h2)
    RVS_LOG=warn start_bg "rvs-$1${2:+-$2}" "$CPU_PROXY" "$RVS" run -f "$dir" --admin "$RVS_ADMIN" \
        --http-listen "$RVS_ADDR:$HTTP_PORT" --https-listen "$RVS_ADDR:$TLS_PORT" --access-log "$target" "${extra[@]}"
    RVS_PID=$STARTED_PID
    wait_until 10 curl -sf -H "Host: $HOST" "http://$RVS_ADDR:$HTTP_PORT/" || die "rvs did not start (see $WORK/rvs-$1.log)"
}
start_haproxy() { # http|tcp
    start_bg "haproxy-$1" "$CPU_PROXY" haproxy -db -f "$WORK/haproxy/$1.cfg"
    local addr=$HAPROXY_ADDR
    [[ $1 == tcp ]] && addr=$RELAY_ADDR
    wait_until 10 curl -sf -H "Host: $HOST" "http://$addr:$HTTP_PORT/" || die "haproxy ($1) did not start (see $WORK/haproxy-$1.log)"
    HAPROXY_PID=$STARTED_PID
}
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}
accepted() { curl -s "http://$STATUS/" | awk 'NR == 3 {print $1}'; }
# Resident memory of a process and its children, in KiB.
rss_kib() {
    local pid total=0 r
    for pid in "$1" $(pgrep -P "$1" || true); do
        r=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + r))
    done
    echo "$total"
}

# Results: rep, config (log-on/log-off), measure, proxy, req/s, p50 ms, p99 ms, errors,
# requests, proxy CPU µs/req, upstream reuse share.
run_wrk() { # REP CONFIG MEASURE PROXY ADDR CONNS
    local rep=$1 config=$2 measure=$3 proxy=$4 addr=$5 conns=$6 pid=$7
    local out=$WORK/runs/$rep-$config-$measure-$proxy.txt
    quiet_gap 20
    local a0 t0 t1 u0 u1 a1 line
    a0=$(accepted)
    t0=$(ticks_of "$pid" $(pgrep -P "$pid" || true))
    u0=$(user_ticks_of "$pid" $(pgrep -P "$pid" || true))
    pinned wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s -s "$WORK/report.lua" -H "Host: $HOST" \
        "http://$addr/" >"$out" 2>&1 || true
    t1=$(ticks_of "$pid" $(pgrep -P "$pid" || true))
    u1=$(user_ticks_of "$pid" $(pgrep -P "$pid" || true))
    a1=$(accepted)
    line=$(grep '^RESULT ' "$out" || true)
    [[ -n $line ]] || die "wrk failed: $(cat "$out")"
    awk -v rep="$rep" -v c="$config" -v m="$measure" -v p="$proxy" -v dt="$((t1 - t0))" \
        -v du="$((u1 - u0))" -v tick="$(getconf CLK_TCK)" -v opened="$((a1 - a0))" '
        { for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] } }
        END {
            secs = r["duration_us"] / 1e6; n = r["requests"];
            printf "%s\t%s\t%s\t%s\t%.1f\t%.3f\t%.3f\t%d\t%d\t%.2f\t%.4f\t%.2f\n", rep, c, m, p, n / secs,
                r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"] + r["non2xx"], n,
                (n > 0 ? dt / tick * 1e6 / n : 0), (n > 0 ? 1 - opened / n : 0),
                (n > 0 ? du / tick * 1e6 / n : 0)
        }' <<<"$line" >>"$RESULTS"
    log "  $(tail -n1 "$RESULTS" | awk -F'\t' '{printf "%-8s %-7s %-6s %10s req/s  p99 %7s ms  errors %s  cpu %s us/req  reuse %s", $2, $3, $4, $5, $7, $8, $10, $11}')"
}

run_h2load() { # REP CONFIG PROXY ADDR PID
    local rep=$1 config=$2 proxy=$3 addr=$4 pid=$5
    local out=$WORK/runs/$rep-$config-h2-$proxy.txt
    quiet_gap 20
    local t0 t1
    t0=$(ticks_of "$pid" $(pgrep -P "$pid" || true))
    pinned h2load -c 64 -m 10 -t 1 -D "$DURATION" --warm-up-time=1 -H ":authority: $HOST" "http://$addr/" >"$out" 2>&1 || true
    t1=$(ticks_of "$pid" $(pgrep -P "$pid" || true))
    awk -v rep="$rep" -v c="$config" -v p="$proxy" -v dt="$((t1 - t0))" -v tick="$(getconf CLK_TCK)" -v secs="$DURATION" '
        /^finished in/ { rps = $4 }
        /^requests:/ { done = $8; failed = $10; errored = $12 }
        /^status codes:/ { ok = $3 }
        /^time for request:/ { p50 = $6 }
        END {
            # h2load prints mean and sd, not percentiles: p50 column holds the mean, p99 "-".
            conv = (p50 ~ /ms$/) ? 1 : (p50 ~ /us$/ ? 0.001 : 1000); sub(/[a-z]+$/, "", p50);
            printf "%s\t%s\th2\t%s\t%.1f\t%.3f\t-\t%d\t%d\t%.2f\t-\t-\n", rep, c, p, rps, p50 * conv,
                failed + errored, done, (done > 0 ? dt / tick * 1e6 / done : 0)
        }' "$out" >>"$RESULTS"
    log "  $(tail -n1 "$RESULTS" | awk -F'\t' '{printf "%-8s %-7s %-6s %10s req/s  mean %s ms  errors %s  cpu %s us/req", $2, $3, $4, $5, $6, $8, $10}')"
}

START=$(date +%s)
for config in log-off log-on; do
    logmode=${config#log-}
    for ((rep = 1; rep <= REPS; rep++)); do
        log "access log $logmode, repetition $rep of $REPS (${DURATION}s per step)"
        proxies=(nginx rvs)
        [[ $logmode == off ]] && proxies=(nginx haproxy relay rvs)
        for proxy in "${proxies[@]}"; do
            if [[ $proxy == nginx ]]; then
                start_peer "$logmode"
                pid=$PEER_PID addr=$NGINX_ADDR
                h2addr=$NGINX_ADDR:$((HTTP_PORT + 1))
            elif [[ $proxy == haproxy ]]; then
                start_haproxy http
                pid=$HAPROXY_PID addr=$HAPROXY_ADDR
                h2addr=$HAPROXY_ADDR:$((HTTP_PORT + 1))
            elif [[ $proxy == relay ]]; then
                start_haproxy tcp
                pid=$HAPROXY_PID addr=$RELAY_ADDR
                h2addr=""
            else
                start_rvs "$logmode"
                pid=$RVS_PID addr=$RVS_ADDR
                h2addr=$RVS_ADDR:$HTTP_PORT
            fi
            pinned wrk -t1 -c64 -d2s -H "Host: $HOST" "http://$addr:$HTTP_PORT/" >/dev/null 2>&1 || true
            run_wrk "$rep" "$config" ka64 "$proxy" "$addr:$HTTP_PORT" 64 "$pid"
            run_wrk "$rep" "$config" ka256 "$proxy" "$addr:$HTTP_PORT" 256 "$pid"
            if [[ $proxy == rvs ]]; then
                curl -s "http://$RVS_ADMIN/metrics" | grep -E '^rvs_gateway_upstream_(reuse_ratio|connections_opened|requests_reused)' \
                    >"$WORK/runs/$rep-$config-rvs-pool.txt" || true
                stop_pid "$pid"
                start_rvs "$logmode" h2
                pid=$RVS_PID
            fi
            # The relay forwards HTTP/2 to an HTTP/1.1 backend: no h2 step for it.
            [[ -n $h2addr ]] && run_h2load "$rep" "$config" "$proxy" "$h2addr" "$pid"
            stop_pid "$pid"
        done
    done
done

# Memory: each proxy alone with IDLE_CONNS idle keep-alive client connections. Not pinned:
# rvs then runs a worker thread per CPU, as deployed (pinned to one CPU it runs one, and
# memory freed by one worker on another's pages is a multi-worker cost).
CPU_PROXY=""
declare -A MEM_BASE MEM_IDLE MEM_SETTLED
for proxy in nginx rvs; do
    if [[ $proxy == nginx ]]; then start_peer off; pid=$PEER_PID addr=$NGINX_ADDR; else start_rvs off; pid=$RVS_PID addr=$RVS_ADDR; fi
    pinned curl -s -H "Host: $HOST" "http://$addr:$HTTP_PORT/" >/dev/null
    sleep 1
    MEM_BASE[$proxy]=$(rss_kib "$pid")
    coproc IDLE { pinned python3 "$WORK/idle.py" "$addr" "$HTTP_PORT" "$HOST" "$IDLE_CONNS" 2>"$WORK/idle-$proxy.log"; }
    read -r -t 120 ready n <&"${IDLE[0]}" || die "idle connections did not open (see $WORK/idle-$proxy.log)"
    sleep 2
    MEM_IDLE[$proxy]=$(rss_kib "$pid")
    # And once settled: an allocator gives freed memory back to the kernel lazily.
    sleep 8
    MEM_SETTLED[$proxy]=$(rss_kib "$pid")
    log "  $proxy: $n idle connections: RSS ${MEM_BASE[$proxy]} KiB -> ${MEM_IDLE[$proxy]} KiB (2 s) -> ${MEM_SETTLED[$proxy]} KiB (10 s)"
    exec {IDLE[1]}>&-
    wait "$IDLE_PID" 2>/dev/null || true
    stop_pid "$pid"
done
ELAPSED=$(($(date +%s) - START))

med() { # CONFIG MEASURE PROXY COLUMN
    awk -F'\t' -v c="$1" -v m="$2" -v p="$3" -v k="$4" '$2 == c && $3 == m && $4 == p && $k != "-" {print $k}' "$RESULTS" | median
}
fmt() { if [[ $2 == - ]]; then echo "-"; else LC_ALL=C printf "%.${1}f" "$2"; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f×", a / b }'; }
declare -A LABEL=([ka64]="HTTP/1.1 keep-alive, 64 connections" [ka256]="HTTP/1.1 keep-alive, 256 connections" [h2]="HTTP/2 (h2c), h2load 64 connections × 10 streams")

RVS_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    RVS_REV="$RVS_REV + uncommitted changes"
fi
SECTION=$WORK/section.md
{
    echo "_Generated by \`bench/l7.sh\`$([[ $QUICK == 1 ]] && echo ' (QUICK=1)') on $(date -u '+%Y-%m-%d %H:%M UTC'); do not edit by hand, re-run the script._"
    echo
    echo "- Machine: $NCPU CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), Linux $(uname -r)"
    echo "- Versions: rvs $RVS_REV (release build), $(nginx -v 2>&1 | sed 's/.*: //'), haproxy $(haproxy -v 2>&1 | awk '{print $3; exit}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), h2load $(h2load --version 2>&1 | awk '{print $NF; exit}')"
    echo "- CPUs: the proxy under test (nginx with \`worker_processes 1\`, or rvs whose Tokio runtime sizes itself from its CPU affinity: one worker) is pinned to CPU 1; wrk/h2load and the backend nginx to CPU 0. One proxy runs at a time."
    echo "- Configuration, the same in both: the peer is nginx configured as ingress-nginx's template renders an Ingress (upstream \`keepalive 320\`, \`keepalive_timeout 60s\`, \`keepalive_requests 10000\`, \`keepalive_time 1h\`; HTTP/1.1 upstream with \`Connection\` cleared; ingress-nginx's \`proxy_set_header\` list incl. \`X-Request-ID \$request_id\`; client \`keepalive_timeout 75s\`, \`keepalive_requests 1000\`; \`proxy_next_upstream error timeout\`, 3 tries); rvs serves an Ingress with no annotations (the same defaults). Backends: one nginx, two addresses, \`return 200\` with 100 bytes."
    echo "- Access log: **log-on** = one JSON line per request to a file in both (nginx \`log_format ... escape=json\` with the same fields as rvs' log); **log-off** = none in both."
    echo "- Steps: ${DURATION} s each, $REPS repetition$( ((REPS > 1)) && echo s) (median), a 2 s warm-up per proxy start, whole run ${ELAPSED} s. wrk \`-t1\` (p50/p99 from its histogram); h2load \`-c 64 -m 10 -t 1 -D ${DURATION}\` over h2c prior knowledge (nginx: a \`listen ... http2\` port; rvs: its one plain port, which detects HTTP/2 per connection); h2load reports mean latency, not percentiles; h2load does not reconnect, so for this step both lift the per-connection request limit (\`keepalive_requests\` on nginx's h2c port, \`keep-alive-requests\` in rvs' ConfigMap)."
    echo "- Proxy CPU: utime+stime of the proxy (with its children) per request, and the two apart (utime: the proxy's own code; stime: the kernel working for it: socket reads and writes, loopback TCP delivery run in the writer's context, epoll). Upstream reuse: 1 - connections the backend accepted during the step (its \`stub_status\`) / requests."
    echo
    for config in log-off log-on; do
        echo "### Access log ${config#log-}"
        echo
        echo "| measurement | nginx | rvs | rvs/nginx |"
        echo "| --- | ---: | ---: | ---: |"
        for m in ka64 ka256 h2; do
            n=$(med "$config" "$m" nginx 5) r=$(med "$config" "$m" rvs 5)
            echo "| ${LABEL[$m]}: req/s (higher is better) | $(fmt 0 "$n") | $(fmt 0 "$r") | $(ratio "$r" "$n") |"
            if [[ $m == h2 ]]; then
                n=$(med "$config" "$m" nginx 6) r=$(med "$config" "$m" rvs 6)
                echo "| ${LABEL[$m]}: mean latency ms (lower is better) | $(fmt 2 "$n") | $(fmt 2 "$r") | $(ratio "$r" "$n") |"
            else
                n=$(med "$config" "$m" nginx 6) r=$(med "$config" "$m" rvs 6)
                echo "| ${LABEL[$m]}: p50 ms | $(fmt 2 "$n") | $(fmt 2 "$r") | $(ratio "$r" "$n") |"
                n=$(med "$config" "$m" nginx 7) r=$(med "$config" "$m" rvs 7)
                echo "| ${LABEL[$m]}: p99 ms (lower is better) | $(fmt 2 "$n") | $(fmt 2 "$r") | $(ratio "$r" "$n") |"
                n=$(med "$config" "$m" nginx 11) r=$(med "$config" "$m" rvs 11)
                echo "| ${LABEL[$m]}: upstream reuse | $(fmt 4 "$n") | $(fmt 4 "$r") | - |"
            fi
            n=$(med "$config" "$m" nginx 10) r=$(med "$config" "$m" rvs 10)
            echo "| ${LABEL[$m]}: proxy CPU µs/request (lower is better) | $(fmt 2 "$n") | $(fmt 2 "$r") | $(ratio "$r" "$n") |"
            if [[ $m != h2 ]]; then
                # Split: the proxy's own code vs the kernel working for it.
                un=$(med "$config" "$m" nginx 12) ur=$(med "$config" "$m" rvs 12)
                kn=$(awk -v a="$n" -v b="$un" 'BEGIN {print a - b}')
                kr=$(awk -v a="$r" -v b="$ur" 'BEGIN {print a - b}')
                echo "| … of which in the proxy's own code (user), µs | $(fmt 2 "$un") | $(fmt 2 "$ur") | $(ratio "$ur" "$un") |"
                echo "| … of which in the kernel (system), µs | $(fmt 2 "$kn") | $(fmt 2 "$kr") | $(ratio "$kr" "$kn") |"
            fi
        done
        echo
    done
    echo "### Reference points, access log off: haproxy, and a relay that parses nothing"
    echo
    echo "How far a proxy gets on this machine and setup: haproxy in HTTP mode (the same forwarded headers and request id, upstream reuse, 3 tries) and haproxy in TCP mode, which relays bytes between each client connection and a backend connection of its own, with no HTTP work at all: the floor of any proxy's cost here. Same steps and pinning as above."
    echo
    echo "| measurement | nginx | haproxy (HTTP) | haproxy/nginx | TCP relay | relay/nginx | rvs | rvs/nginx |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for m in ka64 ka256 h2; do
        for col in 5 10 12; do
            [[ $m == h2 && $col == 12 ]] && continue
            row=()
            for p in nginx haproxy relay rvs; do row+=("$(med log-off "$m" "$p" "$col")"); done
            case $col in
            5) what="req/s" digits=0 ;;
            10) what="proxy CPU µs/request" digits=2 ;;
            12) what="… of which user, µs" digits=2 ;;
            esac
            echo "| ${LABEL[$m]}: $what | $(fmt $digits "${row[0]:--}") | $(fmt $digits "${row[1]:--}") | $(ratio "${row[1]:--}" "${row[0]:--}") | $(fmt $digits "${row[2]:--}") | $(ratio "${row[2]:--}" "${row[0]:--}") | $(fmt $digits "${row[3]:--}") | $(ratio "${row[3]:--}" "${row[0]:--}") |"
        done
    done
    echo
    echo "### Memory with $IDLE_CONNS idle keep-alive client connections"
    echo
    echo "| | nginx | rvs | rvs/nginx |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| RSS before, MiB | $(fmt 1 "$(awk -v k="${MEM_BASE[nginx]}" 'BEGIN {print k / 1024}')") | $(fmt 1 "$(awk -v k="${MEM_BASE[rvs]}" 'BEGIN {print k / 1024}')") | $(ratio "${MEM_BASE[rvs]}" "${MEM_BASE[nginx]}") |"
    for at in 2 10; do
        if [[ $at == 2 ]]; then
            n_kib=${MEM_IDLE[nginx]} r_kib=${MEM_IDLE[rvs]}
        else
            n_kib=${MEM_SETTLED[nginx]} r_kib=${MEM_SETTLED[rvs]}
        fi
        n_per=$(awk -v a="${MEM_BASE[nginx]}" -v b="$n_kib" -v n="$IDLE_CONNS" 'BEGIN {printf "%.2f", (b - a) / n}')
        r_per=$(awk -v a="${MEM_BASE[rvs]}" -v b="$r_kib" -v n="$IDLE_CONNS" 'BEGIN {printf "%.2f", (b - a) / n}')
        echo "| RSS with the idle connections, ${at} s after the last opened, MiB | $(fmt 1 "$(awk -v k="$n_kib" 'BEGIN {print k / 1024}')") | $(fmt 1 "$(awk -v k="$r_kib" 'BEGIN {print k / 1024}')") | $(ratio "$r_kib" "$n_kib") |"
        echo "| KiB per idle connection, ${at} s | $(fmt 1 "$n_per") | $(fmt 1 "$r_per") | $(ratio "$r_per" "$n_per") |"
    done
    echo
    echo "(nginx: master + one worker process; rvs: one process with a worker thread per CPU (2), neither pinned. Each connection carried one request, then stayed open and idle; the clients open 500 at a time, so both proxies also keep up to 320 idle upstream connections. rvs parks a plain HTTP/1.1 client connection after 1 s without a request (hyper's connection and buffers dropped, a small task waits on the socket), and an idle upstream connection within 1.25 s (hyper's connection dropped, the socket kept in the pool); mimalloc returns freed pages to the kernel at its first collection 250 ms after they are freed.)"
    echo
    echo "rvs' own pool counters after the last log-on run:"
    echo
    echo '```'
    cat "$WORK/runs/$REPS-log-on-rvs-pool.txt" 2>/dev/null || true
    echo '```'
    echo
    echo "<details><summary>Every run</summary>"
    echo
    echo "| rep | access log | measurement | proxy | req/s | p50 (h2: mean) ms | p99 ms | errors | requests | CPU µs/req | upstream reuse | user CPU µs/req |"
    echo "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12}' "$RESULTS"
    echo
    echo "</details>"
} >"$SECTION"

SKELETON=$WORK/skeleton.md
printf '# Benchmarks\n\nEach section is written by its script under bench/.\n' >"$SKELETON"
replace_section "$OUT" l7 "$SECTION" "L7 gateway: rvs vs nginx (bench/l7.sh)" "$SKELETON"
log "results written to $OUT"
cat "$SECTION"
