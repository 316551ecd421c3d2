#!/usr/bin/env bash
# Fingerprints must not depend on dependency versions or features:
# `./scripts/fingerprint-compat.sh`.
#
# A `v2:` fingerprint is SHA-256 over RFC 8785 bytes that idempotent-core
# writes itself, and stored records are compared with it, so the bytes must be
# the same whatever serde, serde_json, ryu-js and sha2 a build resolves and
# whatever serde_json features another crate of the build turns on. This
# script runs idempotent-core's fingerprint tests (the `fingerprint` unit
# tests, `fingerprint_props` and the golden vectors of `jcs_vectors`), which
# pin exact bytes and digests, in two phases:
#
# 1. feature matrix, on this repository's Cargo.lock: with serde_json's
#    `arbitrary_precision` (numbers serialize as text), `preserve_order`
#    (maps keep insertion order), and both;
# 2. lowest versions: in a copy of the working tree (tracked and untracked,
#    not ignored, files) reduced to an idempotent-core-only workspace, each
#    of serde, serde_json, ryu-js and sha2 is required at exactly the minimum
#    that idempotent-core's manifest allows (serde_derive follows serde),
#    everything else resolves as usual, and the tests run with default
#    features and with `arbitrary_precision`. The minimums are read from the
#    manifests, so raising one there moves this job with it.
#
# Builds go to target/compat and target/compat-min, so the main build is left
# alone and repeated runs are incremental. Phase 2 needs crates.io (it
# re-resolves the copy's lockfile). Any failure, a minimum that does not
# resolve, or a test binary that runs no test exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '== %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# The crates whose code can change the bytes of a fingerprint. serde_derive
# is checked at serde's minimum; serde_core and digest are only shown.
pinned=(serde serde_json ryu-js sha2)
shown='serde|serde_core|serde_derive|serde_json|ryu-js|sha2|digest'

compat_target="$root/target/compat"
min_target="$root/target/compat-min"
# The copy lives at a fixed path so that its build artifacts are reused
# (and replaced, not piled up) from one run to the next.
copy="$min_target/workspace"
outfile="$min_target/last-test-output.txt"

cleanup() { rm -rf "$copy" "$outfile"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in fingerprint_props jcs_vectors; do
  [ -f "idempotent-core/tests/$t.rs" ] || [ -f "idempotent-core/tests/$t/main.rs" ] \
    || die "idempotent-core has no test target $t"
done

# Runs `cargo test` and fails when any test binary ran no test (a filter
# that matches nothing, a renamed target); ignored tests are run too.
run_tests() {
  log "cargo test $*"
  mkdir -p "$(dirname "$outfile")"
  if ! cargo test "$@" 2>&1 | tee "$outfile"; then
    die "cargo test $*"
  fi
  if grep -q '^running 0 tests' "$outfile"; then
    die "a test binary ran no test: cargo test $*"
  fi
}

fingerprint_tests() {
  run_tests -p idempotent-core --locked "$@" --lib -- fingerprint --include-ignored
  run_tests -p idempotent-core --locked "$@" --test fingerprint_props --test jcs_vectors -- --include-ignored
}

# `name version` of every package that idempotent-core's build and tests use.
resolved() {
  cargo tree --locked -p idempotent-core -e normal,build,dev --prefix none -f '{p}' "$@" \
    | awk '{ print $1, $2 }' | sort -u
}

show_versions() {
  log "resolved versions ($1):"
  resolved "${@:2}" | grep -E "^($shown) " | sed 's/^/     /' >&2
}

# --- phase 1: feature matrix ------------------------------------------------

export CARGO_TARGET_DIR="$compat_target"
phase1_start=$SECONDS
show_versions "Cargo.lock"
for features in \
  serde_json/arbitrary_precision \
  serde_json/preserve_order \
  serde_json/arbitrary_precision,serde_json/preserve_order; do
  log "phase 1: --features $features"
  fingerprint_tests --features "$features"
done
phase1_time=$((SECONDS - phase1_start))
log "phase 1 (feature matrix) passed in ${phase1_time}s"

# --- phase 2: lowest versions -----------------------------------------------

phase2_start=$SECONDS

# The minimums: idempotent-core's requirements (workspace ones included),
# each of the form `^x.y.z`.
declare -A min=()
while read -r name version; do
  min[$name]=$version
done < <(cargo metadata --locked --no-deps --format-version 1 | python3 -c '
import json, re, sys
pinned = sys.argv[1:]
meta = json.load(sys.stdin)
pkg = next(p for p in meta["packages"] if p["name"] == "idempotent-core")
mins = {}
for dep in pkg["dependencies"]:
    if dep["name"] not in pinned:
        continue
    m = re.fullmatch(r"\^?(\d+\.\d+\.\d+)", dep["req"])
    name, req = dep["name"], dep["req"]
    if not m:
        sys.exit(f"{name}: requirement {req} is not ^x.y.z")
    if mins.setdefault(name, m.group(1)) != m.group(1):
        sys.exit(f"{name}: requirements ^{mins[name]} and {req} differ")
for name in pinned:
    if name not in mins:
        sys.exit(f"idempotent-core does not depend on {name}")
    print(name, mins[name])
' "${pinned[@]}")
[ "${#min[@]}" -eq "${#pinned[@]}" ] || die "could not read the minimums from the manifests"
min[serde_derive]=${min[serde]}
log "phase 2: minimums from the manifests: $(for n in "${pinned[@]}" serde_derive; do printf '%s %s, ' "$n" "${min[$n]}"; done | sed 's/, $//')"

log "phase 2: copying the working tree to $copy"
rm -rf "$copy"
mkdir -p "$copy"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$copy"

# A workspace of idempotent-core alone: the facade's dev-dependencies
# (criterion, trybuild, ...) play no part in fingerprints and may need newer
# crates. The workspace tables stay as they are, except the members.
awk '
  /^[[:space:]]*\[/ {
    section = $0; gsub(/[[:space:]]/, "", section)
    keep = (section ~ /^\[\[?(workspace|patch|profile)[].]/); skip = 0
  }
  skip { if ($0 ~ /\]/) skip = 0; next }
  keep && section == "[workspace]" && /^[[:space:]]*(default-)?members[[:space:]]*=/ {
    if ($0 !~ /\]/) skip = 1
    if ($0 ~ /^[[:space:]]*members/) print "members = [\"idempotent-core\"]"
    next
  }
  keep
' Cargo.toml >"$copy/Cargo.toml"

# Each pinned crate's requirement becomes `=minimum`, in the form
# `name = "x"` or `name = { version = "x", ... }`.
for name in "${pinned[@]}"; do
  for manifest in "$copy/Cargo.toml" "$copy/idempotent-core/Cargo.toml"; do
    sed -i -E \
      -e "s/^(${name}[[:space:]]*=[[:space:]]*\{[^}]*version[[:space:]]*=[[:space:]]*\")[=^~]?/\1=/" \
      -e "s/^(${name}[[:space:]]*=[[:space:]]*\")[=^~]?/\1=/" \
      "$manifest"
  done
done

cd "$copy"
export CARGO_TARGET_DIR="$min_target"
log "phase 2: resolving the copy with the pinned minimums"
if ! cargo update >"$outfile" 2>&1; then
  cat "$outfile" >&2
  die "the minimums do not resolve together (see above)"
fi
grep -v '^ *Removing ' "$outfile" >&2 || true

# serde pins serde_derive to its own version; make sure of it all the same.
if ! resolved | grep -qx "serde_derive v${min[serde_derive]}"; then
  cargo update --precise "${min[serde_derive]}" -p serde_derive
fi

# Every pinned crate resolves once, at its minimum.
versions=$(resolved)
for name in "${pinned[@]}" serde_derive; do
  got=$(printf '%s\n' "$versions" | awk -v n="$name" '$1 == n { print $2 }' | paste -sd ' ' -)
  [ "$got" = "v${min[$name]}" ] || die "$name resolved to '${got:-nothing}', not its minimum v${min[$name]}"
done

for features in "" serde_json/arbitrary_precision; do
  args=()
  [ -n "$features" ] && args=(--features "$features")
  show_versions "minimums, ${features:-default features}" "${args[@]}"
  log "phase 2: minimums, ${features:-default features}"
  fingerprint_tests "${args[@]}"
done
cd "$root"
phase2_time=$((SECONDS - phase2_start))
log "phase 2 (lowest versions) passed in ${phase2_time}s"

log "fingerprints are the same with serde_json arbitrary_precision/preserve_order (phase 1, ${phase1_time}s)" \
  "and at the minimums $(for n in "${pinned[@]}" serde_derive; do printf '%s %s, ' "$n" "${min[$n]}"; done | sed 's/, $//') (phase 2, ${phase2_time}s)"
