# Shell helpers of scripts/test.sh and scripts/bench.sh (sourced, not run).

log() { printf '== %s\n' "$*" >&2; }

# Installs Debian packages, or stops with what is missing.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing packages $* and no apt-get: install them, or set DIESEL_IDEMPOTENT_PG_URL"
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The bin directory of a PostgreSQL installation that has every tool named
# (default: initdb and pg_ctl).
pg_bindir() {
  local d tool ok tools=("$@")
  [ "${#tools[@]}" -eq 0 ] && tools=(initdb pg_ctl)
  for d in /usr/lib/postgresql/*/bin; do
    ok=1
    for tool in "${tools[@]}"; do [ -x "$d/$tool" ] || ok=0; done
    [ "$ok" -eq 1 ] && { echo "$d"; return 0; }
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A throwaway PostgreSQL server from the binaries in `$pg_bin`, in the
# existing directory `$pg_dir`, on a free loopback port, as the `postgres`
# user when run as root (PostgreSQL refuses root): `start_throwaway_pg
# [PREFIX...]` runs pg_ctl under PREFIX (e.g. `taskset -c 1`) and exports
# DIESEL_IDEMPOTENT_PG_URL and DIESEL_IDEMPOTENT_PG_RESTART (for the fault
# tests: restart it with the same options). Register `stop_throwaway_pg`
# as a cleanup before starting it.
as_pg=()
start_throwaway_pg() {
  chmod 755 "$pg_dir"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$pg_dir" postgres
    chown postgres "$pg_dir"
    as_pg=(runuser -u postgres --)
  fi
  local port
  port=$(free_port)
  log "starting PostgreSQL ($pg_bin) on 127.0.0.1:$port in $pg_dir"
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust -E UTF8 --no-locale >"$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; exit 1; }
  "${as_pg[@]}" "$@" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $pg_dir -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { cat "$pg_dir/server.log" >&2; exit 1; }
  export DIESEL_IDEMPOTENT_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export DIESEL_IDEMPOTENT_PG_RESTART="${as_pg[*]} $pg_bin/pg_ctl -D $pg_dir/data -w -t 60 -m fast restart -l $pg_dir/server.log"
}

stop_throwaway_pg() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
}

# A throwaway Redis server (the Debian package `redis-server`, installed when
# missing) on a free loopback port, in a new temporary directory, with no
# persistence: `start_throwaway_redis` exports DIESEL_IDEMPOTENT_REDIS_URL.
# Register `stop_throwaway_redis` as a cleanup before starting it.
redis_dir=""
start_throwaway_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
  fi
  redis_dir=$(mktemp -d /tmp/diesel-idempotent-redis.XXXXXX)
  local port
  port=$(free_port)
  log "starting Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') on 127.0.0.1:$port in $redis_dir"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$redis_dir" \
    --save '' --appendonly no --daemonize yes \
    --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log" \
    || { cat "$redis_dir/redis.log" >&2 2>/dev/null; exit 1; }
  for _ in $(seq 1 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ] && break
    sleep 0.1
  done
  [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ] \
    || { cat "$redis_dir/redis.log" >&2; log "Redis did not answer PING"; exit 1; }
  export DIESEL_IDEMPOTENT_REDIS_URL="redis://127.0.0.1:$port"
}

stop_throwaway_redis() {
  [ -n "$redis_dir" ] || return 0
  if [ -f "$redis_dir/redis.pid" ]; then
    local pid
    pid=$(cat "$redis_dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$redis_dir"
  redis_dir=""
}
