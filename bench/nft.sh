#!/usr/bin/env bash
# Kernel engine benchmark: rvs's nftables engine (`rvs run --engine nftables`).
#
#   sudo bench/nft.sh            # full run (~10 minutes on 2 cores), rewrites its section of
#                                # docs/benchmarks.md
#   sudo QUICK=1 bench/nft.sh    # ~3 minutes: fewer repetitions, smaller counts
#
# 1. Sync: crates/nft/examples/sync_bench in a fresh network namespace per run: a full sync
#    of 1,000 and 10,000 Services (5 endpoints each), then single-endpoint changes (p50/p99);
#    plus where the time of a change goes (rvs's render and diff, the same run with every
#    transaction through the nft tool instead of libnftables).
# 2. Per-packet cost (crates/rvs/tests/kernel_bench.rs, per_packet_cost): short connections
#    (`rvs load`) from a pod to a ClusterIP with 10 and with 10,000 Services installed, to the
#    pod address, and through the userspace engine, on the namespace lab (tests/lab).
#    grow_running_rvs: adding 10,000 Services to a running rvs.
# 3. The stall test at full size (kernel_bench.rs, stall_full_size): 100,000 connections, 100
#    at once, to a masqueraded ClusterIP while its endpoints go 2 -> 4 -> 1, with rvs's plain
#    masquerade and with kube-proxy's fully-random.
#
# Environment: QUICK=1; SYNC_REPS (3, QUICK 1), SYNC_CHANGES (100, QUICK 30); CONNECTIONS
# (20000) and CONCURRENCY (50) per per-packet step, REPS (5, QUICK 2); SERVICES (10000);
# GROW (10000, QUICK 1000), GROW_TIMEOUT (300 s); STALL_CONNECTIONS (100000, QUICK 20000),
# STALL_REPS (3, QUICK 1); OUT (docs/benchmarks.md); SKIP_BUILD=1; KEEP=1 (keep the work
# directory /tmp/rvs-bench-nft.*). Shared machine: QUIET_PCT (15), QUIET_WAIT (30 s),
# OTHER_MAX (25 % of a CPU), SLACK (120 s, QUICK 40: what waiting for quiet and re-running
# disturbed steps may add, per test).
#
# Needs: Linux, root (network namespaces), cargo; apt-get installs nftables, iproute2,
# conntrack, curl when missing. Traffic only inside namespaces this script (or the tests it
# runs) creates; nftables, routes and sysctls are changed only there; all are removed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    SYNC_REPS=${SYNC_REPS:-1}
    SYNC_CHANGES=${SYNC_CHANGES:-30}
    REPS=${REPS:-2}
    GROW=${GROW:-1000}
    STALL_CONNECTIONS=${STALL_CONNECTIONS:-20000}
    STALL_REPS=${STALL_REPS:-1}
    SLACK=${SLACK:-40}
else
    SYNC_REPS=${SYNC_REPS:-3}
    SYNC_CHANGES=${SYNC_CHANGES:-100}
    REPS=${REPS:-5}
    GROW=${GROW:-10000}
    STALL_CONNECTIONS=${STALL_CONNECTIONS:-100000}
    STALL_REPS=${STALL_REPS:-3}
    SLACK=${SLACK:-120}
fi
SYNC_SIZES=(1000 10000)
SYNC_ENDPOINTS=5
CONNECTIONS=${CONNECTIONS:-20000}
CONCURRENCY=${CONCURRENCY:-50}
SERVICES=${SERVICES:-10000}
GROW_TIMEOUT=${GROW_TIMEOUT:-300}
QUIET_PCT=${QUIET_PCT:-15}
QUIET_WAIT=${QUIET_WAIT:-30}
OTHER_MAX=${OTHER_MAX:-25}
OUT=${OUT:-$ROOT/docs/benchmarks.md}

# ---------------------------------------------------------------------------- setup
[[ $(uname -s) == Linux ]] || die "Linux only"
[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
apt_install nftables iproute2 conntrack curl procps util-linux

WORK=$(mktemp -d /tmp/rvs-bench-nft.XXXXXX)
RESULTS=$WORK/results.txt
LAB_STATE=$WORK/lab-state
: >"$RESULTS"
# Namespaces that existed before: never touched, whatever their name.
NS_BEFORE=$(ip netns list | awk '{print $1}')
SYNC_NS="rvsbench$$-sync"

# remove_namespaces: the sync namespace, and the labs the tests noted in $LAB_STATE (their
# processes first: a test killed mid-run leaves rvs and echo processes in them).
remove_namespaces() {
    local pid prefix ns p
    if ip netns list | awk '{print $1}' | grep -qxF "$SYNC_NS"; then
        for p in $(ip netns pids "$SYNC_NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$SYNC_NS" 2>/dev/null || true
    fi
    [[ -f $LAB_STATE ]] || return 0
    while read -r pid prefix; do
        [[ -n $prefix ]] || continue
        # The test process itself, if it still runs (and the number is still it).
        if grep -q kernel_bench "/proc/$pid/cmdline" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix" || true); do
            grep -qxF "$ns" <<<"$NS_BEFORE" && continue
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        done
    done <"$LAB_STATE"
}

bench_exit_trap remove_namespaces

cargo_() { (cd "$ROOT" && env -u CARGO_TARGET_DIR cargo "$@"); }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building rvs, sync_bench and the kernel_bench tests (release)"
    cargo_ build --release -p rvs >&2
    cargo_ build --release -p rvs-nft --example sync_bench >&2
    cargo_ test --release -p rvs --test kernel_bench --no-run >&2
fi
RVS=$ROOT/target/release/rvs
SYNC_BENCH=$ROOT/target/release/examples/sync_bench
[[ -x $RVS && -x $SYNC_BENCH ]] || die "build missing (unset SKIP_BUILD)"
START=$(date +%s)

# ---------------------------------------------------------------------------- 1. sync
# fresh_ns: (re)creates the sync namespace.
fresh_ns() {
    ip netns del "$SYNC_NS" 2>/dev/null || true
    ip netns add "$SYNC_NS"
    ip -n "$SYNC_NS" link set lo up
}
# kv LINE KEY: the value of KEY=value in LINE.
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2; exit}'; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# sync_run KIND LOG N [ENV=VALUE...]: one sync_bench run of N Services in a fresh namespace;
# appends "KIND LABELS... figures" to the results.
sync_run() {
    local kind=$1 name=$2 n=$3
    shift 3
    quiet_gap "$QUIET_WAIT"
    fresh_ns
    run_logged "$name" env "$@" ip netns exec "$SYNC_NS" "$SYNC_BENCH" "$n" "$SYNC_ENDPOINTS" "$SYNC_CHANGES" ||
        die "sync_bench ($name) failed: $(tail -n 5 "$WORK/$name.log")"
    ip netns del "$SYNC_NS"
    local full change
    full=$(grep '^full_sync ' "$WORK/$name.log")
    change=$(grep '^endpoint_change ' "$WORK/$name.log" || true)
    echo "$kind services=$n full_s=$(kv "$full" seconds) transaction_bytes=$(kv "$full" transaction_bytes) change_p50_ms=$(kv "$change" p50_ms) change_p99_ms=$(kv "$change" p99_ms) change_max_ms=$(kv "$change" max_ms) backend=$(kv "$full" backend) busy_before=$QUIET_BUSY" >>"$RESULTS"
    log "  $(tail -n1 "$RESULTS")"
}

log "1. sync: ${SYNC_SIZES[*]} Services x $SYNC_ENDPOINTS endpoints, $SYNC_CHANGES changes, $SYNC_REPS repetition(s)"
for ((rep = 1; rep <= SYNC_REPS; rep++)); do
    for n in "${SYNC_SIZES[@]}"; do
        sync_run "sync rep=$rep" "sync-$rep-$n" "$n"
    done
done
# The same through libnftables (nft's parser in rvs's process for changes, the nft tool for
# full syncs), the backend before rvs wrote its own netlink batches.
for n in "${SYNC_SIZES[@]}"; do
    sync_run synclib "sync-lib-$n" "$n" NFT_BACKEND=libnftables
done

# Where a change's time goes, at each size: rvs's own render + diff of the whole snapshot
# (sync_bench RENDER_ONLY); the same changes with every transaction through the nft tool
# (NFT_BACKEND=nft), the tool's time per transaction (a wrapper named nft
# first in PATH times every call; a few ms of its own); one single-element nft transaction on
# the synced table.
mkdir -p "$WORK/nftwrap"
cat >"$WORK/nftwrap/nft" <<EOF
#!/usr/bin/env bash
start=\$(date +%s%N)
$(command -v nft) "\$@"
rc=\$?
echo "\$(((\$(date +%s%N) - start) / 1000)) \$*" >>"\$NFT_TIMES"
exit \$rc
EOF
chmod +x "$WORK/nftwrap/nft"
for n in "${SYNC_SIZES[@]}"; do
    quiet_gap "$QUIET_WAIT"
    render=$(RENDER_ONLY=1 "$SYNC_BENCH" "$n" "$SYNC_ENDPOINTS" 0)
    fresh_ns
    times=$WORK/nft-times-$n.txt
    : >"$times"
    run_logged "breakdown-$n" env KEEP=1 NFT_BACKEND=nft NFT_TIMES="$times" PATH="$WORK/nftwrap:$PATH" \
        ip netns exec "$SYNC_NS" "$SYNC_BENCH" "$n" "$SYNC_ENDPOINTS" "$SYNC_CHANGES" ||
        die "sync_bench (breakdown) failed: $(tail -n 5 "$WORK/breakdown-$n.log")"
    # Calls: -j list (ip, ip6), the full sync (-f -), then one -f - per change.
    nft_full_ms=$(awk '$2 == "-f" {printf "%.1f", $1 / 1000; exit}' "$times")
    nft_change_p50=$(awk '$2 == "-f" && n++ > 0 {print $1 / 1000}' "$times" | median)
    change_p50=$(kv "$(grep '^endpoint_change ' "$WORK/breakdown-$n.log")" p50_ms)
    full_s=$(kv "$(grep '^full_sync ' "$WORK/breakdown-$n.log")" seconds)
    one=()
    for i in 1 2 3 4 5; do
        t0=$(date +%s%N)
        ip netns exec "$SYNC_NS" nft add element ip rvs firewall-ips "{ 10.99.0.$i . tcp . 80 : drop }"
        one+=("$(ms_since "$t0")")
    done
    one_ms=$(printf '%s\n' "${one[@]}" | median)
    t0=$(date +%s%N)
    ip netns exec "$SYNC_NS" nft list table ip rvs >/dev/null
    list_ms=$(ms_since "$t0")
    ip netns del "$SYNC_NS"
    echo "breakdown services=$n render_ms=$(kv "$render" render_ms) diff_ms=$(kv "$render" diff_ms) encode_ms=$(kv "$render" encode_ms) full_s=$full_s nft_full_ms=$nft_full_ms change_p50_ms=$change_p50 nft_change_p50_ms=$nft_change_p50 nft_one_element_ms=$one_ms nft_list_ms=$list_ms" >>"$RESULTS"
    log "  $(tail -n1 "$RESULTS")"
done
SYNC_END=$(date +%s)

# ---------------------------------------------------------------------------- 2, 3: the lab
# kernel_bench TEST [ENV=VALUE...]: runs one ignored test of crates/rvs/tests/kernel_bench.rs.
kernel_bench() {
    local test=$1
    shift
    log "running kernel_bench::$test"
    run_logged "kernel-bench-$test" env -u CARGO_TARGET_DIR "$@" \
        RVS_BENCH_OUT="$RESULTS" RVS_BENCH_STATE="$LAB_STATE" \
        RVS_BENCH_SLACK="$SLACK" RVS_BENCH_QUIET_PCT="$QUIET_PCT" RVS_BENCH_OTHER_MAX="$OTHER_MAX" \
        bash -c 'cd "$1" && exec cargo test --release -p rvs --test kernel_bench -- --ignored --nocapture --test-threads=1 --exact "$2"' \
        _ "$ROOT" "$test" ||
        die "kernel_bench::$test failed: $(tail -n 30 "$WORK/kernel-bench-$test.log")"
    grep -q "test result: ok. 1 passed" "$WORK/kernel-bench-$test.log" ||
        die "kernel_bench::$test did not run (skipped?): $(grep -m1 SKIPPED "$WORK/kernel-bench-$test.log" || tail -n 5 "$WORK/kernel-bench-$test.log")"
}

log "2. per-packet cost: $CONNECTIONS connections x $REPS repetition(s) per path, concurrency $CONCURRENCY"
kernel_bench per_packet_cost RVS_BENCH_CONNECTIONS="$CONNECTIONS" RVS_BENCH_CONCURRENCY="$CONCURRENCY" \
    RVS_BENCH_REPS="$REPS" RVS_BENCH_SERVICES="$SERVICES" RVS_BENCH_IDLE_SECONDS=$((QUICK == 1 ? 5 : 10))
grep '^per_packet \|^setup ' "$RESULTS" | sed 's/^/  /' >&2
PACKET_END=$(date +%s)

log "   adding $GROW Services to a running rvs (waits up to ${GROW_TIMEOUT}s)"
kernel_bench grow_running_rvs RVS_BENCH_GROW="$GROW" RVS_BENCH_GROW_TIMEOUT="$GROW_TIMEOUT"
grep '^grow ' "$RESULTS" | sed 's/^/  /' >&2
GROW_END=$(date +%s)

log "3. stall test: $STALL_CONNECTIONS connections, plain and fully-random, $STALL_REPS run(s) each"
kernel_bench stall_full_size RVS_STALL_CONNECTIONS="$STALL_CONNECTIONS" RVS_BENCH_STALL_REPS="$STALL_REPS"
grep '^stall ' "$RESULTS" | sed 's/^/  /' >&2
END=$(date +%s)

# ---------------------------------------------------------------------------- report
# vals KIND KEY [K=V...]: KEY's values in the result lines of KIND that match every K=V.
vals() {
    local kind=$1 key=$2
    shift 2
    awk -v kind="$kind" -v key="$key" -v filters="$*" '
        $1 == kind {
            split("", f)
            for (i = 2; i <= NF; i++) { eq = index($i, "="); f[substr($i, 1, eq - 1)] = substr($i, eq + 1) }
            n = split(filters, want, " ")
            ok = 1
            for (j = 1; j <= n; j++) {
                eq = index(want[j], "=")
                if (f[substr(want[j], 1, eq - 1)] != substr(want[j], eq + 1)) ok = 0
            }
            if (ok && (key in f)) print f[key]
        }' "$RESULTS"
}
med() { vals "$@" | { grep -v '^timeout$' || true; } | median; }
thousands() { sed -E ':a;s/([0-9])([0-9]{3})($|,)/\1,\2\3/;ta' <<<"$1"; }
joined() { vals "$@" | paste -sd/ - | sed 's#/# / #g'; }
sum() { vals "$@" | awk '{s += $1} END {print s + 0}'; }
maxv() { vals "$@" | sort -g | tail -n1; }
# fmt DECIMALS VALUE: VALUE rounded; "-" when empty, anything else not a number as it is.
fmt() {
    if [[ -z $2 ]]; then
        echo "-"
    elif [[ $2 =~ ^-?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]]; then
        LC_ALL=C printf "%.${1}f" "$2"
    else
        echo "$2"
    fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == "" || b == "" || b == 0) print "-"; else printf "%.2f×", a / b }'; }
change() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == "" || b == "" || a == 0) print "-"; else printf "%+.1f%%", 100 * (b / a - 1) }'; }
# within BASE VALUE PCT HIGHER_IS_BETTER: "yes" when VALUE is no more than PCT % worse.
within() {
    awk -v a="$1" -v b="$2" -v p="$3" -v up="$4" 'BEGIN {
        if (a == "-" || b == "-" || a == 0) { print "-"; exit }
        worse = up ? 100 * (1 - b / a) : 100 * (b / a - 1)
        print (worse <= p ? "yes" : "no") }'
}

RVS_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    RVS_REV="$RVS_REV + uncommitted changes"
fi
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
big=$SERVICES
big_h=$(thousands "$big")
SECTION=$WORK/section.md
{
    echo "_Generated by \`bench/nft.sh\`$([[ $QUICK == 1 ]] && echo ' (QUICK=1)') on $(date -u '+%Y-%m-%d %H:%M UTC'); do not edit by hand, re-run the script._"
    echo
    echo "- Machine: $(nproc) CPUs (${CPU_MODEL:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r); shared with other work (see \"other work\" below)."
    echo "- Versions: rvs $RVS_REV ($("$RVS" --version 2>/dev/null | awk '{print $2}'), release build), $(nft --version), $(conntrack --version 2>&1 | head -n1), $(ip -V 2>&1 | head -n1)."
    echo "- Run: sync $((SYNC_END - START)) s, per-packet $((PACKET_END - SYNC_END)) s, growing a running rvs $((GROW_END - PACKET_END)) s, stall test $((END - GROW_END)) s (whole run $((END - START)) s, builds excluded). No CPU pinning: on 2 CPUs the load generator, the backends, the kernel's packet processing and rvs share both."
    echo "- Other work on the machine: before each step the script (or the test) waits, up to ${QUIET_WAIT} s, until no CPU is more than ${QUIET_PCT}% busy for a second; a per-packet step during which processes other than the benchmark's used more than ${OTHER_MAX}% of a CPU is run again (at most twice; waits and retries add at most ${SLACK} s per test)."
    echo
    echo "### Sync: programming the rules"
    echo
    echo "Method: \`crates/nft/examples/sync_bench SERVICES $SYNC_ENDPOINTS $SYNC_CHANGES\`, run in a fresh network namespace each time: N ClusterIP Services (TCP, 10.96.x.y:80) with $SYNC_ENDPOINTS endpoints each, one full sync (\`NftEngine::apply(full)\`: render, list the existing table, one transaction), then $SYNC_CHANGES single-endpoint changes, each Service in turn moving one endpoint (\`apply\` incremental: render and diff only the changed virtual service, one transaction); wall-clock time around \`apply\`. Every transaction is a netlink batch rvs writes itself and sends over its own socket (backend: $(kv "$(grep -h '^full_sync ' "$WORK"/sync-1-*.log | head -n1)" backend); crates/nft/src/netlink.rs): no nft parser. $SYNC_REPS run$( ((SYNC_REPS > 1)) && echo s) per size, the median of each figure is reported."
    echo
    echo "| measurement | 1,000 Services | 10,000 Services | 10k / 1k | goal (10k) | met |"
    echo "| --- | ---: | ---: | ---: | ---: | :---: |"
    a=$(med sync full_s services=1000) b=$(med sync full_s services=10000)
    echo "| full sync, s | $(fmt 3 "$a") | $(fmt 3 "$b") | $(ratio "$b" "$a") | < 1 s | $(awk -v b="$b" 'BEGIN {print (b != "-" && b < 1) ? "yes" : "**no**"}') |"
    a=$(med sync change_p50_ms services=1000) b=$(med sync change_p50_ms services=10000)
    echo "| one endpoint change, p50 ms | $(fmt 1 "$a") | $(fmt 1 "$b") | $(ratio "$b" "$a") | | |"
    a=$(med sync change_p99_ms services=1000) b=$(med sync change_p99_ms services=10000)
    echo "| one endpoint change, p99 ms | $(fmt 1 "$a") | $(fmt 1 "$b") | $(ratio "$b" "$a") | < 50 ms | $(awk -v b="$b" 'BEGIN {print (b != "-" && b < 50) ? "yes" : "**no**"}') |"
    a=$(med sync change_max_ms services=1000) b=$(med sync change_max_ms services=10000)
    echo "| one endpoint change, max ms | $(fmt 1 "$a") | $(fmt 1 "$b") | $(ratio "$b" "$a") | | |"
    a=$(med sync transaction_bytes services=1000) b=$(med sync transaction_bytes services=10000)
    echo "| full sync netlink batch, MB | $(fmt 1 "$(awk -v x="$a" 'BEGIN {print x / 1e6}')") | $(fmt 1 "$(awk -v x="$b" 'BEGIN {print x / 1e6}')") | $(ratio "$b" "$a") | | |"
    echo
    echo "The same runs with the backend used before (libnftables: changes through nft's parser in rvs's process, full syncs through a fresh \`nft -f\`), one run per size:"
    echo
    echo "| measurement | 1,000 Services | 10,000 Services | netlink / libnftables (10k) |"
    echo "| --- | ---: | ---: | ---: |"
    for key in full_s change_p50_ms change_p99_ms; do
        a=$(vals synclib "$key" services=1000) b=$(vals synclib "$key" services=10000) n=$(med sync "$key" services=10000)
        case $key in
        full_s) label="full sync, s" digits=3 ;;
        change_p50_ms) label="one endpoint change, p50 ms" digits=1 ;;
        *) label="one endpoint change, p99 ms" digits=1 ;;
        esac
        echo "| $label | $(fmt "$digits" "$a") | $(fmt "$digits" "$b") | $(ratio "$n" "$b") |"
    done
    a=$(vals synclib transaction_bytes services=1000) b=$(vals synclib transaction_bytes services=10000)
    echo "| full sync \`nft\` script, MB | $(fmt 1 "$(awk -v x="$a" 'BEGIN {print x / 1e6}')") | $(fmt 1 "$(awk -v x="$b" 'BEGIN {print x / 1e6}')") | |"
    echo
    echo "Where the time goes (one more run per size with every transaction through the \`nft\` tool, as before libnftables, and a wrapper that times every \`nft\` call; the wrapper adds a few ms per call):"
    echo
    echo "| measurement | 1,000 Services | 10,000 Services |"
    echo "| --- | ---: | ---: |"
    row() { echo "| $1 | $(fmt "$3" "$(vals breakdown "$2" services=1000)") | $(fmt "$3" "$(vals breakdown "$2" services=10000)") |"; }
    echo "| one endpoint change through libnftables (p50, the table above), ms | $(fmt 1 "$(vals synclib change_p50_ms services=1000)") | $(fmt 1 "$(vals synclib change_p50_ms services=10000)") |"
    row "one endpoint change through the \`nft\` tool (p50), ms" change_p50_ms 1
    row "… of which the \`nft -f\` process (p50), ms" nft_change_p50_ms 1
    row "full sync through the \`nft\` tool, s" full_s 3
    row "… of which the \`nft -f\` of the full ruleset, ms" nft_full_ms 0
    row "rvs: render the whole snapshot (full syncs only), ms" render_ms 1
    row "rvs: diff against the applied ruleset (full syncs only), ms" diff_ms 1
    row "rvs: encode the full sync's netlink batch, ms" encode_ms 1
    row "\`nft add element\` of one map element on the synced table, ms" nft_one_element_ms 0
    row "\`nft list table ip rvs\`, ms" nft_list_ms 0
    echo
    c50=$(vals breakdown change_p50_ms services=10000) n50=$(vals breakdown nft_change_p50_ms services=10000)
    r=$(vals breakdown render_ms services=10000) d=$(vals breakdown diff_ms services=10000)
    pct() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.0f%%", 100 * a / b; else print "-"}'; }
    rd=$(awk -v a="$r" -v b="$d" 'BEGIN {print a + b}')
    rest=$(awk -v c="$c50" -v n="$n50" 'BEGIN {print c - n}')
    fs=$(vals breakdown full_s services=10000) fn=$(vals breakdown nft_full_ms services=10000)
    lib50=$(vals synclib change_p50_ms services=10000)
    echo "Through nft, at 10,000 Services a full sync is nft's time: $(fmt 0 "$fn") of $(fmt 0 "$(awk -v s="$fs" 'BEGIN {print s * 1000}')") ms ($(pct "$fn" "$(awk -v s="$fs" 'BEGIN {print s * 1000}')")) go to parsing and committing the $(fmt 0 "$(awk -v x="$(vals synclib transaction_bytes services=10000)" 'BEGIN {print x / 1e6}')") MB script (libnftables parses it the same way). A change through the \`nft\` tool ($(fmt 0 "$c50") ms, p50) is the \`nft\` process $(fmt 0 "$n50") ms ($(pct "$n50" "$c50")) and everything else $(fmt 0 "$rest") ms, mostly starting nft through the timing wrapper: rvs renders and diffs only the virtual services that changed, found by comparing the snapshot's services by pointer (a whole-snapshot render and diff, $(fmt 0 "$rd") ms, is left to full syncs). Through libnftables the same change takes $(fmt 1 "$lib50") ms ($(pct "$lib50" "$c50") of the tool's). Even the smallest transaction through the tool pays for starting it and for its cache of the table: one \`nft add element\` takes $(fmt 0 "$(vals breakdown nft_one_element_ms services=1000)") ms at 1,000 Services and $(fmt 0 "$(vals breakdown nft_one_element_ms services=10000)") ms at 10,000."
    echo
    g_n=$(vals grow services what=add)
    g_n=${g_n:-10}
    both() { echo "$(fmt 2 "$(vals grow "node1_$1" what="$2")") / $(fmt 2 "$(vals grow "node2_$1" what="$2")")"; }
    g_done=$(both done_s add)
    g_done=${g_done//timeout/> ${GROW_TIMEOUT}}
    echo "In \`rvs run\`, on the lab of the next section (2 node namespaces, rvs in each):"
    echo
    echo "| measurement | value |"
    echo "| --- | ---: |"
    echo "| start with 10 Services: lab built, rvs started → both nodes ready (readyz: manifests parsed, rules in force), s | $(fmt 2 "$(vals setup ready_s services=10)") |"
    echo "| start with $big_h Services: the same, s | $(fmt 2 "$(vals setup ready_s services="$big")") |"
    echo "| add $(thousands "$((g_n - 10))") Services to a running rvs (10 → $(thousands "$g_n")): new rules in force after, s (node1 / node2) | $(both in_force_s add) |"
    echo "| … reload reported done (config version) after, s (node1 / node2) | $g_done |"
    echo "| remove them again (→ 10): rules in force after, s (node1 / node2) | $(both in_force_s remove) |"
    echo "| idle CPU of rvs with 10 Services, % of one CPU per node | $(fmt 1 "$(vals setup rvs_idle_cpu_pct_per_node services=10)") |"
    echo "| idle CPU of rvs with $big_h Services, % of one CPU per node | $(fmt 1 "$(vals setup rvs_idle_cpu_pct_per_node services="$big")") |"
    echo
    echo "Adding Services to a running rvs: the time counts from the manifests written until the rules answer (the manifest watcher polls every 2 s, then rvs parses 10,000 Services and builds the snapshot before the transaction); after each change rvs reads the conntrack table once over netlink and deletes the entries that reached new frontends before their rules (\`clean_conntrack\` in crates/nft/src/engine.rs, in the background). Idle, rvs re-reads and re-parses its whole manifest directory every 2 s (the watcher's poll in crates/source/src/watch.rs), which is what its idle CPU at $big_h Services is."
    echo
    echo "### Per-packet cost: short connections through a ClusterIP"
    echo
    echo "Lab (tests/lab, \`Lab::build(2, 3)\`): two node namespaces joined by an underlay bridge (10.200.0.0/24), each with a bridge cbr0 (10.244.N.1/24) and three pod namespaces (10.244.N.10–12) on veth pairs; \`rvs echo\` in every pod; \`rvs run --engine nftables --cluster-cidr 10.244.0.0/16,fd00:244::/48\` in both nodes (no masquerading: pod sources are inside the cluster CIDR). Two such labs side by side, built with their Services from the start: one with 10 Services installed, one with $big_h (the Service under test plus fillers with 5 endpoints each on pod addresses nobody has, ClusterIPs 10.97.x.y). The Service under test, ClusterIP 10.96.0.10:80 → 8080, has two endpoints on node2: n2p0 and n2p1 (rr)."
    echo
    echo "- Paths, all from a pod on node1 to the pods on node2 (across the underlay): **direct** = pod n1p1 to n2p0's address (10.244.2.10:8080); **nftables** = pod n1p0 to the ClusterIP (DNAT in node1's prerouting); **userspace** = pod n1p2 to 10.96.1.10:80 served by the userspace engine (\`rvs run\` without \`--engine\`, \`--manage-vips lo\`) running in n1p2 itself, the VIP on the pod's loopback, same two endpoints. One client pod per path, so that no path meets another's conntrack or TIME_WAIT entries."
    echo "- Load: \`rvs load --connections $CONNECTIONS --concurrency $CONCURRENCY\` (HTTP/1.0, the server answers and closes). *connect* = the TCP handshake (for the userspace path the proxy on the pod's own loopback accepts it, so it is not comparable); *connection* = connect, request, response and close; machine CPU = busy time of both CPUs during the step per connection (client, backends, softirq, everything)."
    echo "- The nodes' rvs processes are paused (SIGSTOP) during the steps: the rules stay in the kernel and serve, and rvs's idle cost at $big_h Services (above) is not charged to the data path. After a warm-up of 2,000 connections per path, $REPS repetition$( ((REPS > 1)) && echo s) of the six steps (3 paths × 2 labs, the order rotating); the median is reported. direct and userspace do not depend on the number of Services: their columns are the median over both labs (each lab separately in the runs below)."
    echo
    echo "| measurement | direct | nftables, 10 Services | nftables, $big_h Services | userspace | $big_h vs 10 | nftables (10) vs direct | userspace vs nftables (10) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for spec in "rate|connections/s (higher is better)|0" "connect_p50_ms|connect p50, ms|3" "connect_p99_ms|connect p99, ms|3" \
        "total_p50_ms|connection p50, ms|3" "total_p99_ms|connection p99, ms|3" "cpu_us_per_conn|machine CPU per connection, µs|1"; do
        IFS='|' read -r key label dec <<<"$spec"
        d=$(med per_packet "$key" path=direct) k10=$(med per_packet "$key" path=nftables services=10)
        kb=$(med per_packet "$key" path=nftables services="$big") u=$(med per_packet "$key" path=userspace)
        uc="$(change "$k10" "$u")"
        [[ $key == connect_* ]] && uc="(not comparable)"
        echo "| $label | $(fmt "$dec" "$d") | $(fmt "$dec" "$k10") | $(fmt "$dec" "$kb") | $(fmt "$dec" "$u") | $(change "$k10" "$kb") | $(change "$d" "$k10") | $uc |"
    done
    echo
    r10=$(med per_packet rate path=nftables services=10) rb=$(med per_packet rate path=nftables services="$big")
    p10=$(med per_packet connect_p50_ms path=nftables services=10) pb=$(med per_packet connect_p50_ms path=nftables services="$big")
    q10=$(med per_packet connect_p99_ms path=nftables services=10) qb=$(med per_packet connect_p99_ms path=nftables services="$big")
    echo "Goal, $big_h Services within 10% of 10: connections/s $(change "$r10" "$rb") ($(within "$r10" "$rb" 10 1)), connect p50 $(change "$p10" "$pb") ($(within "$p10" "$pb" 10 0)), connect p99 $(change "$q10" "$qb") ($(within "$q10" "$qb" 10 0)). direct in the $big_h lab vs the 10 lab (traffic that is no Service's, through the same prerouting dispatch): connections/s $(change "$(med per_packet rate path=direct services=10)" "$(med per_packet rate path=direct services="$big")"). Failed connections: $(sum per_packet failed), connects over 200 ms: $(sum per_packet stalls), SYN retransmits: $(sum per_packet syn_retransmits) (all steps)."
    echo
    echo "<details><summary>Every per-packet run (other = CPU used during the step by processes other than the benchmark's, in % of one CPU, kernel work charged to no process included; idle = the busiest CPU in the second before)</summary>"
    echo
    echo "| rep | Services | path | conn/s | connect p50 ms | connect p99 ms | connect max ms | connection p50 ms | connection p99 ms | CPU µs/conn | failed | > 200 ms | SYN retrans | other % | idle % | tries | backends |"
    echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    grep '^per_packet ' "$RESULTS" | while read -r line; do
        g() { kv "$line" "$1"; }
        echo "| $(g rep) | $(g services) | $(g path) | $(g rate) | $(g connect_p50_ms) | $(g connect_p99_ms) | $(g connect_max_ms) | $(g total_p50_ms) | $(g total_p99_ms) | $(g cpu_us_per_conn) | $(g failed) | $(g stalls) | $(g syn_retransmits) | $(g other_pct) | $(g busy_before) | $(g attempts) | $(g backends | tr '/' ' ') |"
    done
    echo
    echo "</details>"
    echo
    echo "### Stall test at full size: endpoints change under short connections"
    echo
    echo "The scenario of \`no_connect_stalls_while_endpoints_change\` (crates/rvs/tests/kernel_engine.rs), at full size: the lab with 3 pods per node and the lab's manifests, rvs in both nodes with \`--masquerade-all\`; pod n1p0 makes $(thousands "$STALL_CONNECTIONS") short connections (\`rvs load\`, 100 at once, HTTP/1.0) to the ClusterIP 10.96.0.20:80 while its endpoints go 2 (n1p1, n2p0) → 4 (+ n1p2, n2p1, after a third of the connections) → 1 (n1p1, after two thirds). **plain** = rvs's masquerade (keeps the client's port where it is free); **fully-random** = the same with \`--masquerade-fully-random\` (kube-proxy's choice). The variants alternate, $STALL_REPS run$( ((STALL_REPS > 1)) && echo s) each, every run on a fresh lab; per-run values are listed in run order, the rest is the median (or the sum / worst where said)."
    echo
    echo "| measurement | plain masquerade (rvs) | fully-random (kube-proxy) |"
    echo "| --- | ---: | ---: |"
    srow() { echo "| $1 | $2 | $3 |"; }
    srow "connections per run" "$(joined stall connections variant=plain)" "$(joined stall connections variant=fully-random)"
    srow "failed (per run)" "$(joined stall failed variant=plain)" "$(joined stall failed variant=fully-random)"
    srow "connects over 200 ms (per run)" "$(joined stall stalls variant=plain)" "$(joined stall stalls variant=fully-random)"
    srow "SYN retransmits of the client (per run)" "$(joined stall syn_retransmits variant=plain)" "$(joined stall syn_retransmits variant=fully-random)"
    srow "max connect, ms (worst run)" "$(fmt 1 "$(maxv stall connect_max_ms variant=plain)")" "$(fmt 1 "$(maxv stall connect_max_ms variant=fully-random)")"
    srow "max connect, ms (per run)" "$(joined stall connect_max_ms variant=plain)" "$(joined stall connect_max_ms variant=fully-random)"
    srow "p99.9 connect, ms" "$(fmt 2 "$(med stall connect_p999_ms variant=plain)")" "$(fmt 2 "$(med stall connect_p999_ms variant=fully-random)")"
    srow "p99 connect, ms" "$(fmt 2 "$(med stall connect_p99_ms variant=plain)")" "$(fmt 2 "$(med stall connect_p99_ms variant=fully-random)")"
    srow "p50 connect, ms" "$(fmt 2 "$(med stall connect_p50_ms variant=plain)")" "$(fmt 2 "$(med stall connect_p50_ms variant=fully-random)")"
    srow "connections/s" "$(fmt 0 "$(med stall rate variant=plain)")" "$(fmt 0 "$(med stall rate variant=fully-random)")"
    srow "machine CPU per connection, µs" "$(fmt 1 "$(med stall cpu_us_per_conn variant=plain)")" "$(fmt 1 "$(med stall cpu_us_per_conn variant=fully-random)")"
    srow "connections to removed endpoints after the removal applied (sum)" "$(sum stall after_removal variant=plain)" "$(sum stall after_removal variant=fully-random)"
    srow "new endpoints' share of connections in their first second (of 50% for rr over 4)" "$(fmt 0 "$(awk -v x="$(med stall new_share_first_second variant=plain)" 'BEGIN {print 100 * x}')")%" "$(fmt 0 "$(awk -v x="$(med stall new_share_first_second variant=fully-random)" 'BEGIN {print 100 * x}')")%"
    srow "node1 conntrack insert_failed / drop / clash resolved (sum)" "$(sum stall ct_insert_failed variant=plain) / $(sum stall ct_drop variant=plain) / $(sum stall ct_clashres variant=plain)" "$(sum stall ct_insert_failed variant=fully-random) / $(sum stall ct_drop variant=fully-random) / $(sum stall ct_clashres variant=fully-random)"
    echo
    echo "p50 connect is not comparable between the variants when their rates differ (fewer connections queue at a lower rate). \"after the removal applied\" counts connections that started after the test saw node1's new configuration version and still reached n2p0, n1p2 or n2p1 (conservative: started after, by the client's clock). SYN retransmits: \`TcpExtTCPSynRetrans\` of the client pod's namespace over the run."
    echo
    echo "<details><summary>Raw result lines of this run</summary>"
    echo
    echo '```'
    cat "$RESULTS"
    echo '```'
    echo
    echo "</details>"
} >"$SECTION"

cat >"$WORK/skeleton.md" <<'EOF'
# rvs benchmarks

Every section is written by a script in `bench/` between its `<!-- NAME:begin -->` and
`<!-- NAME:end -->` markers: re-run the script to refresh it, and do not edit the generated
part by hand.
EOF
replace_section "$OUT" nft "$SECTION" "Kernel engine (nftables)" "$WORK/skeleton.md"
log "done in $(($(date +%s) - START)) s; results in ${OUT#"$ROOT"/}"
sed -n '/^### Sync/,/^<details>/p' "$SECTION" >&2
