#!/usr/bin/env bash
# The whole test suite, every backend: `./scripts/test.sh [cargo test args]`.
#
# Installs what the tests need when it is missing (libpq, the MySQL client
# library, pkg-config, the PostgreSQL, MariaDB and Redis servers; SQLite is
# built from source by the `libsqlite3-sys` dev-dependency), starts an
# ephemeral PostgreSQL, MariaDB and Redis on free loopback ports in
# temporary directories (PostgreSQL and MariaDB as the `postgres` and
# `mysql` users when run as root), runs `cargo test` for the workspace with
# all features, the fingerprint compatibility job
# (scripts/fingerprint-compat.sh), the benchmarks' short variant and the
# examples against those servers, and stops the servers. Set
# DIESEL_IDEMPOTENT_PG_URL / DIESEL_IDEMPOTENT_MYSQL_URL /
# DIESEL_IDEMPOTENT_REDIS_URL to use servers of your own instead; the tests
# create and drop one database each on them.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

# A test build needs no debugger and no incremental cache: line tables keep
# file:line in panics and backtraces, and the whole run fits in about a third
# of the disk that full debug info takes (it builds the workspace, trybuild's
# copy, two fingerprint-compat workspaces, the release benches and the
# examples). Set either variable to override.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
log "disk free where target/ lives: $(df -h --output=avail . | tail -1 | tr -d ' ')"

missing=()
dpkg -s libpq-dev >/dev/null 2>&1 || missing+=(libpq-dev)
dpkg -s default-libmysqlclient-dev >/dev/null 2>&1 || missing+=(default-libmysqlclient-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ -z "${DIESEL_IDEMPOTENT_PG_URL:-}" ] && ! pg_bindir >/dev/null; then
  missing+=(postgresql)
fi
if [ -z "${DIESEL_IDEMPOTENT_MYSQL_URL:-}" ] && ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  missing+=(mariadb-server)
fi
if [ "${#missing[@]}" -gt 0 ] && command -v dpkg >/dev/null 2>&1; then
  apt_install "${missing[@]}"
fi

cleanups=()
run_cleanups() { local c; for c in "${cleanups[@]}"; do "$c"; done; }
trap run_cleanups EXIT INT TERM

if [ -z "${DIESEL_IDEMPOTENT_PG_URL:-}" ]; then
  pg_bin=$(pg_bindir) || { log "no PostgreSQL server binaries found"; exit 1; }
  pg_dir=$(mktemp -d /tmp/diesel-idempotent-pg.XXXXXX)
  pg_cleanup() {
    stop_throwaway_pg
    rm -rf "$pg_dir"
  }
  cleanups+=(pg_cleanup)
  start_throwaway_pg
else
  log "using PostgreSQL at DIESEL_IDEMPOTENT_PG_URL"
fi

if [ -z "${DIESEL_IDEMPOTENT_MYSQL_URL:-}" ]; then
  mydir=$(mktemp -d /tmp/diesel-idempotent-mysql.XXXXXX)
  chmod 755 "$mydir"
  myuser=$(id -un)
  if [ "$(id -u)" -eq 0 ]; then
    id mysql >/dev/null 2>&1 || useradd --system --home-dir "$mydir" mysql
    chown mysql "$mydir"
    myuser=mysql
  fi
  myport=$(free_port)
  my_cleanup() {
    if [ -f "$mydir/mariadbd.pid" ]; then
      kill "$(cat "$mydir/mariadbd.pid")" 2>/dev/null || true
      for _ in $(seq 1 100); do [ -f "$mydir/mariadbd.pid" ] || break; sleep 0.1; done
    fi
    rm -rf "$mydir"
  }
  cleanups+=(my_cleanup)
  log "starting MariaDB on 127.0.0.1:$myport in $mydir"
  mariadb-install-db --no-defaults --datadir="$mydir/data" --user="$myuser" \
    --auth-root-authentication-method=normal --skip-test-db >"$mydir/install.log" 2>&1 \
    || { cat "$mydir/install.log" >&2; exit 1; }
  mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  "$mariadbd" --no-defaults --datadir="$mydir/data" --user="$myuser" \
    --bind-address=127.0.0.1 --port="$myport" --socket="$mydir/mysql.sock" \
    --pid-file="$mydir/mariadbd.pid" --log-error="$mydir/error.log" \
    --skip-grant-tables --skip-log-bin --max-connections=600 \
    --innodb-flush-log-at-trx-commit=2 --innodb-buffer-pool-size=256M &
  for _ in $(seq 1 300); do
    mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$myport" -u root ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$myport" -u root ping >/dev/null 2>&1 \
    || { cat "$mydir/error.log" >&2; log "MariaDB did not start"; exit 1; }
  export DIESEL_IDEMPOTENT_MYSQL_URL="mysql://root@127.0.0.1:$myport/mysql"
else
  log "using MySQL at DIESEL_IDEMPOTENT_MYSQL_URL"
fi

if [ -z "${DIESEL_IDEMPOTENT_REDIS_URL:-}" ]; then
  cleanups+=(stop_throwaway_redis)
  start_throwaway_redis
else
  log "using Redis at DIESEL_IDEMPOTENT_REDIS_URL"
fi

log "cargo test --workspace --all-features $*"
cargo test --workspace --all-features "$@"

log "cargo test -p diesel-idempotent --test ui (default features, this package alone: \`async fn\` without the \`async\` feature is a compile error)"
cargo test -p diesel-idempotent --test ui

log "fingerprints: serde_json feature matrix and the lowest dependency versions"
./scripts/fingerprint-compat.sh

log "cargo bench --no-run (the benches build, so they never rot)"
cargo bench --no-run --all-features

log "scripts/bench.sh --quick (the SQL floor and the library's ratios on a throwaway PostgreSQL; the load tool checks exactly-once)"
env -u DIESEL_IDEMPOTENT_PG_URL DIESEL_IDEMPOTENT_BENCH_ALL_FEATURES=1 ./scripts/bench.sh --quick

log "cargo clippy --test shapes (generated code is lint-free under clippy::pedantic)"
cargo clippy --all-features --test shapes -- -D warnings

log "cargo run --example quickstart"
cargo run --example quickstart

log "cargo run --example analytics_consumer"
cargo run --example analytics_consumer

log "cargo run --example bank_accounts"
cargo run --example bank_accounts

log "cargo run --example async_quickstart --features async"
cargo run --example async_quickstart --features async

log "the payments server and its retrying client, failures and lost responses on: SQLite"
./scripts/payments-pair.sh
log "... on PostgreSQL"
./scripts/payments-pair.sh "${DIESEL_IDEMPOTENT_PG_URL%/*}/payments_pair_$$"

log "purge while serving on PostgreSQL: 100,000 expired records purged while 8 clients make calls; no call waits 50 ms more on the purge (the 1,000,000-record run is scripts/bench.sh's)"
cargo run --release --all-features --example purge_while_serving -- \
  --database-url "${DIESEL_IDEMPOTENT_PG_URL%/*}/purge_while_serving_$$" --records 100000 --baseline 5s

log "analytics on Redis Streams, crashes on: SQLite"
cargo run --example analytics_redis -- --redis-url "$DIESEL_IDEMPOTENT_REDIS_URL" --events 2000 --crash-rate 0.1
log "... on PostgreSQL"
cargo run --example analytics_redis -- --redis-url "$DIESEL_IDEMPOTENT_REDIS_URL" \
  --database-url "${DIESEL_IDEMPOTENT_PG_URL%/*}/analytics_redis_$$" --events 2000 --crash-rate 0.1
