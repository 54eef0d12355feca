#!/usr/bin/env bash
# A classroom on one multicast stream, with loss: the method of the acceptance check
# classroom-multicast (a network namespace whose 224.0.0.0/4 routes to lo; ringboot serving
# PXE MTFTP and RFC 2090; the load tester's multicast modes with independent loss per receiver,
# --loss), over receivers x loss x protocol, with unicast (same file, --unicast-clients
# receivers) and atftpd (the only peer with RFC 2090 multicast) side by side, and optionally a
# tbf-shaped lo for the whole run (--shape-mbit), or the receivers behind a tbf-shaped link
# (--link).
#
# Usage: loadtest/classroom.sh [--size BYTES] [--receivers "20 200 1000"] [--loss "0 0.001 0.01 0.05"]
#        [--protocols "pxe rfc2090 unicast atftpd"] [--unicast-clients N] [--shape-mbit M]
#        [--seconds S] [--rate MBIT] [--link MBIT[:QUEUE_PKTS]] [--server-args "ARGS"]
# --server-args: more arguments for `ringboot serve` (e.g. "--multicast-window 64"), split on spaces.
# --link: the server in one namespace, the receivers in another, joined by a veth pair whose
# server-side egress is shaped with tbf (MBIT Mbit/s of frames, headers included; a queue of
# QUEUE_PKTS full frames, default 64; bucket 32000 bytes as loadtest/bottleneck.sh). The server's
# 224.0.0.0/4 routes to that veth; on the receivers' side a helper joins the groups on the veth
# (the load tester joins on lo). Columns then: goodput (file bytes x 8 / wall / MBIT; unicast:
# the bytes that arrived at all receivers), the server's UDP bytes / file size (an nft counter on its output hook,
# before the queue, so dropped packets count; a GSO train counts one header) and the packets tbf
# dropped (loss the run caused itself; a GSO train counts as one). "data goodput" leaves out the
# PXE client's listen before its first open (LISTEN_MS, the load tester's --mtftp-listen-ms).
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
LINK=""
SERVER_ARGS=""
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
        --link) LINK=$2; shift 2 ;;
        --server-args) SERVER_ARGS=$2; shift 2 ;;
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
NSC=rbcc$$
SPID=""
JPID=""
cleanup() {
    [[ -n $SPID ]] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    [[ -n $JPID ]] && kill "$JPID" 2>/dev/null && wait "$JPID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    [[ -n $LINK ]] && ip netns del "$NSC" 2>/dev/null
}
trap cleanup EXIT
ip netns add "$NS"
E="ip netns exec $NS"
ip -n "$NS" link set lo up
SRV=127.0.0.1
C=$E
SRCS=()
if [[ -n $LINK ]]; then
    [[ -z $SHAPE ]] || { echo "classroom.sh: --link and --shape-mbit exclude each other" >&2; exit 2; }
    LMBIT=${LINK%%:*}; LQ=64; [[ $LINK == *:* ]] && LQ=${LINK#*:}
    SRV=10.77.0.1; VS=rbcs$$; VC=rbcv$$
    ip netns add "$NSC"
    C="ip netns exec $NSC"
    ip link add "$VS" type veth peer name "$VC"
    ip link set "$VS" netns "$NS"; ip link set "$VC" netns "$NSC"
    ip -n "$NSC" link set lo up
    ip -n "$NS" addr add "$SRV/16" dev "$VS"; ip -n "$NSC" addr add 10.77.0.2/16 dev "$VC"
    # One address per machine (the load tester's default, 127.1/16, would not cross the veth).
    for i in $(seq 1 254); do echo "addr add 10.77.1.$i/16 dev $VC"; done | ip -n "$NSC" -batch -
    SRCS=(--source-ips 10.77.1.0/24)
    ip -n "$NS" link set "$VS" up; ip -n "$NSC" link set "$VC" up
    ip -n "$NS" route add 224.0.0.0/4 dev "$VS"
    ip -n "$NSC" route add 224.0.0.0/4 dev lo
    $E tc qdisc add dev "$VS" root tbf rate "${LMBIT}mbit" burst 32000 limit $((LQ * 1514))
    $E nft -f - <<EOF
table inet rbcr {
    counter sent { }
    chain out { type filter hook output priority 0; meta l4proto udp counter name sent; }
}
EOF
    # Membership on the veth for every group a server here may use (one socket per group: the
    # kernel caps memberships per socket); the load tester's sockets, joined on lo, then receive
    # what arrives on the veth too (IP_MULTICAST_ALL, the default).
    $C python3 -c '
import os, socket, struct, sys, time
parent = os.getppid()
idx = socket.if_nametoindex(sys.argv[1])
keep = []
for g in ["239.255.1.1"] + [f"239.255.{n}.{h}" for n in (42, 43) for h in range(256)]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4si", socket.inet_aton(g), bytes(4), idx))
    keep.append(s)
while os.getppid() == parent:  # gone with the script, even if it is killed
    time.sleep(1)
' "$VC" &
    JPID=$!
    sleep 0.5
else
    ip -n "$NS" route add 224.0.0.0/4 dev lo
fi
[[ -n $SHAPE ]] && $E tc qdisc replace dev lo root tbf rate "${SHAPE}mbit" burst 64kb limit 1000000

start_ringboot() {
    $E "$RB" serve --root "$R" --listen "$SRV:69" --mtftp img@239.255.1.1:3001 --mtftp-port 1759 \
        --multicast-groups 239.255.42.0/24 --multicast-rate "$RATE" --max-transfers 4096 \
        --max-transfers-per-client 4096 $SERVER_ARGS >>"$O/ringboot.log" 2>&1 &
    SPID=$!
    sleep 1
}
start_atftpd() {
    $E /usr/sbin/atftpd --daemon --no-fork --user root.root --port 69 --bind-address "$SRV" \
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
# "SERVER_UDP_BYTES TBF_DROPS" (--link)
linkc() {
    local b d
    b=$($E nft list counter inet rbcr sent | awk '/packets/ {for (i = 1; i <= NF; i++) if ($i == "bytes") print $(i+1)}')
    d=$($E tc -s qdisc show dev "$VS" | awk '/dropped/ {d = $7; sub(/,/, "", d); print d; exit}')
    echo "$b $d"
}

# run NAME CLIENTS LOSS ARGS... -> one table row
run() {
    local name=$1 n=$2 loss=$3; shift 3
    local t0 t1 rc b0=0 d0=0 b1=0 d1=0
    # --link: a fresh server per run (a PXE run right after another on the same server fails
    # here, on lo as well: see docs/benchmarks.md, "Multicast through a shaped link").
    [[ -n $LINK ]] && { stop_server; $START; }
    t0=$(txb)
    [[ -n $LINK ]] && read -r b0 d0 < <(linkc)
    $C timeout $((SECS + 15)) "$LT" --clients "$n" --file img --verify "$R" --loss "$loss" \
        --deadline "$SECS" --json "$O/$name.json" "${SRCS[@]+"${SRCS[@]}"}" "$@" >"$O/$name.out" 2>&1
    rc=$?
    t1=$(txb)
    # The kernel's UDP counters of the server's namespace (receive-buffer drops: RcvbufErrors).
    $E grep '^Udp:' /proc/net/snmp >>"$O/$name.out"
    [[ -n $LINK ]] && read -r b1 d1 < <(linkc)
    python3 - "$O/$name.json" "$rc" "$t0" "$t1" "$SIZE" "$name" "$n" "$loss" "${LMBIT:-}" \
        $((b1 - b0)) $((d1 - d0)) "$LISTEN_MS" <<'PY'
import json, sys
path, rc, t0, t1, size, name, n, loss, mbit, sent, drops, listen_ms = sys.argv[1:]
try:
    d = json.load(open(path))
    wall, done, got = d["wall_seconds"], d["completed"], d["bytes"]
    turns = (d.get("multicast") or {}).get("master_turns", "-")
except Exception:
    wall, done, turns, got = float("nan"), 0, "-", 0
row = f"| {name.split('-')[0]} | {n} | {float(loss)*100:g}% | {wall:.2f} | "
if mbit:
    total = got if name.startswith("unicast") else int(size)  # unicast: what arrived
    good = total * 8 / wall / (float(mbit) * 1e6) * 100 if wall > 0 else 0
    listen = float(listen_ms) / 1000 if name.startswith("pxe") else 0
    data = total * 8 / (wall - listen) / (float(mbit) * 1e6) * 100 if wall > listen else 0
    row += f"{mbit} | {good:.1f}% | {data:.1f}% | {int(sent)/int(size):.2f} | {drops} | "
else:
    row += f"{(int(t1)-int(t0))/int(size):.2f} | "
print(row + f"{done}/{n} | {turns} | {rc} |")
PY
}

LISTEN_MS=1000
PXE=(--mtftp-listen-ms "$LISTEN_MS" --server "$SRV:1759" --multicast pxe --mtftp-group 239.255.1.1:3001 --mtftp-port 1759)
RFC=(--server "$SRV:69" --multicast rfc2090 --blksize 1428)
echo "classroom.sh: $(nproc) CPUs, file $SIZE bytes, shape ${SHAPE:-none}, link ${LINK:-none}, --multicast-rate $RATE, server args '${SERVER_ARGS}', bound ${SECS}s per run" >&2
if [[ -n $LINK ]]; then
    echo "| protocol | receivers | loss | wall s | link Mbit/s | goodput / link | data goodput / link | server UDP bytes / file | tbf drops | completed | master turns | rc |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
else
    echo "| protocol | receivers | loss | wall s | bytes on lo / file | completed | master turns | rc |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
fi
for p in $PROTOCOLS; do
    case $p in
        pxe|rfc2090|unicast) START=start_ringboot; start_ringboot ;;
        atftpd) START=start_atftpd; start_atftpd ;;
        *) echo "classroom.sh: unknown protocol $p" >&2; continue ;;
    esac
    for loss in $LOSSES; do
        case $p in
            pxe) for n in $RECEIVERS; do run "pxe-$n-$loss" "$n" "$loss" "${PXE[@]}"; done ;;
            rfc2090) for n in $RECEIVERS; do run "rfc2090-$n-$loss" "$n" "$loss" "${RFC[@]}"; done ;;
            unicast) run "unicast-$UNICAST_CLIENTS-$loss" "$UNICAST_CLIENTS" "$loss" --server "$SRV:69" --profile uefi ;;
            atftpd) for n in $RECEIVERS; do run "atftpd-$n-$loss" "$n" "$loss" "${RFC[@]}"; done ;;
        esac
    done
    stop_server
done
