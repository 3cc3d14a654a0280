#!/usr/bin/env bash
# Makes a release with a throwaway minisign key (packaging/release.sh) and verifies it the way
# README "Verifying what you install" tells an operator to: the signature of SHA256SUMS with
# the release's public key, then every file against SHA256SUMS. A file changed after signing,
# or a signature by another key, must fail. .ci/run calls it after check-debs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "check-release.sh: $*" >&2; exit 1; }

minisign -G -W -p "$work/release.pub" -s "$work/release.key" >/dev/null
minisign -G -W -p "$work/other.pub" -s "$work/other.key" >/dev/null
packaging/release.sh -s "$work/release.key" -o "$work/files" >/dev/null

# What README says to run.
(cd "$work/files" && minisign -Vm SHA256SUMS -p "$work/release.pub" >/dev/null &&
  sha256sum -c --strict SHA256SUMS >/dev/null) || fail "a fresh release does not verify"
minisign -Vm "$work/files/SHA256SUMS" -p "$work/release.pub" | grep -q "commit $(git rev-parse HEAD)" ||
  fail "the trusted comment does not name the commit"
ls "$work/files"/*.deb "$work/files"/*.cdx.json >/dev/null || fail "no packages or SBOMs"

# Tampered: a package changed after signing; the list re-signed by another key.
cp -r "$work/files" "$work/tampered"
deb=$(ls "$work/tampered"/sluice-recv_*.deb)
printf 'x' >>"$deb"
(cd "$work/tampered" && ! sha256sum -c --strict --quiet SHA256SUMS >/dev/null 2>&1) ||
  fail "a changed package passed sha256sum -c"
# Swapped: another package under the name, its hash rewritten in the list, not re-signed.
cp -r "$work/files" "$work/swapped"
deb=$(ls "$work/swapped"/sluice-send_*.deb)
cp "$work/files"/sluice-audit_*.deb "$deb"
(cd "$work/swapped" && sed -i "s/^[0-9a-f]\{64\}  $(basename "$deb")\$/$(sha256sum <"$deb" | cut -c1-64)  $(basename "$deb")/" SHA256SUMS &&
  sha256sum -c --strict --quiet SHA256SUMS >/dev/null) || fail "the swapped package's hash was not rewritten"
! minisign -Vm "$work/swapped/SHA256SUMS" -p "$work/release.pub" >/dev/null 2>&1 ||
  fail "a list with a rewritten hash verified"
minisign -S -s "$work/other.key" -m "$work/tampered/SHA256SUMS" >/dev/null
! minisign -Vm "$work/tampered/SHA256SUMS" -p "$work/release.pub" >/dev/null 2>&1 ||
  fail "a list signed by another key verified"
echo "check-release.sh: release signed and verified; tampering caught"
