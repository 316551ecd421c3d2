#!/usr/bin/env bash
# What `#[idempotent]` costs on PostgreSQL, against the SQL floor:
# `./scripts/bench.sh [--quick] [--no-pin]`.
#
# 1. Runs the statements each path sends, bare, with pgbench
#    (`benches/pgbench/*.sql`, `-M prepared -c 1 -j 1`, every script mixed
#    in one run so they share the server's state and any drift): the
#    floor ratio of a path is its latency over the unwrapped body's, what
#    the library would cost if it took no time of its own.
# 2. Runs `benches/overhead.rs` (Criterion, PostgreSQL cases only): the
#    library ratio is the wrapped call's median over the unwrapped body's
#    (the long run: the median of three runs' ratios). Then, the same way
#    and in the same runs, `benches/async_overhead.rs` (`async_postgres/`
#    cases: the same functions as `async fn`s on diesel-async's
#    `AsyncPgConnection`): the async library ratio.
# 3. Runs the load tool (`examples/idempotent_load.rs`) with 16 clients,
#    distinct keys and one hot key, for the modes that matter to each, and
#    once with `--async` (tokio tasks on a diesel-async deadpool pool), and
#    the same path's statements with pgbench and 16 clients next to the
#    body's: the throughput floor.
# 4. Runs `examples/purge_while_serving.rs`: `purge_expired` deletes
#    1,000,000 expired records (50,000 with --quick) while 8 clients keep
#    making calls, and the claim latency with and without the purge, in
#    the same run, must not differ by more than 50 ms (p99 and maximum).
#
# It prints one markdown table (path, statements, floor ratio, library
# ratio, async library ratio, library / floor, target, met or missed), then
# the load figures and the purge's, and saves them to
# $CARGO_TARGET_DIR/bench-report.md (target/bench-report.md by default).
# Everything runs on the same server in the same run; absolute times are
# this machine's, the ratios are the result.
#
# The server: a throwaway PostgreSQL started the way scripts/test.sh starts
# it (loopback TCP, fsync=off, synchronous_commit=off, as the `postgres`
# user when run as root), or the one at DIESEL_IDEMPOTENT_PG_URL (the run
# creates and drops databases of its own there). Installs what it needs
# when missing (libpq, pkg-config, the PostgreSQL server package, which
# holds pgbench); needs cargo and python3.
#
# With its own server, the single-client steps (pgbench and Criterion) run
# with the server and the client pinned to one CPU (`taskset`): a round
# trip is then a switch between two processes on one core, the same on
# every run, where across cores it is a cross-CPU wake-up whose cost swings
# by 3x from run to run on a VM. The load runs after the server is
# restarted on every CPU. `--no-pin` leaves every process unpinned.
#
#   --no-pin  no CPU pinning (see above); always so with DIESEL_IDEMPOTENT_PG_URL
#   --quick   the short run for CI: pgbench 3 s per script, Criterion
#             `--warm-up-time 1 --measurement-time 2` with 10 samples and no
#             purge case, 2000 calls per load run, 50,000 records purged
#             while serving (about 4 minutes, build aside)
#   (none)    the long run: pgbench 10 s per script, three Criterion runs
#             of each bench with their defaults (20 samples, 1 s warm-up,
#             3 s measurement), 16000 calls per load run, 1,000,000 records
#             purged while serving (about 16 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

quick=0
pin=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-pin) pin=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (usage: ./scripts/bench.sh [--quick] [--no-pin])" >&2
      exit 2
      ;;
  esac
done

if [ "$quick" -eq 1 ]; then
  pgbench_secs=3
  criterion_args=(--warm-up-time 1 --measurement-time 2)
  criterion_runs=1
  load_count=2000
  purge_records=50000
  purge_baseline=5s
  export DIESEL_IDEMPOTENT_BENCH_QUICK=1
else
  pgbench_secs=10
  criterion_args=()
  criterion_runs=3
  load_count=16000
  purge_records=1000000
  purge_baseline=30s
  unset DIESEL_IDEMPOTENT_BENCH_QUICK
fi
load_clients=16
purge_clients=8

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
report="$target_dir/bench-report.md"

command -v python3 >/dev/null 2>&1 || { log "python3 is needed (free ports, URLs, the report)"; exit 1; }
missing=()
if command -v dpkg >/dev/null 2>&1; then
  dpkg -s libpq-dev >/dev/null 2>&1 || missing+=(libpq-dev)
fi
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
server_tools=(pgbench psql)
[ -z "${DIESEL_IDEMPOTENT_PG_URL:-}" ] && server_tools+=(initdb pg_ctl)
pg_bindir "${server_tools[@]}" >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
bindir=$(pg_bindir "${server_tools[@]}") || { log "no PostgreSQL with ${server_tools[*]} found"; exit 1; }

# Build first: a compile error should not wait for a server.
log "cargo build (the overhead benches, the load tool and the purge-while-serving tool, release)"
# DIESEL_IDEMPOTENT_BENCH_ALL_FEATURES=1 builds with every feature, as
# scripts/test.sh's `cargo bench --no-run --all-features` already did (its
# quick run reuses that build); by default only PostgreSQL's and `async`,
# so that no MySQL client library is needed.
if [ "${DIESEL_IDEMPOTENT_BENCH_ALL_FEATURES:-0}" = 1 ]; then
  features=(--all-features)
else
  features=(--features postgres,async)
fi
cargo bench "${features[@]}" --bench overhead --bench async_overhead --no-run
cargo build --release "${features[@]}" --example idempotent_load --example purge_while_serving
load_tool="$target_dir/release/examples/idempotent_load"
purge_tool="$target_dir/release/examples/purge_while_serving"

work=$(mktemp -d /tmp/diesel-idempotent-bench.XXXXXX)
chmod 755 "$work"
cleanups=()
run_cleanups() {
  local i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do "${cleanups[i]}"; done
}
trap run_cleanups EXIT
trap 'exit 130' INT TERM
work_cleanup() { rm -rf "$work"; }
cleanups+=(work_cleanup)

# `url` with its database replaced by `$2`.
database_url() {
  python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit, urlunsplit
parts = urlsplit(sys.argv[1])
print(urlunsplit(parts._replace(path="/" + sys.argv[2])))
PY
}

server="the server at DIESEL_IDEMPOTENT_PG_URL, unpinned"
pinned=()
[ -n "${DIESEL_IDEMPOTENT_PG_URL:-}" ] && pin=0
command -v taskset >/dev/null 2>&1 || pin=0
if [ "$pin" -eq 1 ]; then
  cpu=$(($(nproc) - 1))
  pinned=(taskset -c "$cpu")
fi
if [ -z "${DIESEL_IDEMPOTENT_PG_URL:-}" ]; then
  pg_bin=$bindir
  pg_dir="$work/pg"
  mkdir -p "$pg_dir"
  cleanups+=(stop_throwaway_pg)
  start_throwaway_pg "${pinned[@]}"
  server="a throwaway PostgreSQL (fsync=off, synchronous_commit=off, full_page_writes=off; loopback TCP)"
  if [ "$pin" -eq 1 ]; then
    server="$server; pgbench, Criterion and the server pinned to CPU $cpu, the load runs on every CPU"
  else
    server="$server; unpinned"
  fi
else
  log "using PostgreSQL at DIESEL_IDEMPOTENT_PG_URL"
fi
admin_url="$DIESEL_IDEMPOTENT_PG_URL"
psql_admin() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$admin_url" "$@"; }
server_version=$(psql_admin -At -c "SHOW server_version")

# --- 1. The SQL floor: pgbench --------------------------------------------
floor_db="bench_floor_$$"
floor_url=$(database_url "$admin_url" "$floor_db")
floor_cleanup() { psql_admin -c "DROP DATABASE IF EXISTS $floor_db WITH (FORCE)" >/dev/null 2>&1 || true; }
psql_admin -c "DROP DATABASE IF EXISTS $floor_db WITH (FORCE)" >/dev/null 2>&1
psql_admin -c "CREATE DATABASE $floor_db"
cleanups+=(floor_cleanup)
for migration in idempotent-core/migrations/postgres/*/up.sql; do
  "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$floor_url" -f "$migration"
done
"$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$floor_url" -f benches/pgbench/setup.sql >/dev/null

# Every script but the setup, mixed in one run with equal weights.
scripts=()
for script in benches/pgbench/*.sql; do
  [ "$(basename "$script")" = setup.sql ] || scripts+=(-f "$script")
done
script_count=$((${#scripts[@]} / 2))
pgbench_total=$((pgbench_secs * script_count))
log "pgbench -M prepared -c 1 -j 1 -T $pgbench_total -n -r: $script_count scripts mixed, ~${pgbench_secs}s each"
"${pinned[@]}" "$bindir/pgbench" -M prepared -c 1 -j 1 -T "$pgbench_total" -n -r "${scripts[@]}" "$floor_url" >"$work/pgbench.txt" 2>&1 \
  || { cat "$work/pgbench.txt" >&2; log "pgbench failed"; exit 1; }

# --- 2. The library: Criterion --------------------------------------------
cases="first_call|replay|mismatch|optimistic_first_call|optimistic_replay|read_first_replay|read_first_first_call|hash_first_call|hash_replay|hash_read_first_replay|get_or_create_hit|get_or_create_miss"
# Each run's medians (ns) of one bench's groups `<prefix>/<case>`: run,
# prefix, case, wrapped, unwrapped.
criterion_medians() {
  python3 - "$target_dir/criterion" "$1" "$2" "${cases//|/ }" <<'PY'
import json, sys
root, run, prefix, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
def median(case, fn):
    try:
        with open(f"{root}/{prefix}_{case}/{fn}/new/estimates.json") as f:
            return str(json.load(f)["median"]["point_estimate"])
    except (OSError, KeyError, ValueError):
        return "-"
for case in cases:
    print("\t".join([run, prefix, case, median(case, "wrapped"), median(case, "unwrapped")]))
PY
}
: >"$work/criterion.tsv"
for run in $(seq 1 "$criterion_runs"); do
  rm -rf "$target_dir"/criterion/postgres_* "$target_dir"/criterion/async_postgres_*
  log "Criterion run $run/$criterion_runs: cargo bench ${features[*]} --bench overhead -- '^postgres/($cases)/' ${criterion_args[*]}"
  rm -f "$work/counts.tsv"
  DIESEL_IDEMPOTENT_BENCH_COUNTS="$work/counts.tsv" \
    "${pinned[@]}" cargo bench "${features[@]}" --bench overhead -- "^postgres/($cases)/" "${criterion_args[@]}" \
    >"$work/criterion.txt" 2>&1 || { tail -50 "$work/criterion.txt" >&2; log "the overhead bench failed"; exit 1; }
  criterion_medians "$run" postgres >>"$work/criterion.tsv"
  log "Criterion run $run/$criterion_runs: cargo bench ${features[*]} --bench async_overhead -- '^async_postgres/($cases)/' ${criterion_args[*]}"
  "${pinned[@]}" cargo bench "${features[@]}" --bench async_overhead -- "^async_postgres/($cases)/" "${criterion_args[@]}" \
    >"$work/criterion_async.txt" 2>&1 || { tail -50 "$work/criterion_async.txt" >&2; log "the async overhead bench failed"; exit 1; }
  criterion_medians "$run" async_postgres >>"$work/criterion.tsv"
done

# --- 3. Under load --------------------------------------------------------
if [ "$pin" -eq 1 ]; then
  log "restarting PostgreSQL on every CPU for the load runs"
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 -m fast restart >/dev/null \
    || { cat "$pg_dir/server.log" >&2; exit 1; }
fi
# keys, mode, replay, the pgbench script of the same statements, and the
# driver (`async`: the load tool's --async, tokio tasks on diesel-async).
loads=(
  "distinct|claim_first|in_transaction|claim_first_first_call|blocking"
  "distinct|optimistic|in_transaction|optimistic_first_call|blocking"
  "hot|claim_first|in_transaction|claim_first_replay|blocking"
  "hot|claim_first|read_first|read_first_replay|blocking"
  "distinct|claim_first|in_transaction|claim_first_first_call|async"
)
load_threads=$(nproc)
[ "$load_threads" -gt "$load_clients" ] && load_threads=$load_clients
# tps of a script with the load's clients, from the state of setup.sql.
load_floor() {
  "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$floor_url" -f benches/pgbench/setup.sql >/dev/null
  "$bindir/pgbench" -M prepared -c "$load_clients" -j "$load_threads" -T "$pgbench_secs" -n \
    -f "benches/pgbench/$1.sql" "$floor_url" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
: >"$work/loads.txt"
for load in "${loads[@]}"; do
  IFS='|' read -r keys mode replay script driver <<<"$load"
  driver_args=()
  [ "$driver" = async ] && driver_args=(--async)
  log "load ($driver): $load_clients clients, $keys keys, $load_count calls, mode $mode, replay $replay; floor: pgbench body.sql, $script.sql"
  rc=0
  "$load_tool" --backend postgres --url "$admin_url" --clients "$load_clients" --count "$load_count" \
    --keys "$keys" --mode "$mode" --replay "$replay" "${driver_args[@]}" >"$work/load.txt" 2>&1 || rc=$?
  body_tps=$(load_floor body)
  path_tps=$(load_floor "$script")
  {
    printf '@@ %s %s %s %s %s %s %s\n' "$keys" "$mode" "$replay" "$rc" "${body_tps:--}" "${path_tps:--}" "$driver"
    cat "$work/load.txt"
  } >>"$work/loads.txt"
done

# --- 4. Purging while serving ---------------------------------------------
purge_db="bench_purge_$$"
log "purge while serving: $purge_records expired records, $purge_clients clients, baseline $purge_baseline"
purge_rc=0
"$purge_tool" --database-url "$(database_url "$admin_url" "$purge_db")" --records "$purge_records" \
  --clients "$purge_clients" --baseline "$purge_baseline" >"$work/purge.txt" 2>&1 || purge_rc=$?
echo "$purge_rc" >"$work/purge.rc"

# --- The report -----------------------------------------------------------
machine="$(nproc) CPUs, $(uname -m), PostgreSQL $server_version, $(rustc --version 2>/dev/null || echo rustc)"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
variant=$([ "$quick" -eq 1 ] && echo "--quick" || echo "long")
BENCH_WORK="$work" BENCH_TARGET="$target_dir" BENCH_VARIANT="$variant" BENCH_MACHINE="$machine" \
  BENCH_SERVER="$server" BENCH_REVISION="$revision" BENCH_PGBENCH_SECS="$pgbench_secs" \
  BENCH_LOAD_CLIENTS="$load_clients" BENCH_LOAD_COUNT="$load_count" \
  python3 - >"$work/report.md" <<'PY'
import json, os, re, sys

work = os.environ["BENCH_WORK"]
target = os.environ["BENCH_TARGET"]
out = []
say = out.append

# pgbench: per-script latency average (ms) and statements.
floor = {}
text = open(f"{work}/pgbench.txt").read()
for m in re.finditer(r"SQL script \d+: \S*?([A-Za-z0-9_]+)\.sql\n(.*?)(?=SQL script \d+:|\Z)", text, re.S):
    name, body = m.group(1), m.group(2)
    lat = re.search(r"latency average = ([0-9.]+) ms", body)
    count = re.search(r"- (\d+) transactions", body)
    floor[name] = (float(lat.group(1)) if lat else None, int(count.group(1)) if count else 0)

def script_statements(name):
    n = 0
    for line in open(f"benches/pgbench/{name}.sql"):
        line = line.strip()
        if line and not line.startswith("--") and not line.startswith("\\"):
            n += 1
    return n

# Criterion medians (ns) per run, per bench (`postgres`: the blocking one,
# `async_postgres`); a case's result is the run with the median ratio.
runs = {}
for line in open(f"{work}/criterion.tsv"):
    run, prefix, case, w, u = line.rstrip("\n").split("\t")
    if w != "-" and u != "-":
        runs.setdefault((prefix, case), []).append((float(w) / float(u), float(w), float(u)))

def criterion(case, prefix="postgres"):
    results = sorted(runs.get((prefix, case), []))
    return results[(len(results) - 1) // 2] if results else (None, None, None)

# Statements and round trips per call, outside a caller's transaction.
counts = {}
try:
    for line in open(f"{work}/counts.tsv"):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 8 and f[0] == "postgres" and f[2] == "own_tx":
            counts[f[1]] = dict(wrapped=int(f[3]), unwrapped=int(f[4]),
                                wrapped_rt=f[5], unwrapped_rt=f[6], shapes=f[7])
except OSError:
    pass

# path, Criterion case, floor script, floor body script, absolute target.
paths = [
    ("claim-first first call", "first_call", "claim_first_first_call", "body", None),
    ("claim-first replay", "replay", "claim_first_replay", "body", 1.0),
    ("claim-first mismatch", "mismatch", "claim_first_replay", "body", None),
    ("read-first replay", "read_first_replay", "read_first_replay", "body", 0.5),
    ("read-first first call", "read_first_first_call", "read_first_first_call", "body", None),
    ("optimistic first call", "optimistic_first_call", "optimistic_first_call", "body", 1.5),
    ("optimistic replay", "optimistic_replay", "optimistic_replay", "body", None),
    ("`hash` first call", "hash_first_call", "hash_first_call", "body", None),
    ("`hash` replay", "hash_replay", "claim_first_replay", "body", None),
    ("`hash` read-first replay", "hash_read_first_replay", "read_first_replay", "body", None),
    ("getOrCreate hit", "get_or_create_hit", "get_or_create_hit", "user_body", None),
    ("getOrCreate miss", "get_or_create_miss", "get_or_create_miss", "user_body", None),
]
FLOOR_SLACK = 1.10

def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"

say(f"## diesel-idempotent on PostgreSQL: library vs SQL floor ({os.environ['BENCH_VARIANT']})")
say("")
say(f"- Machine: {os.environ['BENCH_MACHINE']}; server: {os.environ['BENCH_SERVER']}.")
say(f"- Revision: {os.environ['BENCH_REVISION']}.")
say(f"- Floor: `pgbench -M prepared -c 1 -j 1 -n -r`, every script of `benches/pgbench/` mixed in one run, "
    f"~{os.environ['BENCH_PGBENCH_SECS']} s each; floor ratio = the path's latency / the body's "
    "(= tps_body / tps_path).")
n_runs = max((len(r) for r in runs.values()), default=0)
say("- Library: `benches/overhead.rs` (Criterion), wrapped median / unwrapped median, same case, same run"
    + (f"; the median of {n_runs} runs' ratios." if n_runs > 1 else "."))
say("- Async library: `benches/async_overhead.rs`, the same functions as `async fn`s on diesel-async's "
    "`AsyncPgConnection` (one pooled connection), wrapped / unwrapped in diesel-async's `transaction`, "
    "measured the same way; library / floor, target and met? are the blocking library's.")
say("- Statements: the wrapped call's / the unwrapped body's, outside a caller's transaction "
    "(Diesel instrumentation); round trips on the wire are named where they differ.")
say("- library / floor: in parentheses, the call's time beyond its statements "
    "(wrapped − floor ratio × unwrapped).")
say("")
say("| path | statements | SQL floor ratio | library ratio | async library ratio | library / floor | target | met? |")
say("|---|---|---|---|---|---|---|---|")
met_all = True
for label, case, script, body, goal in paths:
    c = counts.get(case)
    if c:
        statements = f"{c['wrapped']} / {c['unwrapped']}"
        if c["wrapped_rt"] not in ("-", str(c["wrapped"])) or c["unwrapped_rt"] not in ("-", str(c["unwrapped"])):
            statements += f" ({c['wrapped_rt']} / {c['unwrapped_rt']} round trips)"
        if script_statements(script) != c["wrapped"]:
            statements += f" (floor script: {script_statements(script)}!)"
    else:
        statements = "n/a"
    fp, fb = floor.get(script, (None, 0))[0], floor.get(body, (None, 0))[0]
    floor_ratio = fp / fb if fp and fb else None
    lib_ratio, w, u = criterion(case)
    over = lib_ratio / floor_ratio if lib_ratio and floor_ratio else None
    wanted = []
    ok = over is not None and over <= FLOOR_SLACK
    reasons = [] if ok else ["floor"]
    if goal is not None:
        wanted.append(f"≤ {goal:g}×")
        if lib_ratio is None or lib_ratio > goal:
            ok = False
            reasons.insert(0, "ratio")
    wanted.append(f"≤ {FLOOR_SLACK:.2f}× floor")
    met_all &= ok
    verdict = "met" if ok else f"**missed** ({', '.join(reasons)})"
    lib_cell = "n/a" if lib_ratio is None else f"{lib_ratio:.2f} ({w / 1000:.0f} / {u / 1000:.0f} µs)"
    a_ratio, aw, au = criterion(case, "async_postgres")
    async_cell = "n/a" if a_ratio is None else f"{a_ratio:.2f} ({aw / 1000:.0f} / {au / 1000:.0f} µs)"
    floor_cell = "n/a" if floor_ratio is None else f"{floor_ratio:.2f} ({fp * 1000:.0f} / {fb * 1000:.0f} µs)"
    # What the call costs beyond its statements: its time less the floor's
    # for the same body time.
    over_cell = "n/a" if over is None else f"{over:.2f} ({(w - floor_ratio * u) / 1000:+.0f} µs)"
    say(f"| {label} | {statements} | {floor_cell} | {lib_cell} | {async_cell} | {over_cell} | {', '.join(wanted)} | {verdict} |")

# The load tool.
say("")
say(f"### Under load: {os.environ['BENCH_LOAD_CLIENTS']} clients, {os.environ['BENCH_LOAD_COUNT']} calls per run, "
    "wrapped / unwrapped (unwrapped run first)")
say("")
say("Floor: the same statements with `pgbench -M prepared`, the same clients, run right after, "
    "path tps / body tps. `async`: the load tool's `--async` (tokio tasks, one diesel-async "
    "deadpool pool, a checkout per call).")
say("")
say("| keys | mode, replay | throughput | SQL floor | throughput / floor | p50 | p99 | replays | exactly once | target | met? |")
say("|---|---|---|---|---|---|---|---|---|---|---|")
text = open(f"{work}/loads.txt").read()
for block in text.split("@@ ")[1:]:
    head, _, body = block.partition("\n")
    keys, mode, replay, rc, body_tps, path_tps, driver = head.split()
    load_floor = float(path_tps) / float(body_tps) if "-" not in (body_tps, path_tps) and float(body_tps) else None
    ratios = re.search(r"throughput ([0-9.]+)x, p50 ([0-9.]+)x, p99 ([0-9.]+)x", body)
    replays = re.search(r"(\d+) replay\(s\)", body)
    thr = float(ratios.group(1)) if ratios else None
    goal = 0.5 if keys == "distinct" else 1.0
    ok = rc == "0" and thr is not None and thr >= goal
    met_all &= ok
    once = "yes" if rc == "0" else "**FAILED** (see the load tool's output)"
    vs_floor = thr / load_floor if thr is not None and load_floor else None
    driver_note = ", async" if driver == "async" else ""
    say(f"| {keys} | {mode}, {replay}{driver_note} | {fmt(thr)}× | {fmt(load_floor)}× | {fmt(vs_floor)} | "
        f"{ratios.group(2) + '×' if ratios else 'n/a'} | "
        f"{ratios.group(3) + '×' if ratios else 'n/a'} | {replays.group(1) if replays else 'n/a'} | {once} | "
        f"≥ {goal:g}× | {'met' if ok else '**missed**'} |")
say("")

# Purging while serving.
text = open(f"{work}/purge.txt").read()
rc = open(f"{work}/purge.rc").read().strip()
fields = {}
for line in text.splitlines():
    if line.startswith("records="):
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
say(f"### Purging while serving: {fields.get('records', '?')} expired records, "
    f"{fields.get('clients', '?')} clients, batch {fields.get('batch', '?')}")
say("")
say("`examples/purge_while_serving.rs`: claim = a call until its body starts (BEGIN, fingerprint, "
    "claim); call = the whole call; 10% of calls reuse an expired record's key, half of them "
    "at the purge's front. Baseline and purge in the same run, same clients.")
say("")
if fields.get("verdict") in ("ok", "fail"):
    field = lambda name: fields.get(name, "n/a")
    say("| phase | calls | claim p50 | claim p99 | claim max | front keys' claim p99 / max | call p99 |")
    say("|---|---|---|---|---|---|---|")
    for label, tag in (("baseline", "base"), ("during the purge", "purge")):
        say(f"| {label} | {field(f'calls_{tag}')} | {field(f'p50_{tag}_ms')} ms | "
            f"{field(f'p99_{tag}_ms')} ms | {field(f'max_{tag}_ms')} ms | "
            f"{field(f'front_p99_{tag}_ms')} / {field(f'front_max_{tag}_ms')} ms | "
            f"{field(f'call_p99_{tag}_ms')} ms |")
    say("")
    def added(name):
        try:
            return f"{float(fields[name + '_purge_ms']) - float(fields[name + '_base_ms']):+.2f} ms"
        except (KeyError, ValueError):
            return "n/a"
    verdict = "met" if fields["verdict"] == "ok" and rc == "0" else "**missed**"
    say(f"Purge: {field('purge_s')} s, {field('rows_per_s')} rows/s, longest batch "
        f"{field('longest_batch_ms')} ms. Claim p99 {added('p99')}, max {added('max')} "
        f"during the purge; target ≤ +50 ms each, every body exactly once: {verdict}.")
else:
    say(f"**FAILED** (exit {rc}):")
    say("")
    say("```")
    say("\n".join(text.splitlines()[-20:]))
    say("```")
say("")
print("\n".join(out))
PY

cp "$work/report.md" "$report"
cat "$report"
log "saved to $report"
