#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the multi-worker sweep test (tests/test_sweep_postgres.py)
# and the MLflow server test (tests/test_cluster.py: its backend store, a database of its own, since
# Optuna and MLflow both keep an alembic_version table).
#
#   eval "$(.ci/postgres.sh)"      # starts it if needed, exports RLEXP_TEST_POSTGRES_URL and
#                                  # RLEXP_TEST_MLFLOW_POSTGRES_URL (SQLAlchemy's psycopg2 dialect named:
#                                  # its default for postgresql:// is psycopg 3, not installed)
#   .ci/postgres.sh stop           # stops it (the data dir is kept)
#
# Idempotent: safe to call when the server already runs (it is reused, nothing is recreated).
# As root it installs the `postgresql` package when no server binaries are found, and runs the
# server as the `postgres` user. Data dir: $RLEXP_PG_DATA (default /tmp/rlexp-postgres); port:
# 5432 or the next free one (remembered in the data dir). Only the export lines go to stdout.
set -euo pipefail

DATA=${RLEXP_PG_DATA:-/tmp/rlexp-postgres}
DB=rlexp_test
MLFLOW_DB=rlexp_mlflow
ROLE=rlexp
PASSWORD=rlexp
log() { echo "postgres.sh: $*" >&2; }

find_bin() {  # a directory with pg_ctl, initdb and psql: Debian's versioned dir first, then PATH
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV) \
             "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/x)")"; do
        [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && [ -x "$d/psql" ] && { echo "$d"; return; }
    done
}

BIN=$(find_bin)
if [ -z "$BIN" ]; then
    [ "$(id -u)" = 0 ] || { log "no PostgreSQL binaries and not root: install postgresql first"; exit 1; }
    log "installing postgresql (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null; }
    BIN=$(find_bin)
    [ -n "$BIN" ] || { log "postgresql installed but pg_ctl/initdb not found"; exit 1; }
fi

# run server commands as `postgres` when root (the server refuses to run as root)
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DATA" --shell /bin/sh postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

if [ "${1:-}" = stop ]; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true
    exit 0
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ ! -s "$DATA/PG_VERSION" ]; then
    log "initdb in $DATA"
    mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
    chmod 700 "$DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
fi

if as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    PORT=$(cat "$DATA/rlexp.port")
    log "server already running on 127.0.0.1:$PORT"
else
    PORT=5432
    while ! port_free "$PORT"; do PORT=$((PORT + 1)); [ "$PORT" -lt 5500 ] || { log "no free port"; exit 1; }; done
    echo "$PORT" | as_pg tee "$DATA/rlexp.port" >/dev/null
    log "starting the server on 127.0.0.1:$PORT"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c max_connections=200" start >/dev/null
fi

psql_pg() { as_pg "$BIN/psql" -h "$DATA" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"; }
if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_pg -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
fi
for db in "$DB" "$MLFLOW_DB"; do
    if [ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
        psql_pg -c "CREATE DATABASE $db OWNER $ROLE"
    fi
done

URL="postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
log "ready: $URL"
echo "export RLEXP_TEST_POSTGRES_URL=$URL"
echo "export RLEXP_TEST_MLFLOW_POSTGRES_URL=postgresql+psycopg2://$ROLE:$PASSWORD@127.0.0.1:$PORT/$MLFLOW_DB"
