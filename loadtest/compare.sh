#!/usr/bin/env bash
# Run the same boot storm against ringboot, tftpd-hpa, atftpd and dnsmasq on loopback and print one
# side-by-side table: throughput, p50/p99 completion, failures, server CPU seconds, server peak RSS,
# and the load tester's own CPU share.
#
# Usage: loadtest/compare.sh [--clients N] [--size-mib M] [--profile P] [--servers "ringboot tftpd-hpa
#        atftpd dnsmasq"] [--deadline S] [--threads N] [--keep] [-- any other ringboot-loadtest args]
# Defaults: 200 clients x 64 MiB, profile uefi. Anything after `--` (or not recognised) is passed to
# ringboot-loadtest, e.g. `-- --loss 0.02`.
#
# The third-party servers are not installed as services: `apt-get download` + `dpkg -x` into a
# private folder ($COMPARE_DIR/peers), run in the foreground as root, each started and stopped by its
# PID. dnsmasq's TFTP port is fixed at 69, so it gets its own random 127.x.y.z. Needs root.
# Server `ringboot-base` runs RINGBOOT_BASE_BIN (an earlier build) for before/after tables in one run.
# Environment: COMPARE_DIR (default /tmp/ringboot-compare), RINGBOOT_BIN, RINGBOOT_BASE_BIN, LOADTEST_BIN,
# RINGBOOT_ARGS (extra `ringboot serve` arguments), CARGO_TARGET_DIR.
set -euo pipefail

CLIENTS=200
SIZE_MIB=64
PROFILE=uefi
SERVERS="ringboot tftpd-hpa atftpd dnsmasq"
DEADLINE=900
THREADS=1
KEEP=0
PASS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --profile) PROFILE=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --deadline) DEADLINE=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --) shift; PASS+=("$@"); break ;;
        *) PASS+=("$1"); shift ;;
    esac
done

source "$(dirname "$0")/lib.sh"
WORK=${COMPARE_DIR:-/tmp/ringboot-compare}
PEERS=$WORK/peers
ROOT=$WORK/root
OUT=$WORK/results
# Servers listen on an address of their own in 127/8 so that nothing else on this machine (another
# server bound with SO_REUSEPORT, say) can share their port.
SRV_IP=${SRV_IP:-$(rand_ip)}
DNSMASQ_ADDR=${DNSMASQ_ADDR:-$(rand_ip)}

[[ $(id -u) -eq 0 ]] || { echo "compare.sh: run as root (tftpd-hpa chroots, dnsmasq binds port 69)" >&2; exit 2; }
mkdir -p "$PEERS" "$ROOT" "$OUT"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    [[ $KEEP -eq 1 ]] || rm -f "$ROOT/boot.img"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- binaries ---------------------------------------------------------------------------------------
build_bins

# Each server unpacked into its own folder (atftpd's package also ships an in.tftpd).
install_peers() {
    [[ -x $PEERS/hpa/usr/sbin/in.tftpd ]] || fetch "$PEERS/hpa" tftpd-hpa
    [[ -x $PEERS/atftpd/usr/sbin/atftpd ]] || fetch "$PEERS/atftpd" atftpd
    [[ -x $PEERS/dnsmasq/usr/sbin/dnsmasq ]] ||
        fetch "$PEERS/dnsmasq" dnsmasq-base libnetfilter-conntrack3 libnfnetlink0 libmnl0
}
install_peers

# --- served tree -------------------------------------------------------------------------------------
want=$((SIZE_MIB * 1048576))
if [[ ! -f $ROOT/boot.img || $(stat -c %s "$ROOT/boot.img") -ne $want ]]; then
    log "writing a ${SIZE_MIB} MiB test image"
    head -c "$want" /dev/urandom > "$ROOT/boot.img"
fi
echo ready > "$ROOT/ready.txt"
chmod -R a+rX "$ROOT"

free_port() { echo $((20000 + RANDOM % 30000)); }

# start_server NAME -> sets SPID and ADDR
start_server() {
    local name=$1 port
    port=$(free_port)
    ADDR=$SRV_IP:$port
    case $name in
        ringboot)
            # shellcheck disable=SC2086
            "$RINGBOOT" serve --root "$ROOT" --listen "$ADDR" ${RINGBOOT_ARGS:-} >"$OUT/$name.log" 2>&1 &
            ;;
        ringboot-base)
            # An earlier build (RINGBOOT_BASE_BIN), for before/after figures taken in one run.
            [[ -x ${RINGBOOT_BASE_BIN:-} ]] || { log "ringboot-base needs RINGBOOT_BASE_BIN"; return 1; }
            # shellcheck disable=SC2086
            "$RINGBOOT_BASE_BIN" serve --root "$ROOT" --listen "$ADDR" ${RINGBOOT_ARGS:-} >"$OUT/$name.log" 2>&1 &
            ;;
        tftpd-hpa)
            "$PEERS/hpa/usr/sbin/in.tftpd" -L -s -u root -a "$ADDR" "$ROOT" >"$OUT/$name.log" 2>&1 &
            ;;
        atftpd)
            "$PEERS/atftpd/usr/sbin/atftpd" --daemon --no-fork --port "$port" --bind-address "$SRV_IP" \
                --user root --group root --maxthread 1000 --logfile /dev/null "$ROOT" >"$OUT/$name.log" 2>&1 &
            ;;
        dnsmasq)
            ADDR=$DNSMASQ_ADDR:69
            LD_LIBRARY_PATH="$PEERS/dnsmasq/usr/lib/x86_64-linux-gnu:$PEERS/dnsmasq/lib/x86_64-linux-gnu" \
                "$PEERS/dnsmasq/usr/sbin/dnsmasq" -k --conf-file=/dev/null --pid-file= --port=0 --enable-tftp \
                --tftp-root="$ROOT" --tftp-max=1000 --edns-packet-max=4096 --listen-address="$DNSMASQ_ADDR" \
                --bind-interfaces --user=root --group=root --log-facility="$OUT/$name.log" >>"$OUT/$name.log" 2>&1 &
            ;;
        *) log "unknown server '$name'"; return 1 ;;
    esac
    SPID=$!
    PIDS+=("$SPID")
    # Ready when one tiny download succeeds (bounded: 20 tries).
    for _ in $(seq 20); do
        if ! kill -0 "$SPID" 2>/dev/null; then
            log "$name exited at start: $(tail -3 "$OUT/$name.log" | tr '\n' ' ')"
            return 1
        fi
        if "$LOADTEST" --server "$ADDR" --clients 1 --file ready.txt --profile ipxe --no-verify --quiet \
            --deadline 1 >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    log "$name did not answer on $ADDR"
    return 1
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p != "$SPID" ]] && keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# RSS of the process and its children (tftpd-hpa forks per request), in kB.
tree_rss() {
    local total=0 r
    for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do
        r=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${r:-0}))
    done
    echo "$total"
}

ROWS=()
for name in $SERVERS; do
    log "== $name: $CLIENTS x $SIZE_MIB MiB, profile $PROFILE"
    if ! start_server "$name"; then
        ROWS+=("$(printf '%-13s %s' "$name" "did not start (see $OUT/$name.log)")")
        stop_server
        continue
    fi
    cg_join "$name" "$SPID"
    c0=$(cpu_seconds "$SPID")
    peak=0
    set +e
    "$LOADTEST" --server "$ADDR" --clients "$CLIENTS" --file boot.img --profile "$PROFILE" \
        --verify "$ROOT" --json "$OUT/$name.json" --plot "$OUT/$name.svg" --deadline "$DEADLINE" \
        --threads "$THREADS" --quiet "${PASS[@]+"${PASS[@]}"}" &
    LPID=$!
    while kill -0 "$LPID" 2>/dev/null; do
        r=$(tree_rss "$SPID")
        ((r > peak)) && peak=$r
        sleep 0.5
    done
    wait "$LPID"
    rc=$?
    set -e
    c1=$(cpu_seconds "$SPID")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$SPID/status")
    stop_server
    cg_leave
    j=$OUT/$name.json
    if [[ ! -f $j ]]; then
        ROWS+=("$(printf '%-13s %s' "$name" "loadtest exited $rc without a report")")
        continue
    fi
    ROWS+=("$(printf '%-13s %8.3f %8.1f %9.2f %9.2f %6s/%-6s %9.2f %9.1f %9.1f %8.0f%%' "$name" \
        "$(json_get "$j" throughput_gbps)" "$(json_get "$j" throughput_mbytes_per_s)" \
        "$(awk -v v="$(json_get "$j" p50 duration_ms)" 'BEGIN{print v/1000}')" \
        "$(awk -v v="$(json_get "$j" p99 duration_ms)" 'BEGIN{print v/1000}')" \
        "$(json_get "$j" completed)" "$(json_get "$j" failed)" \
        "$(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}')" \
        "$(awk -v v="$hwm" 'BEGIN{print v/1024}')" "$(awk -v v="$peak" 'BEGIN{print v/1024}')" \
        "$(awk -v v="$(json_get "$j" loadtest_cpu_share)" 'BEGIN{print v*100}')")")
done

echo
echo "Boot storm: $CLIENTS x $SIZE_MIB MiB, profile $PROFILE, loadtest threads $THREADS ${PASS[*]+${PASS[*]}}"
printf '%-13s %8s %8s %9s %9s %13s %9s %9s %9s %9s\n' server Gbit/s MB/s "p50 s" "p99 s" "done/failed" \
    "srv CPU s" "RSS MiB" "tree MiB" "lt CPU"
for r in "${ROWS[@]}"; do echo "$r"; done
if [[ -n $CGBASE ]]; then how="cgroup cpu.stat of the server and all its children"; else how="utime+stime incl. reaped children"; fi
echo "(srv CPU: $how; RSS: server VmHWM; tree: peak RSS of the server"
echo " and its children sampled every 0.5 s; lt CPU: load tester CPU / wall. Reports: $OUT)"
