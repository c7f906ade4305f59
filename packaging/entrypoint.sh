#!/bin/sh
# Container entrypoint for a workspace image: start the Boundary agent as root, wait until it
# listens, then run the workspace's own command as the workspace user. The user can then wrap
# AI agents with `boundary run -- claude` (no privileges needed).
#
# The container needs: cgroup v2 (a writable /sys/fs/cgroup, i.e. a private cgroup namespace
# with delegation, or --privileged), bpffs (mounted by the agent if missing), and for the
# agent CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_KILL, CAP_SYS_PTRACE and CAP_SYS_ADMIN. See the
# README, "A workspace image". The `boundary` package installs this
# script as /usr/sbin/boundary-entrypoint:
#
#   ENTRYPOINT ["/usr/sbin/boundary-entrypoint"]
#   CMD ["sleep", "infinity"]
#
# Environment: BOUNDARY_CONFIG (default /etc/boundary/config.yaml), WORKSPACE_USER (default
# coder), BOUNDARY_SOCKET (default /run/boundary/agent.sock).
set -eu

config="${BOUNDARY_CONFIG:-/etc/boundary/config.yaml}"
socket="${BOUNDARY_SOCKET:-/run/boundary/agent.sock}"
user="${WORKSPACE_USER:-coder}"

if [ "$(id -u)" -ne 0 ]; then
    echo "boundary-entrypoint: must start as root (the agent loads eBPF programs)" >&2
    exit 125
fi

# Refuse to start the workspace unconfined: a bad policy is an error, not a silent bypass.
boundary validate "$config"

# A socket left by an earlier start (a restarted container keeps /run) would pass the wait
# below before the new agent listens.
rm -f "$socket"
boundary agent --config "$config" --socket "$socket" &
agent=$!

i=0
while [ ! -S "$socket" ]; do
    if ! kill -0 "$agent" 2>/dev/null; then
        echo "boundary-entrypoint: the agent exited; not starting the workspace" >&2
        exit 125
    fi
    i=$((i + 1))
    if [ "$i" -gt 200 ]; then
        echo "boundary-entrypoint: the agent did not start listening on $socket" >&2
        exit 125
    fi
    sleep 0.05
done

# The workspace's own processes run as the user, never as root.
if [ "$#" -eq 0 ]; then
    set -- sleep infinity
fi
exec setpriv --reuid="$user" --regid="$user" --init-groups --reset-env -- "$@"
