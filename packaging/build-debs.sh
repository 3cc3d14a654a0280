#!/usr/bin/env bash
# Builds the release binaries and the three .deb packages (sluice-send, sluice-recv,
# sluice-audit) the way a release is built, so that anyone can rebuild the same bytes:
#
# - every path of this machine is remapped (the checkout to /build/sluice, the Cargo home to
#   /build/cargo; Rust through --remap-path-prefix, C through -ffile-prefix-map), and times
#   come from SOURCE_DATE_EPOCH (the commit's time when not set), with Cargo.lock as is;
# - the dependency list is embedded in each binary (`cargo auditable`: a `.dep-v0` section that
#   `rust-audit-info`, `cargo audit bin`, syft or trivy read from the installed binary);
# - each binary's man pages and bash, zsh and fish completions (packaging/manual) go into its
#   package;
# - each binary's CycloneDX SBOM (`cargo cyclonedx`) goes into its package as
#   /usr/share/doc/<package>/sbom/<binary>.cdx.json, made reproducible (no random serial
#   number, SOURCE_DATE_EPOCH as its time, no build path).
#
#   packaging/build-debs.sh        # prints the paths of the .deb files it made
#
# packaging/reproducible.sh runs it twice and compares; packaging/check-debs.sh installs the
# result; packaging/release.sh signs it.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
cargo_home=${CARGO_HOME:-$HOME/.cargo}

# The tools, at the versions this script was written for.
have() { cargo "$1" --version 2>/dev/null | grep -qwF "$2"; }
have deb 3.8.0 || cargo install cargo-deb --locked --version 3.8.0 --quiet
have auditable 0.7.7 || cargo install cargo-auditable --locked --version 0.7.7 --quiet
have cyclonedx 0.5.9 || cargo install cargo-cyclonedx --locked --version 0.5.9 --quiet

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null) ||
    { echo "build-debs.sh: not a git checkout: set SOURCE_DATE_EPOCH" >&2; exit 2; }
fi
export SOURCE_DATE_EPOCH
export RUSTFLAGS="--remap-path-prefix=$src=/build/sluice --remap-path-prefix=$cargo_home=/build/cargo"
prefix_map="-ffile-prefix-map=$src=/build/sluice -ffile-prefix-map=$cargo_home=/build/cargo"
export CFLAGS="${CFLAGS:-} $prefix_map" CXXFLAGS="${CXXFLAGS:-} $prefix_map"

packages=(sluice-sender sluice-receiver sluice-common)
# Only this build's packages are listed and signed: none left from an earlier version.
rm -rf target/debian
# sluice-manual (not packaged) writes the man pages and shell completions from the binaries'
# own command lines; built with them, it adds no crate feature they would not have.
cargo auditable build --release --locked "${packages[@]/#/--package=}" --package=sluice-manual >&2
rm -rf target/release/manual
target/release/sluice-manual target/release/manual >&2
# Compressed as Debian ships man pages (cargo-deb leaves files under target/ as they are); -n:
# no name or time in the header, so the bytes depend on the page alone.
gzip -9n target/release/manual/man/*.1

# One SBOM per binary, then made reproducible.
sbom=target/release/sbom
rm -rf "$sbom" && mkdir -p "$sbom"
cargo cyclonedx --format json --describe binaries --spec-version 1.5 --quiet >&2
for crate in sender receiver common; do
  for file in "$crate"/*_bin.cdx.json; do
    bin=$(basename "$file" _bin.cdx.json)
    python3 packaging/sbom-normalise.py "$src" "$SOURCE_DATE_EPOCH" <"$file" >"$sbom/$bin.cdx.json"
    rm "$file"
  done
done
rm -f tests/*_bin.cdx.json packaging/manual/*_bin.cdx.json

for package in "${packages[@]}"; do
  # Stripped binaries; their debug symbols go to a separate -dbgsym .ddeb, as Debian does.
  if ! out=$(cargo deb -p "$package" --locked --no-build --dbgsym 2>&1); then
    echo "build-debs.sh: cargo deb -p $package: $out" >&2
    exit 1
  fi
  deb=$(tail -n 1 <<<"$out")
  [ -f "$deb" ] || { echo "build-debs.sh: cargo deb -p $package made no package: $out" >&2; exit 1; }
  echo "$deb"
done
