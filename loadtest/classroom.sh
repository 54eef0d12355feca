#!/usr/bin/env bash
# A classroom on one multicast stream, with loss: the method of the acceptance check
# classroom-multicast (a network namespace whose 224.0.0.0/4 routes to lo; ringboot serving
# PXE MTFTP and RFC 2090; the load tester's multicast modes with independent loss per receiver,
# --loss), over receivers x loss x protocol, with unicast (same file, --unicast-clients
# receivers) and atftpd (the only peer with RFC 2090 multicast) side by side, and optionally a
# tbf-shaped lo for the whole run (--shape-mbit).
#
# Usage: loadtest/classroom.sh [--size BYTES] [--receivers "20 200 1000"] [--loss "0 0.001 0.01 0.05"]
#        [--protocols "pxe rfc2090 unicast atftpd"] [--unicast-clients N] [--shape-mbit M]
#        [--seconds S] [--rate MBIT]
# Every run is bounded by --seconds (default 120; the load tester's --deadline and timeout(1)).
# Columns: wall seconds (the load tester's), bytes sent on lo / file size (every datagram the
# server and the receivers sent, ACKs and requests included: for multicast about the passes over
# the file), completed receivers, master turns (the load tester's count of times a receiver was
# master) and the exit status (124: the bound was hit). Unicast runs the same file to
# --unicast-clients receivers (default 200) with the uefi profile; atftpd runs RFC 2090 only.
# Root only (namespaces, port 69). Environment: RINGBOOT_BIN, LOADTEST_BIN, CARGO_TARGET_DIR,
# CLASSROOM_DIR (default /tmp/ringboot-classroom).
set -uo pipefail

SIZE=16000000
RECEIVERS="20 200 1000"
LOSSES="0 0.001 0.01 0.05"
PROTOCOLS="pxe rfc2090 unicast atftpd"
UNICAST_CLIENTS=200
SHAPE=""
SECS=120
RATE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size) SIZE=$2; shift 2 ;;
        --receivers) RECEIVERS=$2; shift 2 ;;
        --loss) LOSSES=$2; shift 2 ;;
        --protocols) PROTOCOLS=$2; shift 2 ;;
        --unicast-clients) UNICAST_CLIENTS=$2; shift 2 ;;
        --shape-mbit) SHAPE=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        *) echo "classroom.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RB=${RINGBOOT_BIN:-$TARGET/release/ringboot}
LT=${LOADTEST_BIN:-$TARGET/release/ringboot-loadtest}
WORK=${CLASSROOM_DIR:-/tmp/ringboot-classroom}
[[ $(id -u) -eq 0 ]] || { echo "classroom.sh: run as root (namespaces, port 69)" >&2; exit 2; }
[[ -x $RB && -x $LT ]] || { echo "classroom.sh: build first (cargo build --release --workspace)" >&2; exit 2; }
rm -rf "$WORK"; mkdir -p "$WORK/root" "$WORK/out"
R=$WORK/root; O=$WORK/out
chmod 755 "$R"
head -c "$SIZE" /dev/urandom >"$R/img"; chmod -R a+rX "$R"

NS=rbcr$$
SPID=""
cleanup() {
    [[ -n $SPID ]] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
}
trap cleanup EXIT
ip netns add "$NS"
E="ip netns exec $NS"
ip -n "$NS" link set lo up
ip -n "$NS" route add 224.0.0.0/4 dev lo
[[ -n $SHAPE ]] && $E tc qdisc replace dev lo root tbf rate "${SHAPE}mbit" burst 64kb limit 1000000

start_ringboot() {
    $E "$RB" serve --root "$R" --listen 127.0.0.1:69 --mtftp img@239.255.1.1:3001 --mtftp-port 1759 \
        --multicast-groups 239.255.42.0/24 --multicast-rate "$RATE" --max-transfers 4096 \
        --max-transfers-per-client 4096 >"$O/ringboot.log" 2>&1 &
    SPID=$!
    sleep 1
}
start_atftpd() {
    $E /usr/sbin/atftpd --daemon --no-fork --user root.root --port 69 --bind-address 127.0.0.1 \
        --mcast-addr 239.255.43.0-255 --mcast-port 1758 --mcast-ttl 1 --maxthread 2000 \
        --logfile "$O/atftpd.log" "$R" >"$O/atftpd.out" 2>&1 &
    SPID=$!
    sleep 1
}
stop_server() {
    [[ -n $SPID ]] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    SPID=""
}
txb() { $E cat /sys/class/net/lo/statistics/tx_bytes; }

# run NAME CLIENTS LOSS ARGS... -> one table row
run() {
    local name=$1 n=$2 loss=$3; shift 3
    local t0 t1 rc
    t0=$(txb)
    $E timeout $((SECS + 15)) "$LT" --clients "$n" --file img --verify "$R" --loss "$loss" \
        --deadline "$SECS" --json "$O/$name.json" "$@" >"$O/$name.out" 2>&1
    rc=$?
    t1=$(txb)
    python3 - "$O/$name.json" "$rc" "$t0" "$t1" "$SIZE" "$name" "$n" "$loss" <<'PY'
import json, sys
path, rc, t0, t1, size, name, n, loss = sys.argv[1:]
try:
    d = json.load(open(path))
    wall, done = d["wall_seconds"], d["completed"]
    turns = (d.get("multicast") or {}).get("master_turns", "-")
except Exception:
    wall, done, turns = float("nan"), 0, "-"
print(f"| {name.split('-')[0]} | {n} | {float(loss)*100:g}% | {wall:.2f} | {(int(t1)-int(t0))/int(size):.2f} | {done}/{n} | {turns} | {rc} |")
PY
}

PXE=(--server 127.0.0.1:1759 --multicast pxe --mtftp-group 239.255.1.1:3001 --mtftp-port 1759)
RFC=(--server 127.0.0.1:69 --multicast rfc2090 --blksize 1428)
echo "classroom.sh: $(nproc) CPUs, file $SIZE bytes, shape ${SHAPE:-none}, --multicast-rate $RATE, bound ${SECS}s per run" >&2
echo "| protocol | receivers | loss | wall s | bytes on lo / file | completed | master turns | rc |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for p in $PROTOCOLS; do
    case $p in
        pxe|rfc2090|unicast) start_ringboot ;;
        atftpd) start_atftpd ;;
        *) echo "classroom.sh: unknown protocol $p" >&2; continue ;;
    esac
    for loss in $LOSSES; do
        case $p in
            pxe) for n in $RECEIVERS; do run "pxe-$n-$loss" "$n" "$loss" "${PXE[@]}"; done ;;
            rfc2090) for n in $RECEIVERS; do run "rfc2090-$n-$loss" "$n" "$loss" "${RFC[@]}"; done ;;
            unicast) run "unicast-$UNICAST_CLIENTS-$loss" "$UNICAST_CLIENTS" "$loss" --server 127.0.0.1:69 --profile uefi ;;
            atftpd) for n in $RECEIVERS; do run "atftpd-$n-$loss" "$n" "$loss" "${RFC[@]}"; done ;;
        esac
    done
    stop_server
done
