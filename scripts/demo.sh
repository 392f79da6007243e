#!/usr/bin/env bash
# Quick start: set up, start a controller (embedded etcd) and one agent per "node", build a
# small real topology and prove it with traffic.
#   sudo ./scripts/demo.sh          # start (idempotent: stops a previous demo first)
#   sudo ./scripts/demo.sh stop     # stop everything it started, by PID, and remove namespaces
#
# "Nodes" are network namespaces joined by an underlay bridge (192.0.2.0/24, documentation
# range); workloads are namespaces plugged into ports. Nothing touches the host's interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export BARYON_STATE_DIR="${BARYON_STATE_DIR:-/var/lib/baryon}"
RUN="$BARYON_STATE_DIR/demo"
P=bdemo
NODES=(node1 node2)

stop() {
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null && echo "stopped $(basename "$f" .pid) (pid $pid)"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns del "$ns" && echo "removed namespace $ns"
  done
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root (namespaces, veths)" >&2; exit 1; }

./scripts/setup.sh
. .venv/bin/activate
stop >/dev/null 2>&1 || true
mkdir -p "$RUN"

echo "== controller (embedded etcd in $BARYON_STATE_DIR/etcd)"
baryon controller --listen 127.0.0.1:9696 >"$RUN/controller.log" 2>&1 &
echo $! >"$RUN/controller.pid"
for _ in $(seq 100); do
  [ -s "$BARYON_STATE_DIR/admin-token" ] && baryon network list >/dev/null 2>&1 && break
  sleep 0.1
done
baryon network list >/dev/null || { cat "$RUN/controller.log"; exit 1; }
TOKEN=$(cat "$BARYON_STATE_DIR/admin-token")

echo "== nodes: namespaces on an underlay bridge"
ip netns add "$P-underlay"
ip -n "$P-underlay" link add br0 type bridge
ip -n "$P-underlay" link set br0 up
i=10
for n in "${NODES[@]}"; do
  i=$((i + 1))
  ip netns add "$P-$n"
  ip link add "$P-$n-u" netns "$P-underlay" type veth peer name eth0 netns "$P-$n"
  ip -n "$P-underlay" link set "$P-$n-u" master br0 up
  ip -n "$P-$n" addr add "192.0.2.$i/24" dev eth0
  ip -n "$P-$n" link set eth0 up
  ip -n "$P-$n" link set lo up
  baryon agent --controller 127.0.0.1:9696 --token "$TOKEN" --host "$P-$n" \
    --mechanism linuxbridge --tunnel-ip "192.0.2.$i" --netns "$P-$n" \
    >"$RUN/agent-$n.log" 2>&1 &
  echo $! >"$RUN/agent-$n.pid"
done

echo "== topology: one VXLAN network, one subnet, a port per node"
# The controller's state persists: remove what an earlier demo left, by ID.
for net in $(baryon network list --name demo-net -f value -c id); do
  for port in $(baryon port list --network "$net" -f value -c id); do baryon port delete "$port"; done
  baryon network delete "$net"
done
baryon network create demo-net -f value -c id >/dev/null
baryon subnet create demo-subnet --network demo-net --subnet-range 10.42.0.0/24 -f value -c id >/dev/null
for n in "${NODES[@]}"; do
  baryon port create "vm-$n" --network demo-net --host "$P-$n" -f value -c id >/dev/null
  ip netns add "$P-vm-$n"
  baryon port plug "vm-$n" --netns "$P-vm-$n" --node-netns "$P-$n" --static-ip
done

echo "== waiting for ports to go ACTIVE"
for _ in $(seq 100); do
  statuses=$(baryon port list --network demo-net -f value -c status | sort -u)
  [ "$statuses" = ACTIVE ] && break
  sleep 0.1
done
baryon port list --network demo-net
[ "$statuses" = ACTIVE ] || { echo "ports did not become ACTIVE; see $RUN/*.log" >&2; exit 1; }

ip2=$(baryon port show vm-node2 -f json | python3 -c 'import json,sys; print(json.load(sys.stdin)["fixed_ips"]["ips"][0]["ip_address"])')
echo "== ping from vm-node1 to vm-node2 ($ip2) across nodes over VXLAN"
ip netns exec "$P-vm-node1" busybox ping -c 3 -W 2 "$ip2"

cat <<MSG

Baryon is running:
  controller  127.0.0.1:9696   (log $RUN/controller.log, token $BARYON_STATE_DIR/admin-token)
  agents      ${NODES[*]}      (logs $RUN/agent-*.log)
Try:   . .venv/bin/activate && baryon port list && baryon network show demo-net
Stop:  sudo ./scripts/demo.sh stop
MSG
