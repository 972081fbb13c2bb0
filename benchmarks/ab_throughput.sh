#!/usr/bin/env bash
# Throughput of two commits in one sitting: the SimCLR ceiling and real step of benchmarks/throughput.py
# (tiny convnet, batch 256, CPU unless DEVICE is set) alternating the two checkouts round by round, half
# of the rounds A-first and half B-first, so that the machine's load hits both alike; then the means and
# the paired difference with its standard error. For a change that must not cost speed (issue 18's rule).
#   usage: benchmarks/ab_throughput.sh REV_A REV_B [ROUNDS (default 10)]
# Each revision is checked out into a temporary git worktree (removed at the end); data from
# $SELFSUP_DATA (default data/, e.g. a copy of ../shared/data/cifar10.npz).
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1"; b="$2"; rounds="${3:-10}"
data="$(cd "${SELFSUP_DATA:-data}" && pwd)"; python="${PYTHON:-$PWD/.venv/bin/python}"; device="${DEVICE:-cpu}"
tmp="$(mktemp -d)"; trap 'git worktree remove --force "$tmp/a" 2>/dev/null; git worktree remove --force "$tmp/b" 2>/dev/null; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/a" "$a"; git worktree add -q --detach "$tmp/b" "$b"
export OMP_WAIT_POLICY=PASSIVE
one() {  # prints "<side> <ceiling> <selfsup>"
  local out
  out=$(cd "$tmp/$1" && PYTHONPATH="$tmp/$1" "$python" benchmarks/throughput.py --device "$device" --backbone tiny \
        --batch-size 256 --steps 10 --rounds 1 --warmup 2 --no-lightly --data-dir "$data" 2>&1)
  echo "$1 $(echo "$out" | awk '/^ +ceiling:/ {c=$2} /^ +selfsup:/ {s=$2} END {print c, s}')"
}
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then one a; one b; else one b; one a; fi
done | tee "$tmp/rounds.txt"
"$python" - "$tmp/rounds.txt" "$a" "$b" <<'PY'
import math, statistics as st, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
side = {k: [(float(c), float(s)) for name, c, s in rows if name == k] for k in "ab"}
for i, what in ((0, "ceiling"), (1, "selfsup")):
    a, b = [x[i] for x in side["a"]], [x[i] for x in side["b"]]
    d = [x - y for x, y in zip(b, a)]
    print(f"{what}: {sys.argv[2]} {st.mean(a):.0f} (sd {st.stdev(a):.0f}), {sys.argv[3]} {st.mean(b):.0f} (sd {st.stdev(b):.0f}) "
          f"images/s; B/A {st.mean(b) / st.mean(a):.3f}; paired B-A {st.mean(d):+.1f} +- {st.stdev(d) / math.sqrt(len(d)):.1f} (SE), "
          f"{sum(x > 0 for x in d)} of {len(d)} rounds B faster")
PY
