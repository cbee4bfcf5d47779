#!/usr/bin/env bash
# Long fuzz campaigns, one target after another at the lowest priority:
#   tests/fuzz/campaign.sh SECONDS [TARGET ...]      (default: every target)
# Corpora grow in $FUZZ_WORK/corpus/<target> (default /tmp/linly-fuzz), logs go to
# $FUZZ_WORK/logs/<target>.log, crashing inputs to $FUZZ_WORK/crashes/<target>-*.
# The last "#N ... cov: C ft: F" line of a log is what tests/fuzz/README.md records.
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:?usage: campaign.sh SECONDS [TARGET ...]}; shift
targets=("$@")
py=${PYTHON:-python}
if [ ${#targets[@]} = 0 ]; then
  mapfile -t targets < <($py -c "import sys; sys.path.insert(0, 'tests/fuzz'); import harnesses; print('\n'.join(harnesses.TARGETS))")
fi
work=${FUZZ_WORK:-/tmp/linly-fuzz}
mkdir -p "$work/logs" "$work/crashes"
status=0
for t in "${targets[@]}"; do
  seeds=tests/fuzz/seeds/$($py -c "import sys; sys.path.insert(0, 'tests/fuzz'); import harnesses; print(harnesses.SEED_DIRS.get('$t', '$t'))")
  mkdir -p "$work/corpus/$t"
  echo "== $t: ${secs}s $(date -Is)"
  nice -n 19 $py tests/fuzz/fuzz.py "$t" "$work/corpus/$t" "$seeds" -max_total_time="$secs" -timeout=30 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$work/crashes/$t-" > "$work/logs/$t.log" 2>&1
  rc=$?
  grep -E "^#[0-9]+" "$work/logs/$t.log" | tail -1
  grep -E "^stat::number_of_executed_units|Done [0-9]+ runs" "$work/logs/$t.log"
  if [ $rc != 0 ]; then echo "!! $t exited $rc: see $work/logs/$t.log"; status=1; fi
done
exit $status
