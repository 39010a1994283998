#!/usr/bin/env bash
# The gossip cluster at scale, in the in-memory simulator (host/src/cluster/sim.rs and
# sim_bench.rs): N nodes with memberlist's LAN timings join, idle, take registrations,
# lose 1% of their nodes, and optionally take a burst of many registrations. Prints one
# `name value` line per figure. Every time is VIRTUAL time (the simulator's clock, not
# this machine's); bytes are wire sizes as the driver frames them (UDP payloads and TCP
# stream messages, no IP/UDP/TCP headers, no encryption), sent per node per second.
#
#   bench/cluster-sim.sh 1000                  # 1,000 nodes, no loss
#   LOSS=0.10 bench/cluster-sim.sh 1000        # 10% loss on every link, throughout
#   SIM_LARGE_REGISTRY=10000 bench/cluster-sim.sh 1000   # plus 10,000 registrations at once
#
# Environment:
#   LOSS                packet loss probability on every link (default 0)
#   SIM_SEED            seed of every random choice (default 1; runs are deterministic)
#   SIM_REG_RATE        registrations per second cluster-wide (default 10)
#   SIM_REG_S           length of the registering phase in virtual seconds (default 30)
#   SIM_LARGE_REGISTRY  registrations made at once after the crash phase (default 0: skip)
#   SIM_TCP_PINGS       1 (default): memberlist's TCP fallback ping; 0 turns it off
#   SIM_FOREIGN         1 (default): also 10 nodes with 0 or 1 memberlist-only node,
#                       relaying on/off
#
# Figures: members_converged_s (all join through node 0 at once; until every node sees
# N alive), gossip_bytes_per_node_s_idle (one push/pull period, empty registry),
# registration_p50_s/_p99_s (a registration on one node until every live node's registry
# holds it), gossip_bytes_per_node_s_registering, failure_detected_p50_s/_p99_s (1% of
# the nodes crash at once; until every survivor declared each dead), withdrawn_p50_s/
# _p99_s (until their registrations left every registry), false_deaths (dead
# declarations of nodes that never crashed, over the whole run), push_pull_bytes_max_*
# (largest push/pull stream; memberlist refuses more than 20 MiB), large_registry_*.
#
# Progress goes to standard error. Runs the ignored test `cluster_sim_bench`. It is built with
# opt-level 2 for the crate (its dependencies are already optimised in the dev
# profile), so a later plain `cargo test` rebuilds the crate's test binary once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SIM_NODES="${1:-1000}"
export CARGO_PROFILE_DEV_OPT_LEVEL=2
cargo test -q --locked -p fluxgate-host --lib cluster::sim_bench::tests::cluster_sim_bench \
    -- --ignored --exact --nocapture \
    | grep -E '^[a-z_0-9.]+ [-0-9.a-zA-Z]+$'
