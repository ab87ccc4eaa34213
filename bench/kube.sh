#!/usr/bin/env bash
# Kubernetes API source benchmark: rvs watching an in-process API server (crates/fakeapi)
# that holds 10,000 Services with 5 endpoints each (one EndpointSlice per Service, shaped as
# a 1.33 API server returns them): time from start to ready, memory after the sync, and the
# delay from one EndpointSlice change to the data plane applying it (p50/p99 over 100
# changes, each measured by the driver from the API write to rvs reporting the new
# configuration version in force).
#
#   bench/kube.sh              # full run (~1 minute), rewrites its section of docs/benchmarks.md
#   QUICK=1 bench/kube.sh      # 2,000 Services, 30 changes
#
# Environment: SERVICES (10000), ENDPOINTS (5), CHANGES (100), REPS (2; the median is
# reported), OUT (docs/benchmarks.md), SKIP_BUILD=1, KEEP=1.
#
# No peer runs here: kube-proxy needs an API server and a node. The goals come from the
# issue: ready in under 5 s, one change applied in under 100 ms p99.
# Traffic: none; the ClusterIPs are loopback addresses (the userspace engine listens on
# them), the endpoints 198.18.0.0/15 addresses that are only programmed, never contacted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    SERVICES=${SERVICES:-2000}
    CHANGES=${CHANGES:-30}
    REPS=${REPS:-1}
else
    SERVICES=${SERVICES:-10000}
    CHANGES=${CHANGES:-100}
    REPS=${REPS:-2}
fi
ENDPOINTS=${ENDPOINTS:-5}
OUT=${OUT:-$ROOT/docs/benchmarks.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rvs-bench-kube.XXXXXX")
bench_exit_trap

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building rvs and the benchmark driver (release)"
    (cd "$ROOT" && env -u CARGO_TARGET_DIR cargo build --release -p rvs -p rvs-fakeapi --bins >&2)
fi
RVS=$ROOT/target/release/rvs
DRIVER=$ROOT/target/release/kube-bench
[[ -x $RVS && -x $DRIVER ]] || die "$RVS or $DRIVER not found (build them or unset SKIP_BUILD)"
# One listener per ClusterIP, plus the API connections.
ulimit -n "$((SERVICES * 2 + 4096))" 2>/dev/null || log "could not raise the open-file limit"

for rep in $(seq 1 "$REPS"); do
    log "run $rep/$REPS: $SERVICES Services x $ENDPOINTS endpoints, $CHANGES changes"
    SERVICES=$SERVICES ENDPOINTS=$ENDPOINTS CHANGES=$CHANGES \
        run_logged "driver-$rep" "$DRIVER" "$RVS"
    grep '^RESULT' "$WORK/driver-$rep.log" | tail -1 >>"$WORK/results"
done
[[ -s $WORK/results ]] || die "no results (see $WORK)"

# The production engine too (the DaemonSet runs --engine nftables): in a network namespace
# of its own, so the rules land there and go with it. Needs root.
NS=rvs-bench-kube-$$
remove_ns() { ip netns del "$NS" 2>/dev/null || true; }
if [[ $(id -u) == 0 ]] && command -v nft >/dev/null && ip netns add "$NS" 2>/dev/null; then
    BENCH_EXTRA_CLEANUP=remove_ns
    ip -n "$NS" link set lo up
    for rep in $(seq 1 "$REPS"); do
        log "nftables engine, run $rep/$REPS"
        SERVICES=$SERVICES ENDPOINTS=$ENDPOINTS CHANGES=$CHANGES RVS_ARGS="--engine nftables" \
            run_logged "driver-nft-$rep" ip netns exec "$NS" "$DRIVER" "$RVS"
        grep '^RESULT' "$WORK/driver-nft-$rep.log" | tail -1 >>"$WORK/results-nft"
    done
    remove_ns
else
    log "nftables engine skipped: needs root, nft and network namespaces"
fi

field() { # field NAME [FILE]: the median of NAME= over the runs
    grep -o " $1=[0-9.]*" "${2:-$WORK/results}" | cut -d= -f2 | median
}
nft_field() { if [[ -s $WORK/results-nft ]]; then field "$1" "$WORK/results-nft"; else echo "-"; fi; }
ready=$(field ready_s)
rss=$(field rss_mib)
p50=$(field change_p50_ms)
p99=$(field change_p99_ms)
max=$(field change_max_ms)
verdict() { awk -v v="$1" -v goal="$2" 'BEGIN { print (v < goal) ? "met" : "missed" }'; }

cat >"$WORK/section.md" <<MD
$(date -u +%Y-%m-%d), $(nproc) CPUs, kernel $(uname -r); median of $REPS runs.
Method: \`bench/kube.sh\`: the in-process API server (\`crates/fakeapi\`) holds $SERVICES
Services and $((SERVICES * ENDPOINTS)) endpoints ($ENDPOINTS per EndpointSlice, recorded 1.33
shapes); \`rvs run --kubeconfig\` (userspace engine, one listener per ClusterIP) lists and
watches it. Ready: process start to \`/readyz\` 200. Memory: RSS 2 s after ready. Change:
one EndpointSlice rewritten on the API server, timed until \`/api/v1/config\` reports the
next configuration version in force (polled every 0.5 ms), $CHANGES changes 200 ms apart.

| measure | rvs, userspace engine | rvs, nftables engine | goal |
|---|---|---|---|
| time to ready | ${ready} s | $(nft_field ready_s) s | < 5 s ($(verdict "$ready" 5)) |
| memory after sync | ${rss} MiB | $(nft_field rss_mib) MiB | - |
| one EndpointSlice change, p50 | ${p50} ms | $(nft_field change_p50_ms) ms | - |
| one EndpointSlice change, p99 | ${p99} ms | $(nft_field change_p99_ms) ms | < 100 ms ($(verdict "$p99" 100) userspace$( [[ -s $WORK/results-nft ]] && echo ", $(verdict "$(nft_field change_p99_ms)" 100) nftables")) |
| one EndpointSlice change, max | ${max} ms | $(nft_field change_max_ms) ms | - |

The nftables engine runs in a network namespace of its own (\`RVS_ARGS=--engine nftables\`),
each change one nftables transaction through libnftables in rvs's process.
Raw (userspace): $(tr '\n' ';' <"$WORK/results")
Raw (nftables): $( [[ -s $WORK/results-nft ]] && tr '\n' ';' <"$WORK/results-nft" || echo "not run")
MD
replace_section "$OUT" kube "$WORK/section.md" "Kubernetes API source" "$ROOT/docs/benchmarks.md"
log "results in $OUT (section kube)"
cat "$WORK/section.md"
