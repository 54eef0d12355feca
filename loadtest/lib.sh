# shellcheck shell=bash
# What the measurement scripts (loadtest/compare.sh, loadtest/bottleneck.sh, benches/sol.sh)
# share, sourced by each after its argument parsing: `source "$(dirname "$0")/../loadtest/lib.sh"`.
#
# Sets: REPO (this tree), TARGET (CARGO_TARGET_DIR or REPO/target), RINGBOOT and LOADTEST (the
# release binaries, or RINGBOOT_BIN and LOADTEST_BIN), TCK (clock ticks per second), CGBASE (the
# cgroup v2 mount, or empty). Functions: log, build_bins, fetch, rand_ip, cg_join, cg_leave,
# cpu_seconds, json_get, json_num. Nothing here starts a process that outlives its caller.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RINGBOOT=${RINGBOOT_BIN:-$TARGET/release/ringboot}
LOADTEST=${LOADTEST_BIN:-$TARGET/release/ringboot-loadtest}
TCK=$(getconf CLK_TCK)

# log MESSAGE: to stderr, prefixed with the script's name.
log() { echo "$(basename "$0"): $*" >&2; }

# build_bins: ringboot and ringboot-loadtest (release) unless both are there.
build_bins() {
    if [[ ! -x $RINGBOOT || ! -x $LOADTEST ]]; then
        log "building ringboot and ringboot-loadtest (release)"
        (cd "$REPO" && cargo build --release -p ringboot -p ringboot-loadtest)
    fi
}

# fetch DIR PACKAGE...: `apt-get download` + `dpkg -x` into DIR (never installed), via $WORK/debs.
fetch() {
    local dir=$1; shift
    local dl=$WORK/debs
    rm -rf "$dl"; mkdir -p "$dl" "$dir"
    log "apt-get download $*"
    if ! (cd "$dl" && apt-get download "$@" >/dev/null 2>&1); then
        apt-get update >/dev/null 2>&1 || true
        (cd "$dl" && apt-get download "$@" >/dev/null) || log "download of $* failed"
    fi
    for d in "$dl"/*.deb; do [[ -f $d ]] && dpkg -x "$d" "$dir"; done
    rm -rf "$dl"
}

# rand_ip: a random address of 127/8 (a server of its own there shares its port with nothing).
rand_ip() { echo "127.$((100 + RANDOM % 100)).$((RANDOM % 256)).$((1 + RANDOM % 254))"; }

# Server CPU seconds. Preferred: a cgroup v2 of its own (its cpu.stat counts every descendant, also
# the per-request children of tftpd-hpa, which ignores SIGCHLD so that /proc's cutime never sees
# them). Fallback: utime+stime+cutime+cstime from /proc/PID/stat.
CGBASE=""
for c in /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [[ -f $c/cgroup.procs && -f $c/cgroup.controllers ]]; then CGBASE=$c; break; fi
done
CG=""
cg_join() { # cg_join NAME PID: sets CG (empty when no cgroup could be made)
    CG=""
    [[ -n $CGBASE ]] || return 0
    local g
    g=$CGBASE/ringboot-$(basename "$0" .sh)-$1-$$
    mkdir -p "$g" 2>/dev/null && echo "$2" > "$g/cgroup.procs" 2>/dev/null && CG=$g || CG=""
}
cg_leave() {
    [[ -n $CG ]] || return 0
    for _ in 1 2 3 4 5; do rmdir "$CG" 2>/dev/null && break; sleep 0.2; done
    CG=""
}
cpu_seconds() { # cpu_seconds PID
    if [[ -n $CG ]]; then
        awk '/^usage_usec/ {print $2 / 1e6}' "$CG/cpu.stat"
    else
        sed 's/.*) //' "/proc/$1/stat" | awk -v t="$TCK" '{print ($12 + $13 + $14 + $15) / t}'
    fi
}

# json_get FILE KEY [OBJECT]: a number from the loadtest's pretty-printed JSON, at the top level
# or in the top-level OBJECT.
json_get() {
    awk -v key="\"$2\":" -v obj="${3:-}" '
        obj != "" && index($0, "\"" obj "\": {") { inobj = 1; next }
        inobj && /^  }/ { inobj = 0 }
        (obj == "" && /^  "/ && $1 == key) || (obj != "" && inobj && $1 == key) {
            v = $2; sub(/,$/, "", v); print v; exit
        }' "$1"
}
# json_num FILE KEY: the first number under KEY at any depth.
json_num() { sed -n "s/^ *\"$2\": \([0-9.e+-]*\),\?$/\1/p" "$1" | head -1; }
