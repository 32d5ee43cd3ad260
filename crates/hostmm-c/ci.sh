#!/usr/bin/env bash
# The C side of libmmnotify, as a C user builds it: the library and its mmnotify.pc (one cargo
# command), each C program with one cc command through pkg-config, then the runs:
#   - examples/c/hello.c, the README's example, built with the README's two commands;
#   - examples/c/race.c with the uffd and the bracketed source: stale=0, no leak;
#   - the broken variant (bracketed source, plain mremap) must report stale lookups;
#   - the libfabric import monitor test (examples/c/libfabric_monitor.c) with both sources.
# Bounded: about a minute on two cores (most of it the release build). MMN_RACE_ROUNDS sets the rounds per source.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${MMN_RACE_ROUNDS:-2000}
target=${CARGO_TARGET_DIR:-target}
# The README's two commands, verbatim but for the example's path.
cargo build --release -p hostmm-c
libdir="$target/release"
export PKG_CONFIG_PATH="$libdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
out="$target/c-examples"
mkdir -p "$out"
cc examples/c/hello.c $(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs mmnotify) -o "$out/hello"
"$out/hello"

cc -std=c11 -Wall -Wextra -Werror -O2 examples/c/race.c \
    $(pkg-config --cflags --libs mmnotify) -pthread -o "$out/race"

for source in uffd bracketed; do
    if [ "$source" = uffd ] && ! "$out/race" uffd 1 >/dev/null 2>"$out/uffd-probe.err"; then
        if grep -q "userfaultfd" "$out/uffd-probe.err"; then
            echo "race uffd: skipped, userfaultfd refused here: $(cat "$out/uffd-probe.err")"
            continue
        fi
    fi
    "$out/race" "$source" "$rounds"
done

# The check has teeth: with the mutator's remaps hidden from the bracketed source, lookups
# must come back stale (exit 1), not pass.
if broken=$("$out/race" bracketed 200 --unbracketed 2>/dev/null); then
    echo "race --unbracketed passed: the C race cannot detect a stale registration" >&2
    exit 1
fi
echo "broken variant caught: $broken"


# The libfabric import monitor (crates/hostmm-c/c/mmn_fabric.c) against the distribution's
# libfabric: the import, notify for every invalidation of a subscribed range, and which
# providers drive libfabric's registration cache here.
if pkg-config --exists libfabric; then
    cc -std=c11 -Wall -Wextra -Werror -O2 -Icrates/hostmm-c/c \
        crates/hostmm-c/c/mmn_fabric.c examples/c/libfabric_monitor.c \
        $(pkg-config --cflags --libs mmnotify libfabric) -pthread -o "$out/libfabric_monitor"
    for source in uffd bracketed; do
        if [ "$source" = uffd ] && grep -q "userfaultfd" "$out/uffd-probe.err" 2>/dev/null; then
            continue
        fi
        "$out/libfabric_monitor" "$source"
    done
else
    echo "libfabric_monitor: skipped, libfabric-dev is not installed" >&2
    if [ -n "${CI:-}" ]; then
        echo "CI installs libfabric-dev (.ci/run): it is missing" >&2
        exit 1
    fi
fi
