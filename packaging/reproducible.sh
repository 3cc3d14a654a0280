#!/usr/bin/env bash
# Checks that a release build is reproducible: the commit is built twice with
# packaging/build-debs.sh — here and again
# from a copy of the commit in another directory, with its own target directory, later — and
# every release binary, SBOM, .deb and -dbgsym .ddeb must be byte-identical. Before comparing,
# the binaries are searched for this machine's paths (the checkout, the Cargo home): a
# build-time path that leaks fails here even if both builds leaked it alike. .ci/run calls it.
#
#   packaging/reproducible.sh          # exit 0: identical; 1: a difference, named
set -euo pipefail
cd "$(dirname "$0")/.."
# The physical path: a checkout reached through a symlink is compiled under this one.
src=$(pwd -P)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}

git diff --quiet HEAD -- . ':!target' ||
  { echo "reproducible.sh: the checkout has uncommitted changes: commit them first" >&2; exit 2; }
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
export SOURCE_DATE_EPOCH

binaries=(sluice-send sluice-approve sluice-inspect sluice-recv sluice-audit)
# Always built here first (cheap when nothing changed): packages left from another commit
# must never be what is compared.
packaging/build-debs.sh >/dev/null

# The second build: the same commit, another directory (another path length), another time.
copy=$(mktemp -d /tmp/sluice-rebuild.XXXXXX)
# Removed when the builds match; kept to be examined when they do not.
status=0
trap 'if [ "$status" = 0 ]; then rm -rf "$copy"; else echo "reproducible.sh: the second build is kept in $copy" >&2; fi' EXIT
mkdir "$copy/elsewhere"
git archive HEAD | tar -x -C "$copy/elsewhere"
# Its own temporary directory too: nothing a build writes there may reach the output.
mkdir "$copy/tmp"
(cd "$copy/elsewhere" && TMPDIR="$copy/tmp" packaging/build-debs.sh >/dev/null)

for bin in "${binaries[@]}"; do
  # The toolchain's own paths are remapped by rustc; $HOME/ is checked for anything else.
  for path in "$src" "$copy/elsewhere" "$cargo_home" "$rustup_home/toolchains" "$HOME/"; do
    for tree in "$src" "$copy/elsewhere"; do
      if grep -a -q -F "$path" "$tree/target/release/$bin"; then
        echo "reproducible.sh: $tree/target/release/$bin holds the build path $path" >&2
        status=1
      fi
    done
  done
done
compare() { # relative path
  if cmp -s "$src/$1" "$copy/elsewhere/$1"; then
    printf 'identical  %s  %s\n' "$(sha256sum <"$src/$1" | cut -c1-16)" "$1"
  else
    printf 'DIFFERENT  %s\n' "$1"; status=1
  fi
}
for bin in "${binaries[@]}"; do
  compare "target/release/$bin"
  compare "target/release/sbom/$bin.cdx.json"
done
for file in target/debian/*.deb target/debian/*.ddeb; do
  compare "$file"
done
exit "$status"
