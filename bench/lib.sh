# Shared helpers for the benchmark scripts in bench/ (sourced, not run).
# shellcheck shell=bash

# Every process a benchmark starts is recorded here and stopped by bench_cleanup.
BENCH_PIDS=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_install PKG...: installs the Debian packages that are missing (needs root).
# Each argument is a list of alternatives separated by '|' (the first that Debian has wins).
apt_install() {
    local want=() alt name
    for alt in "$@"; do
        local found=""
        for name in ${alt//|/ }; do
            if dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q 'install ok installed'; then
                found=installed
                break
            fi
        done
        [[ -n $found ]] && continue
        want+=("$alt")
    done
    ((${#want[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing packages (${want[*]}); run as root or install them first"
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    local pkgs=()
    for alt in "${want[@]}"; do
        local chosen=""
        for name in ${alt//|/ }; do
            if apt-cache policy "$name" 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; then
                chosen=$name
                break
            fi
        done
        [[ -n $chosen ]] || die "no Debian package for: $alt"
        pkgs+=("$chosen")
    done
    log "apt-get install ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
}

# start_bg NAME CPULIST CMD...: starts CMD in the background (pinned to CPULIST unless it
# is empty), logs to $WORK/NAME.log, records the pid, and sets STARTED_PID.
start_bg() {
    local name=$1 cpus=$2
    shift 2
    if [[ -n $cpus ]]; then
        taskset -c "$cpus" "$@" >"$WORK/$name.log" 2>&1 &
    else
        "$@" >"$WORK/$name.log" 2>&1 &
    fi
    STARTED_PID=$!
    BENCH_PIDS+=("$STARTED_PID")
    log "started $name (pid $STARTED_PID${cpus:+, cpu $cpus}): $*"
}

# bench_cleanup: stops the recorded processes (TERM, then KILL after 5 s), one by one.
bench_cleanup() {
    local pid i
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BENCH_PIDS=()
}

# wait_until SECONDS CMD...: retries CMD every 0.1 s until it succeeds or time is up.
wait_until() {
    local limit=$1 i
    shift
    for ((i = 0; i < limit * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# port_free ADDR PORT: true when nothing listens on ADDR:PORT (TCP).
port_free() {
    ! ss -Htln "sport = :$2" 2>/dev/null | awk '{print $4}' | grep -qE "^(\*|0\.0\.0\.0|\[::\]|$1):$2$"
}

# cpu_ticks PID: utime+stime of a process (all its threads), in clock ticks.
cpu_ticks() { # PID [user]: utime+stime, or utime alone
    # Field 2 (comm) may contain spaces: cut everything up to the last ')'.
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    stat=${stat##*) }
    # After the cut, utime and stime are fields 12 and 13.
    if [[ ${2:-} == user ]]; then
        awk '{print $12}' <<<"$stat"
    else
        awk '{print $12 + $13}' <<<"$stat"
    fi
}

# ticks_of PID...: utime+stime of these processes, summed (those gone count 0).
ticks_of() {
    local pid sum=0 t
    for pid in "$@"; do
        t=$(cpu_ticks "$pid" 2>/dev/null) || t=0
        sum=$((sum + t))
    done
    echo "$sum"
}

# user_ticks_of PID...: utime alone (time in the process's own code, not the kernel's).
user_ticks_of() {
    local pid sum=0 t
    for pid in "$@"; do
        t=$(cpu_ticks "$pid" user 2>/dev/null) || t=0
        sum=$((sum + t))
    done
    echo "$sum"
}

# children_ticks: cutime+cstime of this shell: the CPU time of the children it has waited
# for (a load generator run in the foreground counts once it has exited).
children_ticks() {
    local stat
    stat=$(<"/proc/$$/stat")
    stat=${stat##*) }
    awk '{print $14 + $15}' <<<"$stat"
}

# busy_ticks: busy time of all CPUs together, in clock ticks (/proc/stat counts USER_HZ).
busy_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# cpu_busy_snapshot: "cpu0_busy cpu0_total cpu1_busy cpu1_total ..." from /proc/stat.
cpu_busy_snapshot() {
    awk '/^cpu[0-9]+ / {busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6; printf "%s %s ", busy, total} END {print ""}' /proc/stat
}

# cpu_busy_pct BEFORE AFTER INDEX: busy % of CPU INDEX between two snapshots.
cpu_busy_pct() {
    awk -v a="$1" -v b="$2" -v i="$3" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ");
        if (2 * i + 2 > n) { print "-"; exit }
        db = y[2 * i + 1] - x[2 * i + 1]; dt = y[2 * i + 2] - x[2 * i + 2];
        if (dt <= 0) { print "-"; exit }
        printf "%.0f", 100 * db / dt }'
}

# quiet_gap MAX_WAIT: waits (1 s at least, MAX_WAIT s at most) until no CPU was busier than
# QUIET_PCT % (default 15) for a whole second, since other work on the machine would skew
# the next step. Sets QUIET_BUSY to the busiest CPU's % over the last second waited and
# QUIET_WAITED to the seconds waited.
quiet_gap() {
    local max_wait=$1 waited=0 s0 s1 i busy
    while :; do
        s0=$(cpu_busy_snapshot)
        sleep 1
        s1=$(cpu_busy_snapshot)
        busy=0
        for ((i = 0; i < $(nproc); i++)); do
            local b
            b=$(cpu_busy_pct "$s0" "$s1" "$i")
            [[ $b != - && $b -gt $busy ]] && busy=$b
        done
        QUIET_BUSY=$busy
        waited=$((waited + 1))
        QUIET_WAITED=$waited
        ((busy <= ${QUIET_PCT:-15})) && return 0
        if ((waited >= max_wait)); then
            log "  the machine is still busy (a CPU at $busy%) after ${waited}s: going on"
            return 0
        fi
        ((waited == 1)) && log "  other work on the machine (a CPU at $busy%): waiting for quiet (at most ${max_wait}s)"
    done
}

# median: the median of the numbers on stdin ("-" when there are none).
median() {
    sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# replace_section FILE NAME CONTENT_FILE HEADING SKELETON_FILE: puts CONTENT_FILE between
# the markers <!-- NAME:begin --> and <!-- NAME:end --> in FILE. A missing FILE is created
# from SKELETON_FILE; a FILE without the markers gets "## HEADING" and the markers appended.
replace_section() {
    local file=$1 name=$2 content=$3 heading=$4 skeleton=$5
    local begin="<!-- $name:begin -->" end="<!-- $name:end -->"
    mkdir -p "$(dirname "$file")"
    [[ -f $file ]] || cp "$skeleton" "$file"
    if ! grep -qF "$begin" "$file" || ! grep -qF "$end" "$file"; then
        printf '\n## %s\n\n%s\n%s\n' "$heading" "$begin" "$end" >>"$file"
    fi
    local tmp
    tmp=$(mktemp "$file.XXXXXX")
    awk -v begin="$begin" -v end="$end" -v content="$content" '
        $0 == begin { print; while ((getline line < content) > 0) print line; skip = 1; next }
        $0 == end { skip = 0 }
        !skip { print }' "$file" >"$tmp"
    mv "$tmp" "$file"
}

# forget_pid PID: drops PID from the processes bench_cleanup stops (once it has exited, its
# number may be reused by someone else's process).
forget_pid() {
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    BENCH_PIDS=("${keep[@]}")
}

# run_logged NAME CMD...: runs CMD to completion like start_bg would start it (output in
# $WORK/NAME.log, unpinned), recorded meanwhile so that bench_cleanup stops it when the
# script is interrupted; returns CMD's exit status.
run_logged() {
    local name=$1 rc=0
    shift
    start_bg "$name" "" "$@"
    local pid=$STARTED_PID
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# bench_exit_trap [CLEANUP_FN]: on exit (or INT/TERM), stop what the script started, run
# CLEANUP_FN if given, and remove $WORK, unless KEEP=1 or the script failed (then it stays
# for a look).
bench_exit_trap() {
    BENCH_EXTRA_CLEANUP=${1:-}
    trap bench_on_exit EXIT
    trap 'exit 130' INT TERM
}
bench_on_exit() {
    local rc=$?
    bench_cleanup
    if [[ -n ${BENCH_EXTRA_CLEANUP:-} ]]; then "$BENCH_EXTRA_CLEANUP"; fi
    if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then
        log "raw outputs and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# build_rvs: builds rvs (release) unless SKIP_BUILD=1, and sets RVS to the binary.
build_rvs() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building rvs (release)"
        (cd "$ROOT" && env -u CARGO_TARGET_DIR cargo build --release -p rvs >&2)
    fi
    RVS=$ROOT/target/release/rvs
    [[ -x $RVS ]] || die "$RVS not found (build it or unset SKIP_BUILD)"
}

# write_wrk_report FILE: a wrk Lua hook printing one machine-readable line at the end:
# RESULT requests= duration_us= p50_us= p99_us= errors= non2xx=
write_wrk_report() {
    cat >"$1" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA
}

# nginx_conf_head DIR EVENTS: the start of an nginx.conf (one worker) that keeps its pid,
# error log and temporary files in DIR, up to and inside `http {`; the caller adds its
# directives and server blocks and the closing `}`. EVENTS is the events block's content.
nginx_conf_head() {
    cat <<CONF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { $2 }
http {
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
CONF
}
