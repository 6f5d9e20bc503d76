#!/usr/bin/env bash
# A throwaway PostgreSQL server for the result store's tests, on 127.0.0.1 only.
#
#   eval "$(bash .ci/postgres.sh)"          # sets BANKHIL_PG_URL in the calling shell
#   bash .ci/postgres.sh --url-file FILE    # also writes the URL (one line) to FILE
#   bash .ci/postgres.sh --stop             # stops the cluster (data kept for next time)
#
# Installs Debian's `postgresql` if it is missing, creates a cluster of its own ("bankhil", port
# $BANKHIL_PG_PORT, default 55432; it never touches a "main" cluster), starts it listening on
# 127.0.0.1 only, and makes a role and a database, both "bankhil", the role owning the database.
# Idempotent: when the cluster already runs this takes a fraction of a second.
# stdout carries only the `export BANKHIL_PG_URL=...` line; progress goes to stderr.
#
# Runs as root (as CI does) or as a user who can sudo/runuser to `postgres`. The cluster trades
# durability for speed (fsync off): it holds test data only.
set -euo pipefail

CLUSTER=bankhil
PORT="${BANKHIL_PG_PORT:-55432}"
DB_USER=bankhil
DB_NAME=bankhil
DB_PASSWORD="${BANKHIL_PG_PASSWORD:-bankhil-ci}"  # loopback-only test server
URL_FILE=""
STOP=0

while [ $# -gt 0 ]; do
  case "$1" in
    --url-file) URL_FILE="${2:?--url-file needs a path}"; shift 2 ;;
    --url-file=*) URL_FILE="${1#*=}"; shift ;;
    --stop) STOP=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "postgres.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { echo "postgres.sh: $*" >&2; }

online() {  # is our cluster running? (no pipe into grep -q: pipefail and SIGPIPE)
  local status
  status=$(pg_lsclusters -h "$VERSION" "$CLUSTER" 2>/dev/null || true)
  [[ "$status" == *online* ]]
}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"
  elif [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1; then runuser -u postgres -- "$@"
  elif [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else sudo -n -u postgres -- "$@"
  fi
}

pg_version() {
  # the newest server installed under /usr/lib/postgresql (Debian's layout)
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$dir" ] || return 1
  basename "$(dirname "$(dirname "$dir")")"
}

case "$DB_PASSWORD" in
  ""|*[!A-Za-z0-9._~-]*) log "BANKHIL_PG_PASSWORD: use letters, digits and . _ ~ - only"; exit 2 ;;
esac

if [ "$STOP" -eq 1 ] && ! VERSION=$(pg_version); then
  exit 0  # nothing installed, nothing to stop
fi

if ! VERSION=$(pg_version) || ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing Debian package postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >/dev/null
  VERSION=$(pg_version) || { log "postgresql installed but no server found"; exit 1; }
fi

if [ "$STOP" -eq 1 ]; then
  if online; then
    pg_ctlcluster "$VERSION" "$CLUSTER" stop
    log "stopped cluster $VERSION/$CLUSTER"
  fi
  exit 0
fi

CONF_DIR="/etc/postgresql/$VERSION/$CLUSTER"
if [ ! -f "$CONF_DIR/postgresql.conf" ]; then
  # no cluster (a dropped one may leave our conf.d behind, which pg_createcluster refuses)
  rm -rf "$CONF_DIR"
  log "creating cluster $VERSION/$CLUSTER on 127.0.0.1:$PORT"
  pg_createcluster "$VERSION" "$CLUSTER" --port "$PORT" \
    -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi
PORT=$(pg_conftool -s "$VERSION" "$CLUSTER" show port 2>/dev/null || echo "$PORT")

# Our settings, in the conf.d folder Debian's postgresql.conf includes; rewritten (and the server
# restarted) only when they change.
SETTINGS="# written by bankhil .ci/postgres.sh: a loopback-only, throwaway test server
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
"
mkdir -p "$CONF_DIR/conf.d"
if [ "$(cat "$CONF_DIR/conf.d/bankhil.conf" 2>/dev/null)" != "${SETTINGS%$'\n'}" ]; then
  printf '%s' "$SETTINGS" >"$CONF_DIR/conf.d/bankhil.conf"
  chown -R postgres:postgres "$CONF_DIR/conf.d" 2>/dev/null || true
  if online; then
    log "settings changed: restarting cluster $VERSION/$CLUSTER"
    pg_ctlcluster "$VERSION" "$CLUSTER" restart >&2
  fi
fi

if ! online; then
  log "starting cluster $VERSION/$CLUSTER"
  mkdir -p /var/run/postgresql 2>/dev/null &&
    chown postgres:postgres /var/run/postgresql 2>/dev/null || true
  if ! pg_ctlcluster "$VERSION" "$CLUSTER" start >&2; then
    log "could not start (log: /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log)"
    log "(a throwaway test cluster: 'pg_dropcluster --stop $VERSION $CLUSTER' and run this again)"
    exit 1
  fi
fi

for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.2
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { log "server on 127.0.0.1:$PORT is not ready"; exit 1; }

psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@"; }

# role and database: create when missing, and (re)set the password so the URL below works
psql_admin -v user="$DB_USER" -v pw="$DB_PASSWORD" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'user', :'pw') \gexec
SQL
if [ "$(psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
  log "creating database $DB_NAME"
  as_postgres createdb -p "$PORT" -O "$DB_USER" "$DB_NAME"
fi

URL="postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"
if [ -n "$URL_FILE" ]; then
  mkdir -p "$(dirname "$URL_FILE")"
  (umask 077; printf '%s\n' "$URL" >"$URL_FILE")
fi
log "ready: postgresql://$DB_USER:***@127.0.0.1:$PORT/$DB_NAME"
printf 'export BANKHIL_PG_URL=%q\n' "$URL"
