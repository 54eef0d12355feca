#!/usr/bin/env bash
# ringboot's CPU seconds per GB as a multiple of this machine's speed of light, per profile, in
# one run: for each profile, benches/sol.rs (the same syscalls, no protocol) and then ringboot
# serving the same storm on loopback to ringboot-loadtest. Prints one table.
#
# Usage: benches/sol.sh [--clients N] [--size-mib M] [--profiles "uefi ipxe"]
# Defaults: 200 clients x 16 MiB, profiles uefi and ipxe. No root needed.
# Environment: RINGBOOT_BIN (default: the release build of this tree), LOADTEST_BIN,
# RINGBOOT_ARGS (extra `ringboot serve` arguments), SOL_DIR (default /tmp/ringboot-sol),
# CARGO_TARGET_DIR.
set -euo pipefail

CLIENTS=200
SIZE_MIB=16
PROFILES="uefi ipxe"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --profiles) PROFILES=$2; shift 2 ;;
        *) echo "sol.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

source "$(dirname "$0")/../loadtest/lib.sh"
WORK=${SOL_DIR:-/tmp/ringboot-sol}
ROOT=$WORK/root

mkdir -p "$ROOT"
build_bins
SOL=$(cd "$REPO" && cargo bench --bench sol --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[[ -x $SOL ]] || { log "could not build benches/sol.rs"; exit 1; }

want=$((SIZE_MIB * 1048576))
if [[ ! -f $ROOT/boot.img || $(stat -c %s "$ROOT/boot.img") -ne $want ]]; then
    head -c "$want" /dev/urandom > "$ROOT/boot.img"
fi
echo ready > "$ROOT/ready.txt"

SPID=""
cleanup() { [[ -z $SPID ]] || { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime + stime of a process, in seconds.
cpu_of() { sed 's/.*) //' "/proc/$1/stat" | awk -v t="$TCK" '{print ($12 + $13) / t}'; }

ROWS=()
for p in $PROFILES; do
    log "== $p: speed of light"
    line=$("$SOL" --profile "$p" --clients "$CLIENTS" --size-mib "$SIZE_MIB" 2>/dev/null)
    sol_gb=$(sed -n 's/.*server_cpu_s_per_gb=\([0-9.]*\).*/\1/p' <<<"$line")
    sol_wall=$(sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p' <<<"$line")
    sol_bytes=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$line")

    log "== $p: ringboot"
    ip=$(rand_ip)
    port=$((20000 + RANDOM % 30000))
    # shellcheck disable=SC2086
    "$RINGBOOT" serve --root "$ROOT" --listen "$ip:$port" ${RINGBOOT_ARGS:-} >"$WORK/ringboot-$p.log" 2>&1 &
    SPID=$!
    for _ in $(seq 40); do
        "$LOADTEST" --server "$ip:$port" --clients 1 --file ready.txt --profile ipxe --no-verify \
            --quiet --deadline 1 >/dev/null 2>&1 && break
        sleep 0.25
    done
    c0=$(cpu_of "$SPID")
    "$LOADTEST" --server "$ip:$port" --clients "$CLIENTS" --file boot.img --profile "$p" \
        --no-verify --quiet --deadline 900 --json "$WORK/loadtest-$p.json" || true
    c1=$(cpu_of "$SPID")
    kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
    j=$WORK/loadtest-$p.json
    bytes=$(json_get "$j" bytes)
    wall=$(json_get "$j" wall_seconds)
    lt=$(json_get "$j" loadtest_cpu_share)
    ROWS+=("$(awk -v p="$p" -v sg="$sol_gb" -v sw="$sol_wall" -v sb="$sol_bytes" -v c0="$c0" -v c1="$c1" \
        -v b="$bytes" -v w="$wall" -v lt="$lt" 'BEGIN {
            rg = (c1 - c0) / (b / 1e9);
            printf "%-8s %10.3f %9.0f %12.3f %9.0f %11.2f %9.0f%%", p, sg, sb / sw / 1e6, rg, b / w / 1e6, rg / sg, lt * 100
        }')")
done

echo
echo "Speed of light vs ringboot: $CLIENTS x $SIZE_MIB MiB on loopback, $(nproc) cores, one run"
printf '%-8s %10s %9s %12s %9s %11s %10s\n' profile "SoL CPU/GB" "SoL MB/s" "ringboot" "MB/s" "x SoL" "lt CPU"
for r in "${ROWS[@]}"; do echo "$r"; done
echo "(CPU/GB: server CPU seconds per GB of payload; SoL: benches/sol.rs, server thread only;"
echo " ringboot: utime+stime of the server process; lt CPU: the load tester's CPU share)"
