#!/usr/bin/env bash
# cluster-tests.sh PKGS...: make test's cluster tests, and beside them what
# the later steps need built.
#
# The cluster packages (./helm, ./internal/kubenode) run one at a time
# (go test $TEST_FLAGS -p 1 PKGS). They wait on rollouts, probes and scaling
# windows much of the time: on the 2-core VM the machine was 55% idle during
# TestControlLoop and 35% during the real-node tests (vmstat, 2026-12-07).
# So while they run, a second process group builds, at idle CPU priority
# (SCHED_IDLE, `chrt --idle 0`: it gets only the CPU the tests leave, so their
# timings do not move), what make test needs next:
#   1. Jaeger (scripts/build-jaeger.sh), which only the tracing tests use;
#   2. go vet ./... (make check's second half; gofmt ran before);
#   3. the other packages' race test binaries, the Go-decoder pass's and
#      one fuzz binary per fuzz package, each with `-exec /bin/true`: the
#      same flags as the real runs, which then find their packages compiled.
# On a warm machine each of these is a cache hit and a link. On a cold one
# they are about 10 minutes that no longer add to make test's time.
#
# Ownership: this script starts the build group and is the only one to end
# it. It waits for it (at most PREBUILD_WAIT, 40 minutes) after the tests; it
# kills the whole group when the tests fail or the script exits early. The
# group's output goes to a log that is printed when it fails.
#
# The caller (the Makefile's unit target) sets GO, TEST_FLAGS, DECODER_FLAGS,
# DECODER_PKGS and FUZZ_TARGETS, the flags of its own later go test runs.
#
# cluster-tests.sh --prebuild: the build group's steps alone (what the
# background runs).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${GO:=go}" "${TEST_FLAGS:?}" "${DECODER_FLAGS:?}" "${DECODER_PKGS:?}" "${FUZZ_TARGETS:?}"

if [ "${1:-}" = --prebuild ]; then
  set -e
  step() { echo "prebuild: $* ($(date +%T))"; }
  step "Jaeger"
  scripts/build-jaeger.sh .deps/tools
  step "go vet ./..."
  $GO vet ./...
  step "the other packages' test binaries"
  # shellcheck disable=SC2046,SC2086 # word splitting intended: flags, package lists
  $GO test $TEST_FLAGS -exec /bin/true $($GO list ./... | grep -v -e '/helm$' -e '/internal/kubenode$')
  step "the Go-decoder pass's test binaries"
  # shellcheck disable=SC2086
  $GO test $DECODER_FLAGS -exec /bin/true $DECODER_PKGS
  step "fuzz binaries"
  declare -A seen=()
  for t in $FUZZ_TARGETS; do
    pkg=${t%%:*}
    [ -n "${seen[$pkg]:-}" ] && continue
    seen[$pkg]=1
    $GO test -run '^$' -fuzz "^${t#*:}\$" -fuzztime 1x -exec /bin/true "./$pkg"
  done
  step "done"
  exit 0
fi

[ $# -gt 0 ] || { echo "usage: cluster-tests.sh PKGS..." >&2; exit 2; }
log=$(mktemp "${TMPDIR:-/tmp}/batchgate-prebuild.XXXXXX")
# setsid: a process group of its own (its leader's pid is $bg), so that one
# kill reaches go and every compiler it started.
setsid chrt --idle 0 "$0" --prebuild >"$log" 2>&1 &
bg=$!
stop_bg() { kill -- -"$bg" 2>/dev/null; wait "$bg" 2>/dev/null; }
trap stop_bg EXIT
echo "cluster-tests: building Jaeger, go vet and the other test binaries at idle priority beside the cluster tests (log: $log)"

# shellcheck disable=SC2086
$GO test $TEST_FLAGS -p 1 "$@"
rc=$?
if [ $rc != 0 ]; then
  echo "cluster-tests: the cluster tests failed; stopping the builds beside them" >&2
  exit $rc
fi

# Every wait has a deadline: the builds get PREBUILD_WAIT seconds after the
# tests (a cold machine's Jaeger build alone took 6 minutes at full CPU).
limit=${PREBUILD_WAIT:-2400}
waited=0
while kill -0 "$bg" 2>/dev/null && [ $waited -lt "$limit" ]; do
  sleep 1
  waited=$((waited + 1))
done
if kill -0 "$bg" 2>/dev/null; then
  echo "cluster-tests: the builds beside the tests did not finish ${limit}s after them; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
trap - EXIT
wait "$bg"
brc=$?
grep '^prebuild:' "$log" | sed 's/^/cluster-tests: /'
if [ $brc != 0 ]; then
  echo "cluster-tests: the builds beside the tests failed (rc $brc); last lines of $log:" >&2
  tail -n 60 "$log" >&2
  exit $brc
fi
echo "cluster-tests: the builds beside the tests finished ${waited}s after them"
rm -f "$log"
