# Sourced by the probes of this folder: a veth pair between two namespaces of their own,
# 10.77.0.1 (server, fabric0) and 10.77.0.2 (client, cli0), each side's received packets
# steered to its own core as bench/http's RPS=1 pinned mode does (client CPU 1, server CPU 0),
# removed again when the probe exits.
S=bfp-srv; C=bfp-cli
cleanup() { ip netns del $S 2>/dev/null; ip netns del $C 2>/dev/null; }
trap cleanup EXIT
cleanup
ip netns add $S; ip netns add $C
ip link add fabric0 netns $S type veth peer name cli0 netns $C
ip -n $S addr add 10.77.0.1/24 dev fabric0; ip -n $S link set fabric0 up; ip -n $S link set lo up
ip -n $C addr add 10.77.0.2/24 dev cli0; ip -n $C link set cli0 up; ip -n $C link set lo up
ip netns exec $C sh -c 'echo 2 > /sys/class/net/cli0/queues/rx-0/rps_cpus'
ip netns exec $S sh -c 'echo 1 > /sys/class/net/fabric0/queues/rx-0/rps_cpus'
