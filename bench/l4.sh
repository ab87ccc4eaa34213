#!/usr/bin/env bash
# L4 benchmark: rvs' userspace TCP proxy vs HAProxy (mode tcp) vs no proxy, on loopback.
#
#   bench/l4.sh            # full run (~8 minutes on 2 cores), rewrites its section of
#                          # docs/benchmarks.md
#   QUICK=1 bench/l4.sh    # ~2-3 minutes: 5 s steps, one repetition
#
# Environment: DURATION (seconds per load step; 10, QUICK 5), REPS (repetitions of the whole
# matrix, the median is reported; 2, QUICK 1), PIN (1: proxy on CPU 1, everything else on
# CPU 0; 0: no pinning; default 1 when there are 2+ CPUs), OUT (the results file;
# docs/benchmarks.md), SKIP_BUILD=1 (use target/release/rvs as it is), KEEP=1 (keep the work
# directory with the raw outputs and logs), PERF=1 (also profile each proxy with perf; the
# reports stay in the work directory). Other work on the machine: QUIET_PCT (15), QUIET_WAIT
# (60 s), OTHER_MAX (25 % of a CPU), RETRIES (2), SLACK (120 s, QUICK 40) — see step_begin.
#
# Needs: Linux, root for apt-get (when a tool is missing), cargo. All traffic stays on
# 127.0.0.0/8. Everything the script starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-5}
    REPS=${REPS:-1}
    WARMUP=1
else
    DURATION=${DURATION:-10}
    REPS=${REPS:-2}
    WARMUP=2
fi
OUT=${OUT:-$ROOT/docs/benchmarks.md}
# Before each step: wait up to QUIET_WAIT s for the machine to be idle (see quiet_gap).
QUIET_WAIT=${QUIET_WAIT:-60}
# After each step: run it again (at most RETRIES times) when other work on the machine used
# more than OTHER_MAX % of a CPU during it.
OTHER_MAX=${OTHER_MAX:-25}
RETRIES=${RETRIES:-2}
# Waiting for quiet and retries may add at most SLACK seconds to the whole run.
SLACK=${SLACK:-$((QUICK == 1 ? 40 : 120))}
EXTRA=0
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

# Addresses (all loopback). Backends: one nginx, two server blocks; an iperf3 server.
BACKEND_A=127.0.0.11
BACKEND_B=127.0.0.12
HTTP_PORT=18080
IPERF_SERVER=127.0.0.21
IPERF_PORT=5201
RVS_HTTP=127.40.0.1
RVS_IPERF=127.40.0.2
RVS_ADMIN=127.0.0.1:19090
HAP_HTTP=127.41.0.1
HAP_IPERF=127.41.0.2
HAP_SPLICE_IPERF=127.42.0.2
VIP_PORT=8080

# ---------------------------------------------------------------------------- setup
[[ $(uname -s) == Linux ]] || die "Linux only"
apt_install haproxy wrk 'nginx-light|nginx' iperf3 jq curl util-linux iproute2 procps

WORK=$(mktemp -d /tmp/rvs-bench-l4.XXXXXX)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
mkdir -p "$WORK/runs" "$WORK/nginx" "$WORK/manifests"

bench_exit_trap
build_rvs

for a in "$BACKEND_A:$HTTP_PORT" "$BACKEND_B:$HTTP_PORT" "$IPERF_SERVER:$IPERF_PORT" \
    "$RVS_HTTP:$VIP_PORT" "$RVS_IPERF:$IPERF_PORT" "$RVS_ADMIN" "$HAP_HTTP:$VIP_PORT" \
    "$HAP_IPERF:$IPERF_PORT" "$HAP_SPLICE_IPERF:$IPERF_PORT"; do
    port_free "${a%:*}" "${a##*:}" || die "$a is already in use"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
# HAProxy needs two descriptors per connection plus pipes for splicing, and refuses to
# start when that exceeds the limit.
HAP_MAXCONN=$(((NOFILE - 500) / 3 < 50000 ? (NOFILE - 500) / 3 : 50000))

# A 100-byte body.
BODY=$(printf 'rvs-bench %089d\n' 0)
{
    nginx_conf_head "$WORK/nginx" "worker_connections 16384;"
    cat <<EOF
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server {
        listen $BACKEND_A:$HTTP_PORT backlog=4096;
        location / { default_type text/plain; return 200 "${BODY%$'\n'}\n"; }
    }
    server {
        listen $BACKEND_B:$HTTP_PORT backlog=4096;
        location / { default_type text/plain; return 200 "${BODY%$'\n'}\n"; }
    }
}
EOF
} >"$WORK/nginx/nginx.conf"

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $HAP_MAXCONN
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend http
    bind $HAP_HTTP:$VIP_PORT
    default_backend http
backend http
    balance roundrobin
    server a $BACKEND_A:$HTTP_PORT
    server b $BACKEND_B:$HTTP_PORT
frontend iperf
    bind $HAP_IPERF:$IPERF_PORT
    default_backend iperf
backend iperf
    server iperf $IPERF_SERVER:$IPERF_PORT
frontend iperf_splice
    bind $HAP_SPLICE_IPERF:$IPERF_PORT
    option splice-auto
    default_backend iperf_splice
backend iperf_splice
    option splice-auto
    server iperf $IPERF_SERVER:$IPERF_PORT
EOF

cat >"$WORK/manifests/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: bench-http, namespace: default}
spec:
  clusterIP: $RVS_HTTP
  ports: [{name: http, port: $VIP_PORT, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-http-1, namespace: default, labels: {kubernetes.io/service-name: bench-http}}
addressType: IPv4
ports: [{name: http, port: $HTTP_PORT, protocol: TCP}]
endpoints:
  - addresses: [$BACKEND_A]
  - addresses: [$BACKEND_B]
---
apiVersion: v1
kind: Service
metadata: {name: bench-iperf, namespace: default}
spec:
  clusterIP: $RVS_IPERF
  ports: [{name: iperf, port: $IPERF_PORT, targetPort: iperf}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-iperf-1, namespace: default, labels: {kubernetes.io/service-name: bench-iperf}}
addressType: IPv4
ports: [{name: iperf, port: $IPERF_PORT, protocol: TCP}]
endpoints:
  - addresses: [$IPERF_SERVER]
EOF

write_wrk_report "$WORK/report.lua"

start_bg nginx "$CPU_REST" nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
NGINX_PID=$STARTED_PID
start_bg iperf3-server "$CPU_REST" iperf3 -s -B "$IPERF_SERVER" -p "$IPERF_PORT"
IPERF_SERVER_PID=$STARTED_PID
start_bg haproxy "$CPU_PROXY" haproxy -db -f "$WORK/haproxy.cfg"
HAPROXY_PID=$STARTED_PID
RVS_LOG=warn start_bg rvs "$CPU_PROXY" "$RVS" run -f "$WORK/manifests" --admin "$RVS_ADMIN"
RVS_PID=$STARTED_PID

wait_until 10 curl -sf "http://$BACKEND_A:$HTTP_PORT/" || die "nginx did not start (see $WORK/nginx.log)"
wait_until 10 curl -sf "http://$BACKEND_B:$HTTP_PORT/" || die "nginx did not start"
wait_until 10 curl -sf "http://$RVS_ADMIN/readyz" || die "rvs is not ready (see $WORK/rvs.log)"
wait_until 10 curl -sf "http://$RVS_HTTP:$VIP_PORT/" || die "rvs does not proxy (see $WORK/rvs.log)"
wait_until 10 curl -sf "http://$HAP_HTTP:$VIP_PORT/" || die "haproxy does not proxy (see $WORK/haproxy.log)"
wait_until 10 bash -c "exec 3<>/dev/tcp/$IPERF_SERVER/$IPERF_PORT" || die "iperf3 server did not start"
[[ $(curl -s "http://$RVS_HTTP:$VIP_PORT/") == "${BODY%$'\n'}" ]] || die "unexpected body through rvs"
RVS_THREADS=$(ls "/proc/$RVS_PID/task" | wc -l)
HAPROXY_THREADS=$(ls "/proc/$HAPROXY_PID/task" | wc -l)
log "rvs runs $RVS_THREADS threads, haproxy $HAPROXY_THREADS"

declare -A HTTP_TARGET=([direct]="$BACKEND_A:$HTTP_PORT" [haproxy]="$HAP_HTTP:$VIP_PORT" [rvs]="$RVS_HTTP:$VIP_PORT")
declare -A IPERF_TARGET=([direct]=$IPERF_SERVER [haproxy]=$HAP_IPERF [haproxy-splice]=$HAP_SPLICE_IPERF [rvs]=$RVS_IPERF)
declare -A PROXY_PID=([direct]="" [haproxy]=$HAPROXY_PID [haproxy-splice]=$HAPROXY_PID [rvs]=$RVS_PID)
CLK_TCK=$(getconf CLK_TCK)

pinned() {
    if [[ -n $CPU_REST ]]; then taskset -c "$CPU_REST" "$@"; else "$@"; fi
}

proxy_ticks() { if [[ -n $1 ]]; then cpu_ticks "$1"; else echo 0; fi; }

# Our long-running processes: the CPU they use is not "other work".
OURS=("$NGINX_PID" $(pgrep -P "$NGINX_PID" || true) "$IPERF_SERVER_PID" "$HAPROXY_PID" "$RVS_PID")

# step_begin / step_end PROXY_PID: around one run of a load generator (in the foreground of
# this shell): the proxy's CPU ticks (DT), per-CPU busy snapshots (S0, S1) and the CPU
# time used by anything else on the machine (OTHER_TICKS: all CPUs' busy time minus ours
# and the load generator's; kernel work charged to no task lands there too).
step_begin() {
    local room=$((1 + SLACK - EXTRA))
    quiet_gap "$((room < QUIET_WAIT ? (room < 1 ? 1 : room) : QUIET_WAIT))"
    EXTRA=$((EXTRA + QUIET_WAITED - 1))
    T0=$(proxy_ticks "$1")
    S0=$(cpu_busy_snapshot)
    O0=$(($(ticks_of "${OURS[@]}") + $(children_ticks)))
    A0=$(busy_ticks)
}
step_end() {
    local a1 o1
    a1=$(busy_ticks)
    o1=$(($(ticks_of "${OURS[@]}") + $(children_ticks)))
    S1=$(cpu_busy_snapshot)
    DT=$(($(proxy_ticks "$1") - T0))
    OTHER_TICKS=$(((a1 - A0) - (o1 - O0)))
}
# other_pct SECONDS: OTHER_TICKS as % of one CPU.
other_pct() { awk -v t="$OTHER_TICKS" -v k="$CLK_TCK" -v s="$1" 'BEGIN {printf "%.0f", 100 * t / k / s}'; }
# disturbed ATTEMPT OTHER_PCT: true when the step should be run again.
disturbed() {
    if (($2 > OTHER_MAX)); then
        if (($1 <= RETRIES && EXTRA < SLACK)); then
            log "  other work used ${2}% of a CPU during the step: running it again"
            EXTRA=$((EXTRA + DURATION + 1))
            return 0
        fi
        log "  other work used ${2}% of a CPU during the step (no retry left): keeping it"
    fi
    return 1
}

# Results: one TSV line per run:
# 1 rep, 2 measure, 3 path, 4 value (req/s or Gbit/s), 5 p50 ms, 6 p99 ms, 7 errors,
# 8 requests or bytes, 9 proxy CPU s, 10 seconds, 11 CPU0 busy %, 12 CPU1 busy %,
# 13 proxy CPU % of one core, 14 proxy CPU per unit (us/request or s/GB),
# 15 busiest CPU % in the idle second before the step, 16 CPU % (of one CPU) used by other
# work during the step, 17 attempts
run_http() { # REP MEASURE PATH CONNS CLOSE
    local rep=$1 measure=$2 path=$3 conns=$4 close=$5
    local pid=${PROXY_PID[$path]} out=$WORK/runs/$rep-$measure-$path.txt
    local hdr=() attempt line secs other
    [[ $close == 1 ]] && hdr=(-H 'Connection: close')
    for ((attempt = 1; ; attempt++)); do
        step_begin "$pid"
        pinned wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s -s "$WORK/report.lua" "${hdr[@]}" \
            "http://${HTTP_TARGET[$path]}/" >"$out" 2>&1 || true
        step_end "$pid"
        line=$(grep '^RESULT ' "$out" || true)
        [[ -n $line ]] || die "wrk failed: $(cat "$out")"
        secs=$(awk '{for (i = 2; i <= NF; i++) if ($i ~ /^duration_us=/) {sub(/.*=/, "", $i); print $i / 1e6}}' <<<"$line")
        other=$(other_pct "$secs")
        if [[ $line == *" requests=0 "* ]] && ((attempt <= RETRIES)); then
            log "  no request completed (other work: ${other}% of a CPU): running the step again"
            continue
        fi
        disturbed "$attempt" "$other" || break
    done
    awk -v rep="$rep" -v m="$measure" -v p="$path" -v tick="$CLK_TCK" -v dt="$DT" \
        -v proxy="${pid:+1}" -v bg="$QUIET_BUSY" -v other="$other" -v attempt="$attempt" \
        -v c0="$(cpu_busy_pct "$S0" "$S1" 0)" -v c1="$(cpu_busy_pct "$S0" "$S1" 1)" '
        { for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] } }
        END {
            secs = r["duration_us"] / 1e6; cpu = dt / tick;
            pct = proxy ? sprintf("%.1f", 100 * cpu / secs) : "-";
            per = proxy && r["requests"] > 0 ? sprintf("%.2f", cpu * 1e6 / r["requests"]) : "-";
            printf "%s\t%s\t%s\t%.1f\t%.3f\t%.3f\t%d\t%d\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
                rep, m, p, r["requests"] / secs, r["p50_us"] / 1000, r["p99_us"] / 1000,
                r["errors"] + r["non2xx"], r["requests"], proxy ? cpu : "-", secs, c0, c1, pct, per,
                bg, other, attempt
        }' <<<"$line" >>"$RESULTS"
    log "  $(tail -n1 "$RESULTS" | awk -F'\t' '{printf "%-7s %-15s %10s req/s  p99 %7s ms  errors %s  proxy cpu %s%%  other %s%%", $2, $3, $4, $6, $7, $13, $16}')"
}

run_bulk() { # REP MEASURE PATH STREAMS
    local rep=$1 measure=$2 path=$3 streams=$4
    local pid=${PROXY_PID[$path]} out=$WORK/runs/$rep-$measure-$path.json
    local attempt err bytes bps secs other
    for ((attempt = 1; ; attempt++)); do
        step_begin "$pid"
        pinned iperf3 -c "${IPERF_TARGET[$path]}" -p "$IPERF_PORT" -t "$DURATION" -P "$streams" -J \
            >"$out" 2>&1 || true
        step_end "$pid"
        err=$(jq -r '.error // empty' "$out" 2>/dev/null || echo "no JSON output")
        [[ -z $err ]] || die "iperf3 ($path, $streams streams) failed: $err"
        read -r bytes bps secs < <(jq -r '.end.sum_received | "\(.bytes) \(.bits_per_second) \(.seconds)"' "$out")
        other=$(other_pct "$secs")
        disturbed "$attempt" "$other" || break
    done
    awk -v rep="$rep" -v m="$measure" -v p="$path" -v tick="$CLK_TCK" -v dt="$DT" \
        -v proxy="${pid:+1}" -v bg="$QUIET_BUSY" -v other="$other" -v attempt="$attempt" \
        -v c0="$(cpu_busy_pct "$S0" "$S1" 0)" -v c1="$(cpu_busy_pct "$S0" "$S1" 1)" \
        -v bytes="$bytes" -v bps="$bps" -v secs="$secs" 'BEGIN {
            cpu = dt / tick;
            pct = proxy ? sprintf("%.1f", 100 * cpu / secs) : "-";
            per = proxy && bytes > 0 ? sprintf("%.3f", cpu / (bytes / 1e9)) : "-";
            printf "%s\t%s\t%s\t%.2f\t-\t-\t0\t%.0f\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
                rep, m, p, bps / 1e9, bytes, proxy ? cpu : "-", secs, c0, c1, pct, per, bg, other, attempt
        }' >>"$RESULTS"
    log "  $(tail -n1 "$RESULTS" | awk -F'\t' '{printf "%-7s %-15s %8s Gbit/s  proxy cpu %s%%  %s s/GB  other %s%%", $2, $3, $4, $13, $14, $16}')"
}

# ---------------------------------------------------------------------------- run
HTTP_PATHS=(direct haproxy rvs)
BULK_PATHS=(direct haproxy haproxy-splice rvs)
# rotate N ARRAY...: the array rotated left by N (so no path always goes first).
rotate() {
    local n=$1
    shift
    local a=("$@") k=$#
    local i
    for ((i = 0; i < k; i++)); do printf '%s\n' "${a[$(((i + n) % k))]}"; done
}

START=$(date +%s)
log "warm-up (${WARMUP}s per path)"
for path in "${HTTP_PATHS[@]}"; do
    pinned wrk -t1 -c32 -d"${WARMUP}s" -H 'Connection: close' "http://${HTTP_TARGET[$path]}/" >/dev/null 2>&1 || true
    pinned wrk -t1 -c64 -d"${WARMUP}s" "http://${HTTP_TARGET[$path]}/" >/dev/null 2>&1 || true
done

for ((rep = 1; rep <= REPS; rep++)); do
    log "repetition $rep of $REPS (${DURATION}s per step)"
    mapfile -t paths < <(rotate "$((rep - 1))" "${HTTP_PATHS[@]}")
    for path in "${paths[@]}"; do run_http "$rep" short32 "$path" 32 1; done
    for path in "${paths[@]}"; do run_http "$rep" short64 "$path" 64 1; done
    for path in "${paths[@]}"; do run_http "$rep" ka64 "$path" 64 0; done
    mapfile -t paths < <(rotate "$((rep - 1))" "${BULK_PATHS[@]}")
    for path in "${paths[@]}"; do run_bulk "$rep" bulk1 "$path" 1; done
    for path in "${paths[@]}"; do run_bulk "$rep" bulk16 "$path" 16; done
done
ELAPSED=$(($(date +%s) - START))

# PERF=1: a CPU profile of each proxy under the keep-alive and short-connection loads, kept
# in the work directory (not in the results file).
if [[ ${PERF:-0} == 1 ]] && command -v perf >/dev/null; then
    KEEP=1
    for path in haproxy rvs; do
        for kind in ka64 short64; do
            hdr=()
            [[ $kind == short64 ]] && hdr=(-H 'Connection: close')
            perf record -q -g -o "$WORK/perf-$path-$kind.data" -p "${PROXY_PID[$path]}" -- sleep "$DURATION" \
                >/dev/null 2>&1 &
            perf_pid=$!
            pinned wrk -t1 -c64 -d"${DURATION}s" "${hdr[@]}" "http://${HTTP_TARGET[$path]}/" \
                >"$WORK/perf-$path-$kind.wrk" 2>&1 || true
            wait "$perf_pid" || true
            perf report -i "$WORK/perf-$path-$kind.data" --no-children --percent-limit 1 --stdio \
                >"$WORK/perf-$path-$kind.txt" 2>/dev/null || true
            log "perf profile of $path ($kind): $WORK/perf-$path-$kind.txt"
        done
    done
fi

"$RVS" ls --admin "$RVS_ADMIN" >"$WORK/rvs-ls.txt" 2>&1 || true
HAPROXY_CPU_TOTAL=$(awk -v t="$(cpu_ticks "$HAPROXY_PID")" -v k="$CLK_TCK" 'BEGIN {printf "%.1f", t / k}')
RVS_CPU_TOTAL=$(awk -v t="$(cpu_ticks "$RVS_PID")" -v k="$CLK_TCK" 'BEGIN {printf "%.1f", t / k}')
kill -0 "$RVS_PID" 2>/dev/null || die "rvs died during the run (see $WORK/rvs.log)"
kill -0 "$HAPROXY_PID" 2>/dev/null || die "haproxy died during the run (see $WORK/haproxy.log)"

# ---------------------------------------------------------------------------- report
# med MEASURE PATH COLUMN: the median over the repetitions.
med() {
    awk -F'\t' -v m="$1" -v p="$2" -v c="$3" '$2 == m && $3 == p && $c != "-" {print $c}' "$RESULTS" | median
}
# fmt DECIMALS VALUE
fmt() { if [[ $2 == - ]]; then echo "-"; else LC_ALL=C printf "%.${1}f" "$2"; fi; }
# ratio A B: A/B as "1.23×".
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f×", a / b }'; }
# change BASE VALUE: VALUE relative to BASE as "+12%" / "-8%".
change() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == 0) print "-"; else printf "%+.0f%%", 100 * (b / a - 1) }'; }

# cpu_range MEASURES_REGEX COLUMN [proxied]: "min–max" of a CPU busy column over the runs.
cpu_range() {
    awk -F'\t' -v re="^($1)\$" -v c="$2" -v proxied="${3:-}" '
        $2 ~ re && $c != "-" && !(proxied && $3 == "direct") {
            if (n++ == 0 || $c < lo) lo = $c; if ($c > hi) hi = $c }
        END { if (n == 0) print "-"; else if (lo == hi) print lo; else printf "%s–%s", lo, hi }' "$RESULTS"
}

declare -A LABEL=(
    [short32]="new connection per request, 32 connections"
    [short64]="new connection per request, 64 connections"
    [ka64]="keep-alive, 64 connections"
    [bulk1]="iperf3, 1 connection"
    [bulk16]="iperf3, 16 parallel connections"
)

RVS_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    RVS_REV="$RVS_REV + uncommitted changes"
fi
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
SECTION=$WORK/section.md
{
    echo "_Generated by \`bench/l4.sh\`$([[ $QUICK == 1 ]] && echo ' (QUICK=1)') on $(date -u '+%Y-%m-%d %H:%M UTC'); do not edit by hand, re-run the script._"
    echo
    echo "- Machine: $NCPU CPUs (${CPU_MODEL:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
    echo "- Versions: rvs $RVS_REV ($("$RVS" --version 2>/dev/null | awk '{print $2}'), release build), HAProxy $(haproxy -v | head -n1 | awk '{print $3}'), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $(iperf3 --version | head -n1 | awk '{print $1, $2}'), $(nginx -v 2>&1 | sed 's/.*: //')"
    if [[ $PIN == 1 ]]; then
        echo "- CPUs: the proxy under test (HAProxy or rvs) is pinned to CPU 1 (\`taskset -c 1\`); wrk, iperf3 (client and server) and nginx are pinned to CPU 0. HAProxy runs \`nbthread 1\`; rvs' Tokio runtime sizes itself from the CPU affinity and so also has one worker ($RVS_THREADS threads in all, HAProxy $HAPROXY_THREADS)."
    else
        echo "- CPUs: no pinning (PIN=0); HAProxy \`nbthread 1\`, rvs $RVS_THREADS threads."
    fi
    echo "- Other work on the machine: before each step the script waits (up to ${QUIET_WAIT} s) until no CPU is more than ${QUIET_PCT:-15}% busy for a second; a step during which processes other than the benchmark's used more than ${OTHER_MAX}% of a CPU is run again (up to $RETRIES times; waits and retries add at most ${SLACK} s to the run, this one $EXTRA s)."
    echo "- Steps: ${DURATION} s each, $REPS repetition$( ((REPS > 1)) && echo s) of the whole matrix (the median is reported; the order of the paths rotates between repetitions), ${WARMUP} s warm-up per path, whole run ${ELAPSED} s."
    echo "- Backends: one nginx (1 worker, \`access_log off\`, \`keepalive_requests 10000000\`) with two server blocks, $BACKEND_A:$HTTP_PORT and $BACKEND_B:$HTTP_PORT, each answering \`return 200\` with a 100-byte body; \`iperf3 -s\` on $IPERF_SERVER:$IPERF_PORT."
    echo "- Paths: **direct** = wrk to $BACKEND_A:$HTTP_PORT, iperf3 to the server; **HAProxy** = \`mode tcp\`, \`balance roundrobin\` over both backends (defaults otherwise: no kernel splicing); **HAProxy splice** (bulk only) = the same with \`option splice-auto\`; **rvs** = \`rvs run\` with a ClusterIP Service (scheduler rr) on both backends. iperf3 has its own frontend/Service with one server, since its control and data connections must reach the same server."
    echo "- Load: \`wrk -t1\` (latency percentiles from its histogram, as \`--latency\` prints them, read by a Lua \`done\` hook); *new connection per request* = \`-H 'Connection: close'\` (nginx closes after each response, wrk reconnects); iperf3 client → server (\`-t ${DURATION} [-P 16] -J\`), Gbit/s = \`end.sum_received\`."
    echo "- Proxy CPU: utime+stime of the proxy process from \`/proc/PID/stat\` before and after each step (all threads; the kernel's TCP work done in the proxy's system calls counts, softirq work may land elsewhere). CPU s/GB divides by the bytes iperf3 received."
    echo "- Sysctls as found: \`tcp_tw_reuse=$(cat /proc/sys/net/ipv4/tcp_tw_reuse)\`, \`ip_local_port_range=$(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range)\`, \`somaxconn=$(cat /proc/sys/net/core/somaxconn)\`."
    echo
    echo "### HTTP through the L4 proxy"
    echo
    echo "| measurement | direct | HAProxy | rvs | rvs/HAProxy | rvs vs direct |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for m in short32 short64 ka64; do
        d=$(med "$m" direct 4) h=$(med "$m" haproxy 4) r=$(med "$m" rvs 4)
        echo "| ${LABEL[$m]}: req/s (higher is better) | $(fmt 0 "$d") | $(fmt 0 "$h") | $(fmt 0 "$r") | $(ratio "$r" "$h") | $(change "$d" "$r") |"
        d=$(med "$m" direct 6) h=$(med "$m" haproxy 6) r=$(med "$m" rvs 6)
        echo "| ${LABEL[$m]}: p99 ms (lower is better) | $(fmt 2 "$d") | $(fmt 2 "$h") | $(fmt 2 "$r") | $(ratio "$r" "$h") | $(change "$d" "$r") |"
    done
    echo
    echo "Proxy CPU during the HTTP steps (CPU 0, shared by wrk and nginx, is usually the bottleneck: compare CPU per request, not only req/s):"
    echo
    echo "| measurement | HAProxy CPU % | rvs CPU % | HAProxy CPU µs/req | rvs CPU µs/req | rvs/HAProxy (µs/req) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for m in short32 short64 ka64; do
        hp=$(med "$m" haproxy 13) rp=$(med "$m" rvs 13) hu=$(med "$m" haproxy 14) ru=$(med "$m" rvs 14)
        echo "| ${LABEL[$m]} | $(fmt 0 "$hp") | $(fmt 0 "$rp") | $(fmt 2 "$hu") | $(fmt 2 "$ru") | $(ratio "$ru" "$hu") |"
    done
    echo
    echo "During these steps CPU 0 (wrk and nginx) was $(cpu_range 'short32|short64|ka64' 11)% busy and CPU 1 (the proxy, or idle for direct) $(cpu_range 'short32|short64|ka64' 12 proxied)%."
    echo
    echo "### Bulk TCP throughput (iperf3)"
    echo
    echo "| measurement | direct | HAProxy | HAProxy splice | rvs | rvs/HAProxy | rvs/HAProxy splice | rvs vs direct |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for m in bulk1 bulk16; do
        d=$(med "$m" direct 4) h=$(med "$m" haproxy 4) s=$(med "$m" haproxy-splice 4) r=$(med "$m" rvs 4)
        echo "| ${LABEL[$m]}: Gbit/s (higher is better) | $(fmt 2 "$d") | $(fmt 2 "$h") | $(fmt 2 "$s") | $(fmt 2 "$r") | $(ratio "$r" "$h") | $(ratio "$r" "$s") | $(change "$d" "$r") |"
    done
    for m in bulk1 bulk16; do
        h=$(med "$m" haproxy 14) s=$(med "$m" haproxy-splice 14) r=$(med "$m" rvs 14)
        echo "| ${LABEL[$m]}: proxy CPU s/GB (lower is better) | - | $(fmt 2 "$h") | $(fmt 2 "$s") | $(fmt 2 "$r") | $(ratio "$r" "$h") | $(ratio "$r" "$s") | - |"
    done
    for m in bulk1 bulk16; do
        h=$(med "$m" haproxy 13) s=$(med "$m" haproxy-splice 13) r=$(med "$m" rvs 13)
        echo "| ${LABEL[$m]}: proxy CPU % of one core | - | $(fmt 0 "$h") | $(fmt 0 "$s") | $(fmt 0 "$r") | $(ratio "$r" "$h") | $(ratio "$r" "$s") | - |"
    done
    echo
    echo "During these steps CPU 0 (iperf3 client and server) was $(cpu_range 'bulk1|bulk16' 11)% busy and CPU 1 (the proxy) $(cpu_range 'bulk1|bulk16' 12 proxied)%: where CPU 0 is saturated, Gbit/s says as much about how much kernel work lands on CPU 0 as about the proxy, and CPU s/GB is the proxy's own cost."
    echo
    echo "Ratios: rvs/HAProxy above 1 is better for req/s and Gbit/s, worse for latency and CPU. \"rvs vs direct\" is rvs' value relative to no proxy (the cost of the extra hop)."
    echo
    OTHER_WORST=$(awk -F'\t' '$16 > m {m = $16} END {print m + 0}' "$RESULTS")
    if ((OTHER_WORST > OTHER_MAX)); then
        echo "**Warning:** other work on the machine used up to $OTHER_WORST% of a CPU during some steps, even after retries (column \"other CPU\" below): those numbers are suspect."
        echo
    fi
    echo "<details><summary>Every run (errors = wrk connect/read/write/timeout errors + non-2xx; CPU0/CPU1 = busy % of each CPU during the step; idle = the busiest CPU in the second before the step; other CPU = CPU time during the step not used by the benchmark's processes, in % of one CPU (kernel work charged to no process counts here too); tries = attempts, a step is run again when other CPU > $OTHER_MAX%)</summary>"
    echo
    echo "| rep | measurement | path | req/s or Gbit/s | p50 ms | p99 ms | errors | proxy CPU % | proxy CPU per req (µs) or per GB (s) | CPU0 % | CPU1 % | idle % | other CPU % | tries |"
    echo "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $13, $14, $11, $12, $15, $16, $17}' "$RESULTS"
    echo
    echo "</details>"
    echo
    echo "Traffic check: \`rvs ls\` after the run (every request and iperf3 connection of the rvs path went through these real servers; HAProxy used $HAPROXY_CPU_TOTAL CPU s in all, rvs $RVS_CPU_TOTAL CPU s):"
    echo
    echo '```'
    cat "$WORK/rvs-ls.txt"
    echo '```'
} >"$SECTION"

cat >"$WORK/skeleton.md" <<'EOF'
# rvs benchmarks

Measurements of rvs' data plane against established proxies, on the project's own kind of
machine (2 cores). Every section is written by a script in `bench/` between its
`<!-- NAME:begin -->` and `<!-- NAME:end -->` markers: re-run the script to refresh it, and do
not edit the generated part by hand.

## Method

- Everything runs on one machine over loopback (127.0.0.0/8): load generator, proxy and
  backends share the CPUs, so absolute numbers are far below what separate machines would
  give; the comparisons are side by side in the same run, with the same backends.
- Each section states its date, machine (CPUs, kernel), the versions of everything
  involved, how processes are pinned to CPUs, the step durations and connection counts.
- Steps are repeated and the median reported, with every single run listed below it.
- CPU cost is read from `/proc/PID/stat` (utime+stime) of the process under test.
- The machine may be shared with other work (builds, tests): the scripts wait for it to be
  idle before each step, measure the CPU that other processes used during the step, and run
  a disturbed step again.

## L4 userspace proxy vs HAProxy

Script: `bench/l4.sh` (`QUICK=1` for a 2-3 minute run; `bench/README.md`). rvs' userspace
L4 proxy (`rvs run`) against HAProxy in `mode tcp` and against no proxy at all, with the same
nginx and iperf3 backends, each proxy on its own CPU.

<!-- l4:begin -->
<!-- l4:end -->
EOF
replace_section "$OUT" l4 "$SECTION" "L4 userspace proxy vs HAProxy" "$WORK/skeleton.md"
cp "$RESULTS" "$WORK/results-final.tsv"
log "done in $(($(date +%s) - START)) s of load; results in ${OUT#"$ROOT"/}"
cat "$SECTION" | sed -n '/### HTTP/,/<details>/p' >&2
