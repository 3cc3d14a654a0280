#!/usr/bin/env bash
# Makes a release of this commit in one directory: the .deb packages and their -dbgsym .ddeb
# (packaging/build-debs.sh: reproducible, dependency lists embedded), each binary's CycloneDX
# SBOM, a SHA256SUMS over them, and SHA256SUMS.minisig — its minisign signature, whose trusted
# comment names the version and the commit. README "Verifying what you install" says how an
# operator checks them before installing.
#
#   packaging/release.sh -s release.key [-o DIR]     # DIR: target/release-files by default
#
# minisign asks for the key's password unless it was made without one (-W).
set -euo pipefail
cd "$(dirname "$0")/.."
key="" out=target/release-files
while getopts "s:o:" opt; do
  case $opt in
    s) key=$OPTARG ;;
    o) out=$OPTARG ;;
    *) echo "usage: packaging/release.sh -s release.key [-o DIR]" >&2; exit 2 ;;
  esac
done
[ -n "$key" ] || { echo "usage: packaging/release.sh -s release.key [-o DIR]" >&2; exit 2; }
[ -f "$key" ] || { echo "release.sh: no secret key at $key (minisign -G makes one)" >&2; exit 2; }
command -v minisign >/dev/null 2>&1 ||
  { echo "release.sh: needs minisign (apt-get install minisign)" >&2; exit 2; }
git diff --quiet HEAD -- . ':!target' ||
  { echo "release.sh: the checkout has uncommitted changes: a release is a commit" >&2; exit 2; }
[ -z "$(git ls-files --others --exclude-standard -- . ':!target')" ] ||
  { echo "release.sh: the checkout has untracked files (they could change the build): commit or remove them" >&2; exit 2; }
# The commit's time, for the build and for the trusted comment alike (one set by hand would
# make packages nobody can rebuild from the commit).
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
export SOURCE_DATE_EPOCH

# A failed build stops here (set -e sees the substitution's status).
built=$(packaging/build-debs.sh)
mapfile -t debs <<<"$built"
[ ${#debs[@]} = 3 ] || { echo "release.sh: build-debs.sh made ${#debs[@]} packages" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out"
for deb in "${debs[@]}"; do
  cp "$deb" "$out/"
  ddeb="$(dirname "$deb")/$(basename "$deb" | sed 's/_/-dbgsym_/; s/\.deb$/.ddeb/')"
  [ -f "$ddeb" ] || { echo "release.sh: no debug symbols package $ddeb beside $deb" >&2; exit 1; }
  cp "$ddeb" "$out/"
done
cp target/release/sbom/*.cdx.json "$out/"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
(cd "$out" && sha256sum -- *.deb *.ddeb *.cdx.json >SHA256SUMS)
minisign -S -s "$key" -m "$out/SHA256SUMS" \
  -t "sluice $version, commit $(git rev-parse HEAD), $(rustc --version), SOURCE_DATE_EPOCH $SOURCE_DATE_EPOCH"
ls -l "$out"
