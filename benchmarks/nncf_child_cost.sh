#!/bin/bash
# What running NNCF's quantize in a child process costs: wall seconds of `vmlp-deploy quantize --backend openvino`
# with NNCF in-process (a checkout of aff2733, the last commit before the change) and in a child (this checkout),
# interleaved round by round so machine noise hits both alike. Quote medians.
#
#   git worktree add /tmp/before aff2733
#   bash benchmarks/nncf_child_cost.sh /tmp/before s2mlpv2 5 --tiny > benchmarks/results/nncf_child_cost_tiny_zen5.txt
#   bash benchmarks/nncf_child_cost.sh /tmp/before s2mlpv2 3 > benchmarks/results/nncf_child_cost_small_zen5.txt
set -euo pipefail
before=$1 model=$2 rounds=$3
shift 3
after=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vmlp-deploy export --model "$model" "$@" -o "$work/export" > /dev/null
for _ in $(seq "$rounds"); do
  for side in before after; do
    if [ "$side" = before ]; then tree=$before; else tree=$after; fi
    start=$(date +%s.%N)
    PYTHONPATH=$tree python -P -m vmlp_deploy quantize "$work/export" --backend openvino -o "$work/q-$side" --overwrite \
      > /dev/null
    echo "$model $side $(echo "$(date +%s.%N) - $start" | bc)"
  done
done
