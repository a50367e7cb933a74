#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, for trying sweeps and failure drills before a real cluster:
# a head node (no CPUs: it runs only the sweep driver) and N worker nodes, each a separate `ray start`
# in its own process group, all on 127.0.0.1 with token authentication.
#
#   cluster/local_cluster.sh start [WORKERS]     # default 2 workers
#   source .ray-local/env                        # RAY_ADDRESS and the auth token for drivers
#   hnet sweep run smoke --address "$RAY_ADDRESS"
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh kill-worker 1       # SIGKILL every process of worker node 1 (a lost machine)
#   cluster/local_cluster.sh start-worker 1      # bring it back (a replaced machine)
#   cluster/local_cluster.sh stop
#
# Settings (environment): HNET_CLUSTER_DIR (state, logs, token; default .ray-local), HNET_RAY_PORT
# (GCS port, default 6390), HNET_DASHBOARD_PORT (default 8266, loopback only), HNET_WORKER_CPUS (CPUs per
# worker node, default 1), HNET_WORKER_GPUS (GPUs per worker node, default 0: logical ones where the machine
# has fewer, for trying GPU packing on a CPU machine), RAY (the ray executable, default the one beside this Python).
set -euo pipefail

STATE=${HNET_CLUSTER_DIR:-.ray-local}
PORT=${HNET_RAY_PORT:-6390}
DASHBOARD_PORT=${HNET_DASHBOARD_PORT:-8266}
WORKER_CPUS=${HNET_WORKER_CPUS:-1}
WORKER_GPUS=${HNET_WORKER_GPUS:-0}
RAY=${RAY:-$(command -v ray || true)}
ADDRESS=127.0.0.1:$PORT

die() { echo "local_cluster: error: $*" >&2; exit 2; }
alive() { [ -f "$1" ] && kill -0 -- "-$(cat "$1")" 2>/dev/null; }

ray_env() {  # every node and every driver must present the same token
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0
}

wait_for_nodes() {  # until $1 nodes are alive (with resource $2: exactly $1 such nodes), or fail after 120 s
    local want=$1 resource=${2:-} python
    python=$(dirname "$RAY")/python
    for _ in $(seq 120); do
        got=$("$python" - "$ADDRESS" "$resource" 2>/dev/null <<'EOF' || true
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(node["Alive"] and (not sys.argv[2] or sys.argv[2] in node["Resources"]) for node in ray.nodes()))
EOF
)
        if [ -n "$resource" ]; then [ "${got:--1}" -eq "$want" ] && return 0
        else [ "${got:-0}" -ge "$want" ] && return 0; fi
        sleep 1
    done
    die "${got:-0} nodes${resource:+ with $resource} alive, waited for $want; logs in $STATE/*.log"
}

start() {
    local workers=${1:-2}
    [[ "$workers" =~ ^[0-9]+$ ]] || die "WORKERS must be a number, got '$workers'"
    [ -n "$RAY" ] || die "ray not found (activate the project's venv or set RAY=/path/to/ray)"
    alive "$STATE/head.pid" && die "a cluster is already running from $STATE (stop it first)"
    mkdir -p "$STATE"
    STATE=$(cd "$STATE" && pwd)
    if [ ! -s "$STATE/auth_token" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/auth_token")
    fi
    ray_env
    echo "local_cluster: head on $ADDRESS (dashboard http://127.0.0.1:$DASHBOARD_PORT), $workers worker node(s)"
    setsid "$RAY" start --head --block --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus 0 \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --temp-dir "$STATE/tmp" \
        > "$STATE/head.log" 2>&1 < /dev/null &
    echo $! > "$STATE/head.pid"
    wait_for_nodes 1
    for i in $(seq "$workers"); do
        # One at a time: a node must register within Ray's fixed 30 s, which a cold start of several
        # nodes at once on a small machine can miss.
        start_node "$i"
        wait_for_nodes $((i + 1))
    done
    printf 'export RAY_ADDRESS=%s RAY_AUTH_MODE=%s RAY_AUTH_TOKEN_PATH=%s RAY_USAGE_STATS_ENABLED=%s\n' \
        "$ADDRESS" "$RAY_AUTH_MODE" "$RAY_AUTH_TOKEN_PATH" "$RAY_USAGE_STATS_ENABLED" > "$STATE/env"  # as ray_env
    echo "local_cluster: up. For drivers: source $STATE/env && hnet sweep run smoke --address \$RAY_ADDRESS"
}

start_node() {  # worker node $1 (no log monitor: all nodes share the head's log folder, whose monitor forwards it)
    setsid "$RAY" start --block --address "$ADDRESS" --node-ip-address 127.0.0.1 --num-cpus "$WORKER_CPUS" \
        --num-gpus "$WORKER_GPUS" --resources "{\"local_worker_$1\": 1}" --include-log-monitor false \
        >> "$STATE/worker_$1.log" 2>&1 < /dev/null &
    echo $! > "$STATE/worker_$1.pid"
}

start_worker() {  # bring back a killed worker node (a replaced machine), or add one
    local i=${1:?usage: start-worker INDEX}
    [[ "$i" =~ ^[0-9]+$ ]] || die "INDEX must be a number, got '$i'"
    alive "$STATE/head.pid" || die "no cluster is running from $STATE (start it first)"
    alive "$STATE/worker_$i.pid" && die "worker node $i is already running"
    STATE=$(cd "$STATE" && pwd)
    ray_env
    wait_for_nodes 0 "local_worker_$i"  # Ray has marked the killed node dead (after missed health checks)
    start_node "$i"
    wait_for_nodes 1 "local_worker_$i"
    echo "local_cluster: worker node $i up (process group $(cat "$STATE/worker_$i.pid"))"
}

stop_group() {  # SIGTERM a node's process group (Ray drains), SIGKILL what is left after 10 s
    # (the raylet is gone within seconds; the head's GCS server and monitor outlive SIGTERM by 30 s+)
    local pidfile=$1
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 40); do alive "$pidfile" || break; sleep 0.25; done
    kill -KILL -- "-$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
}

stop() {
    [ -d "$STATE" ] || { echo "local_cluster: nothing to stop in $STATE"; return 0; }
    for pidfile in "$STATE"/worker_*.pid; do [ -e "$pidfile" ] && stop_group "$pidfile" & done
    wait
    stop_group "$STATE/head.pid"
    echo "local_cluster: stopped (logs and token kept in $STATE)"
}

status() {
    for pidfile in "$STATE"/head.pid "$STATE"/worker_*.pid; do
        [ -e "$pidfile" ] || continue
        node=$(basename "$pidfile" .pid)
        if alive "$pidfile"; then echo "$node: running (process group $(cat "$pidfile"))"; else echo "$node: dead"; fi
    done
}

kill_worker() {
    local pidfile="$STATE/worker_${1:?usage: kill-worker INDEX}.pid"
    alive "$pidfile" || die "worker node $1 is not running"
    kill -KILL -- "-$(cat "$pidfile")"
    for _ in $(seq 100); do alive "$pidfile" || break; sleep 0.1; done  # SIGKILL is delivered asynchronously
    echo "local_cluster: killed worker node $1 (process group $(cat "$pidfile"))"
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    stop) stop ;;
    status) status ;;
    kill-worker) kill_worker "${2:-}" ;;
    start-worker) start_worker "${2:-}" ;;
    *) echo "usage: $0 start [WORKERS] | stop | status | kill-worker INDEX | start-worker INDEX" >&2; exit 2 ;;
esac
