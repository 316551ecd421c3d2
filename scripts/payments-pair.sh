#!/usr/bin/env bash
# The payments server and its retrying client, under failures and lost
# responses: `./scripts/payments-pair.sh [DATABASE_URL]`.
#
# Builds the examples `payments_server` and `payments_client` (all
# features), then makes two runs, each against a server of its own on a
# free loopback port:
#
# 1. a server whose first attempts fail with 500 a fifth of the time
#    (`--fail-rate 0.2`), and a client making 200 payments, 16 at a time,
#    discarding a fifth of the 201 answers as lost (`--drop-rate 0.2`);
# 2. the same, with the server taking 200 ms per payment
#    (`--processing-delay-ms 200`) and the client sending 40 payments, half
#    of them twice at once (`--race-rate 0.5`), so that the second request
#    of a key finds the first one running and gets a 409 with
#    `Retry-After` after the server's bounded wait (100 ms). On SQLite,
#    which lets one writer in at a time, requests with other keys can get
#    that 409 too while a payment is processed; their retries run.
#
# The client retries under each payment's idempotency key and exits non-zero
# unless the server holds every payment exactly once, so the script exits
# with the first client status that is not 0 (124 when a client ran past 5
# minutes), or 0. After each run the server's `GET /metrics` must agree with
# the client's summary line: `idempotency_requests_total` of
# `payments.create` (labelled with the run's backend, `sqlite` or
# `postgresql`) counts `executed` once per payment held, `replayed` once per
# answer with `Idempotent-Replayed`, `in_flight` once per 409, and every
# request sent once in all (exit 1 otherwise).
#
# Without DATABASE_URL the servers use their embedded SQLite file, started
# in a fresh temporary directory (also their TMPDIR) that is removed at the
# end. With a `postgres://` URL they use that database; when it does not
# exist and `psql` is there, the script creates it through the server's
# `postgres` database and drops it at the end. The servers run migrations at
# start-up. A server that prints no `listening on http://...` line within
# 120 s fails the run, with its output shown.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

database_url="${1:-}"
if [ "$#" -gt 1 ]; then
  log "usage: $0 [DATABASE_URL]"
  exit 2
fi

workdir=$(mktemp -d /tmp/diesel-idempotent-payments.XXXXXX)
server_pid=""
created_db=""
pg_admin_url=""
psql_bin=""

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

cleanup() {
  stop_server
  if [ -n "$created_db" ]; then
    "$psql_bin" "$pg_admin_url" -qAt -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$created_db\" WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop the database $created_db"
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Creates the PostgreSQL database of `database_url` when it does not exist
# (and psql is there to do it).
ensure_pg_database() {
  local base="${database_url%%\?*}"
  local name="${base##*/}"
  pg_admin_url="${base%/*}/postgres"
  psql_bin=$(command -v psql || true)
  if [ -z "$psql_bin" ]; then
    local dir
    dir=$(pg_bindir psql) && psql_bin="$dir/psql"
  fi
  if [ -z "$psql_bin" ]; then
    log "no psql: using the database of $database_url as it is (it must exist)"
    return 0
  fi
  if ! [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]]; then
    log "using the database \"$name\" as it is (a name this script creates is lowercase letters, digits and _)"
    return 0
  fi
  local exists
  exists=$("$psql_bin" "$pg_admin_url" -qAt -v ON_ERROR_STOP=1 \
    -c "SELECT 1 FROM pg_database WHERE datname = '$name'")
  if [ -z "$exists" ]; then
    log "creating the database $name"
    "$psql_bin" "$pg_admin_url" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$name\"" >/dev/null
    created_db="$name"
  fi
}

server_url=""
# Starts a payments server with the options given (and `--database-url`
# when the script got one); sets server_pid and server_url.
start_server() {
  local args=(--listen 127.0.0.1:0 "$@")
  [ -n "$database_url" ] && args+=(--database-url "$database_url")
  log "payments_server ${args[*]}"
  : >"$workdir/server.out"
  : >"$workdir/server.err"
  (cd "$workdir" && TMPDIR="$workdir" exec "$bin/payments_server" "${args[@]}") \
    >"$workdir/server.out" 2>"$workdir/server.err" &
  server_pid=$!
  local line=""
  for _ in $(seq 1 1200); do
    # A whole line, newline included, or nothing yet.
    if [ "$(wc -l <"$workdir/server.out")" -ge 1 ]; then
      line=$(head -n 1 "$workdir/server.out")
      break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ "$line" != "listening on http://"* ]]; then
    if kill -0 "$server_pid" 2>/dev/null; then
      log "the server printed no 'listening on http://...' line within 120 s; its output:"
    else
      log "the server stopped before it listened; its output:"
    fi
    cat "$workdir/server.out" "$workdir/server.err" >&2
    exit 1
  fi
  server_url="${line#listening on }"
  log "the server listens on $server_url"
}

# Runs the client against the running server with the options given,
# checks the server's metrics against the client's summary, then stops the
# server; exits with the client's status when it is not 0.
run_client() {
  log "payments_client --server $server_url $*"
  local status=0
  timeout 300 "$bin/payments_client" --server "$server_url" "$@" \
    | tee "$workdir/client.out" || status=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ]; then
    check_metrics "$(tail -n 1 "$workdir/client.out")" || status=1
  fi
  stop_server
  if [ "$status" -ne 0 ]; then
    log "the client exited with $status; the server's last output:"
    tail -n 40 "$workdir/server.err" >&2
    exit "$status"
  fi
}

# Compares the server's `idempotency_requests_total` for `payments.create`
# with the client's summary line (`requested=.. held=.. attempts=..`).
check_metrics() {
  local backend=sqlite
  case "$database_url" in postgres://* | postgresql://*) backend=postgresql ;; esac
  python3 - "$server_url/metrics" "$1" "$backend" <<'PY'
import re
import sys
import urllib.request

url, summary, backend = sys.argv[1], sys.argv[2], sys.argv[3]
text = urllib.request.urlopen(url, timeout=30).read().decode()
counts = {}
for labels, value in re.findall(r"^idempotency_requests_total\{([^}]*)\} (\S+)$", text, re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    if labels.get("function") == "payments.create":
        if labels.get("backend") != backend:
            print(f"== FAILED: backend={labels.get('backend')!r}, expected {backend!r}", file=sys.stderr)
            sys.exit(1)
        counts[labels["outcome"]] = counts.get(labels["outcome"], 0) + int(float(value))
client = dict(field.split("=", 1) for field in summary.split())
expected = [
    ("executed", counts.get("executed", 0), "held", int(client["held"])),
    ("replayed", counts.get("replayed", 0), "replays", int(client["replays"])),
    ("in_flight", counts.get("in_flight", 0), "conflicts", int(client["conflicts"])),
    ("all outcomes", sum(counts.values()), "attempts", int(client["attempts"])),
]
print("== metrics: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())), file=sys.stderr)
wrong = [f"{name} {got} != {field} {want}" for name, got, field, want in expected if got != want]
if wrong:
    print("== FAILED: the server's metrics disagree with the client: " + "; ".join(wrong), file=sys.stderr)
    sys.exit(1)
PY
}

log "cargo build --all-features --example payments_server --example payments_client"
cargo build --all-features --example payments_server --example payments_client
bin="$(cd "${CARGO_TARGET_DIR:-target}/debug/examples" && pwd)"

if [ -n "$database_url" ]; then
  case "$database_url" in
    postgres://* | postgresql://*) ensure_pg_database ;;
  esac
  log "database: $database_url"
else
  log "database: the server's embedded SQLite file, in $workdir"
fi

log "run 0: one payment and one retry of it: GET /metrics counts executed 1, replayed 1"
start_server
python3 - "$server_url" <<'PY' || { stop_server; tail -n 40 "$workdir/server.err" >&2; exit 1; }
import json
import re
import sys
import urllib.request
import uuid

server = sys.argv[1]
key = str(uuid.uuid4())
body = json.dumps({"amount_cents": 4200, "currency": "BRL", "recipient": "ada@example.com"}).encode()
answers = []
for _ in range(2):
    request = urllib.request.Request(
        server + "/payments", data=body, method="POST",
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answers.append((response.status, response.headers.get("Idempotent-Replayed"), response.read()))
assert [a[:2] for a in answers] == [(201, None), (201, "true")], answers
assert answers[0][2] == answers[1][2], answers
text = urllib.request.urlopen(server + "/metrics", timeout=30).read().decode()
lines = sorted(l for l in text.splitlines() if l.startswith("idempotency_requests_total{"))
print("== " + "; ".join(lines), file=sys.stderr)
want = {"executed": 1, "replayed": 1}
for outcome, count in want.items():
    pattern = r'^idempotency_requests_total\{[^}]*function="payments\.create"[^}]*outcome="%s"[^}]*\} (\S+)$' % outcome
    found = re.findall(pattern, text, re.M)
    assert found and int(float(found[0])) == count, (outcome, found, text)
assert len(lines) == 2, lines
PY
stop_server

log "run 1: 500 on a fifth of first attempts, a fifth of the 201 answers lost"
start_server --fail-rate 0.2
run_client --payments 200 --concurrency 16 --drop-rate 0.2

log "run 2: the same with 200 ms per payment and half of the payments sent twice at once"
start_server --fail-rate 0.2 --processing-delay-ms 200
run_client --payments 40 --concurrency 8 --drop-rate 0.2 --race-rate 0.5

log "every payment held exactly once"
