#!/usr/bin/env bash
# Builds the three .deb packages as a release is built (packaging/build-debs.sh: sluice-send,
# sluice-recv, and sluice-audit, which both depend on), installs them on this machine with
# dpkg -i, and checks what an operator would: the binaries run and list what is inside them,
# each package carries its SBOMs, man pages and shell completions, systemd accepts the
# installed units, the sluice user and the directories exist with the right owners and modes.
# Then removes them (purge) and the user, leaving the machine as it was. Needs root. .ci/run calls it.
#
#   packaging/check-debs.sh            # build, install, check, remove
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "check-debs.sh: needs root (dpkg -i)" >&2; exit 1; }
# systemd-analyze for the unit checks, adduser for the postinst (and the cleanup).
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

had_user=no
getent passwd sluice >/dev/null && had_user=yes

mapfile -t debs < <(packaging/build-debs.sh)
[ ${#debs[@]} = 3 ] || { echo "check-debs.sh: build-debs.sh made ${#debs[@]} packages" >&2; exit 1; }

cleanup() {
  dpkg --purge sluice-send sluice-recv sluice-audit >/dev/null 2>&1 || true
  if [ "$had_user" = no ] && getent passwd sluice >/dev/null; then
    deluser --system sluice >/dev/null 2>&1 || true
    delgroup --system sluice >/dev/null 2>&1 || true
  fi
  rmdir /srv/sluice/outbox /srv/sluice/in /srv/sluice/quarantine /srv/sluice 2>/dev/null || true
}
trap cleanup EXIT

DEBIAN_FRONTEND=noninteractive dpkg -i "${debs[@]}" >/dev/null

fail() { echo "check-debs.sh: $*" >&2; exit 1; }
/usr/bin/sluice-send --version | grep -q '^sluice-send ' || fail "sluice-send --version"
/usr/bin/sluice-recv --version | grep -q '^sluice-recv ' || fail "sluice-recv --version"
/usr/bin/sluice-approve --version | grep -q '^sluice-approve ' || fail "sluice-approve --version"
/usr/bin/sluice-inspect --version | grep -q '^sluice-inspect ' || fail "sluice-inspect --version"
/usr/bin/sluice-audit --version | grep -q '^sluice-audit ' || fail "sluice-audit --version"
# What is inside each installed binary, as an auditor reads it: the dependency list cargo
# auditable embedded (a zlib-compressed JSON in the .dep-v0 section), and the SBOM shipped
# beside it; both must name the crates the binary is built from.
for pair in sluice-send:sluice-send sluice-approve:sluice-send sluice-inspect:sluice-send \
            sluice-recv:sluice-recv sluice-audit:sluice-audit; do
  bin=${pair%%:*} package=${pair##*:}
  deps=$(python3 - "/usr/bin/$bin" <<'PY'
import json, subprocess, sys, tempfile, zlib
with tempfile.NamedTemporaryFile() as section:
    subprocess.run(["objcopy", "--dump-section", ".dep-v0=" + section.name, sys.argv[1],
                    "/dev/null"], check=True)
    packages = json.loads(zlib.decompress(open(section.name, "rb").read()))["packages"]
print(" ".join(sorted(p["name"] for p in packages)))
PY
) || fail "$bin: no dependency list embedded (.dep-v0)"
  sbom=/usr/share/doc/$package/sbom/$bin.cdx.json
  [ -f "$sbom" ] || fail "$bin: no SBOM at $sbom"
  for crate in sluice-protocol sluice-common tokio sha2; do
    grep -qw "$crate" <<<"$deps" || fail "$bin: $crate not in its embedded dependency list"
  done
  # (sluice-audit's own crate is sluice-common: the SBOM's subject, not a component of it.)
  for crate in sluice-protocol tokio sha2; do
    grep -q "\"name\": \"$crate\"" "$sbom" || fail "$bin: $crate not in $sbom"
  done
done
for unit in sluice-send-watch.service sluice-recv.service; do
  out=$(systemd-analyze verify "/lib/systemd/system/$unit" 2>&1) || fail "verify $unit: $out"
  [ -z "$out" ] || fail "verify $unit: $out"
  systemd-analyze security --offline=true "/lib/systemd/system/$unit" | tail -n 1
done
# Each binary's man pages (compressed, as Debian ships them) and shell completions, and bash
# completing an option of a subcommand (the words typed, the option expected).
for words in "sluice-send watch --outb:--outbox" "sluice-send watch --approval:--approval-policy" \
             "sluice-send keygen --he:--help" "sluice-recv release --rea:--reason" \
             "sluice-audit verify --agai:--against" "sluice-approve check --pol:--policy" \
             "sluice-inspect --model-k:--model-key"; do
  typed=${words%%:*} expected=${words##*:} bin=${typed%% *}
  page=/usr/share/man/man1/$bin.1.gz
  zcat "$page" 2>/dev/null | grep -q "^\.TH $bin 1 " || fail "$bin: no man page at $page"
  [ -s "/usr/share/zsh/vendor-completions/_$bin" ] || fail "$bin: no zsh completion"
  [ -s "/usr/share/fish/vendor_completions.d/$bin.fish" ] || fail "$bin: no fish completion"
  got=$(bash -c 'source "/usr/share/bash-completion/completions/$1"; read -ra COMP_WORDS <<<"$2"
                 COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
                 "_${1//-/__}" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
                 echo "${COMPREPLY[*]}"' _ "$bin" "$typed") || fail "$bin: bash completion: $got"
  [ "$got" = "$expected" ] || fail "bash completes \"$typed\" as \"$got\", not $expected"
done
for page in sluice-send-watch sluice-send-status sluice-send-keygen sluice-recv-release \
            sluice-approve-sign sluice-audit-show; do
  [ -f "/usr/share/man/man1/$page.1.gz" ] || fail "no man page $page(1)"
done
getent passwd sluice >/dev/null || fail "no sluice user"
check_mode() { # path owner:group mode
  got=$(stat -c '%U:%G %a' "$1")
  [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
}
check_mode /etc/sluice root:sluice 750
check_mode /etc/sluice/send-watch.toml root:sluice 640
check_mode /etc/sluice/recv.toml root:sluice 640
check_mode /etc/sluice/policy.toml root:sluice 640
check_mode /srv/sluice/quarantine sluice:sluice 700
check_mode /srv/sluice/outbox sluice:sluice 3770
check_mode /srv/sluice/in sluice:sluice 755
# The installed example configurations hold only options the daemons know: they stop at the
# first key file (not placed yet), exit status 2.
for cmd in "sluice-recv --config /etc/sluice/recv.toml" \
           "sluice-send watch --config /etc/sluice/send-watch.toml"; do
  set +e; out=$(runuser -u sluice -- /usr/bin/$cmd 2>&1); status=$?; set -e
  [ "$status" = 2 ] && grep -q '/etc/sluice/' <<<"$out" || fail "$cmd: exit $status: $out"
done
for deb in "${debs[@]}"; do
  for file in "$deb" "$(dirname "$deb")/$(basename "$deb" | sed 's/_/-dbgsym_/; s/\.deb$/.ddeb/')"; do
    if [ -f "$file" ]; then printf '%s: %s bytes\n' "$(basename "$file")" "$(stat -c %s "$file")"; fi
  done
done
echo "check-debs.sh: the three packages install and check out"
