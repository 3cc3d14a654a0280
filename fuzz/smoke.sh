#!/usr/bin/env bash
# Runs every fuzz target listed in fuzz/Cargo.toml for N seconds (default 20), seeded from
# fuzz/seeds/<target>/ when present. Fails on the first crash. Used by .ci/run.
#
# Only the stable toolchain exists on these machines; cargo-fuzz needs nightly flags
# (-Zsanitizer), which RUSTC_BOOTSTRAP=1 unlocks on stable.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
# AddressSanitizer by default: the FEC codec under the protocol crate uses SIMD intrinsics.
sanitizer="${SLUICE_FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^sluice-fuzz$')
cargo fuzz build --sanitizer "$sanitizer" >/dev/null
for t in $targets; do
  corpus="corpus/$t"
  mkdir -p "$corpus"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  printf 'fuzz %-18s %ss ... ' "$t" "$seconds"
  if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "$corpus" "${seeds[@]}" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"/tmp/fuzz-$t.log" 2>&1; then
    echo "CRASH"; tail -40 "/tmp/fuzz-$t.log"; exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "/tmp/fuzz-$t.log" | tail -1)
  echo "ok (${execs:-?} execs)"
done
