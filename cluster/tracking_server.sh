#!/usr/bin/env bash
# The team's MLflow tracking server: MLflow's basic-auth app, runs and users both on PostgreSQL.
# Only named users get in; a user sees an experiment only once it is shared with them
# (default permission NO_PERMISSIONS; docs/cluster.md: users, grants, TLS in front).
#
#   export MLFLOW_AUTH_ADMIN_USERNAME=... MLFLOW_AUTH_ADMIN_PASSWORD=...   # or the credentials file below
#   cluster/tracking_server.sh --backend-store-uri postgresql://mlflow@db-host/mlflow \
#       --auth-database-uri postgresql://mlflow@db-host/mlflow_auth \
#       [--host 127.0.0.1] [--port 5000] [any other `mlflow server` option, e.g. --artifacts-destination URI]
#
# The admin's name and password come from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD,
# or from HNET_TRACKING_CREDENTIALS (default ~/.config/hnet/tracking-admin): lines `username=NAME` and
# `password=SECRET`, mode 600, outside the repository. There is no default: without a password of at
# least 12 characters the server does not start. MLflow uses it to create the admin on the first start
# only; later starts keep the stored one (change it with the update-password API, docs/cluster.md).
# The auth config goes to HNET_TRACKING_DIR (default ~/.config/hnet/tracking-server, mode 700; the file
# 600: its database URI may hold a password). MLFLOW_FLASK_SERVER_SECRET_KEY (the sign-up form's CSRF
# key) is made up per start unless set. `mlflow` is the one on PATH (activate the project's venv).
set -euo pipefail

die() { echo "tracking_server: error: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CREDENTIALS=${HNET_TRACKING_CREDENTIALS:-$HOME/.config/hnet/tracking-admin}
CONFIG_DIR=${HNET_TRACKING_DIR:-$HOME/.config/hnet/tracking-server}
backend="" auth_db="" host=127.0.0.1 port=5000 rest=()
while [ $# -gt 0 ]; do
    case $1 in --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; esac  # --opt=value: as --opt value
    case $1 in
        --backend-store-uri) backend=${2:-}; shift 2 || die "$1 needs a value" ;;
        --auth-database-uri) auth_db=${2:-}; shift 2 || die "$1 needs a value" ;;
        --host) host=${2:-}; shift 2 || die "$1 needs a value" ;;
        --port) port=${2:-}; shift 2 || die "$1 needs a value" ;;
        --app-name|--dev) die "$1 is set by this script (basic-auth, never dev mode)" ;;
        *) rest+=("$1"); shift ;;
    esac
done
[ -n "$backend" ] || die "--backend-store-uri is required (e.g. postgresql://mlflow@db-host/mlflow)"
[ -n "$auth_db" ] || die "--auth-database-uri is required (a PostgreSQL database for the users, e.g. postgresql://mlflow@db-host/mlflow_auth)"
case $auth_db in  # the users and grants are the server's keys: not a file lost with the machine
    postgresql://*|postgresql+*://*) ;;
    *) die "--auth-database-uri must be a PostgreSQL database (postgresql://...), got '${auth_db%%://*}://...'" ;;
esac

# The admin: environment first, else the credentials file (read as data, never sourced).
username=${MLFLOW_AUTH_ADMIN_USERNAME:-} password=${MLFLOW_AUTH_ADMIN_PASSWORD:-}
if [ -z "$password" ] && [ -e "$CREDENTIALS" ]; then
    file=$(realpath "$CREDENTIALS")
    case $file in "$REPO"/*) die "the credentials file $file is inside the repository: move it out (e.g. ~/.config/hnet/tracking-admin)" ;; esac
    mode=$(stat -c %a "$file")
    (( (8#$mode & 8#077) == 0 )) || die "the credentials file $file has mode $mode: others may read it; run chmod 600 $file"
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}  # a file saved on Windows
        case $line in
            username=*) [ -n "$username" ] || username=${line#username=} ;;
            password=*) password=${line#password=} ;;
        esac
    done < "$file"
fi
[ -n "$username" ] || die "no admin username: set MLFLOW_AUTH_ADMIN_USERNAME or a 'username=' line in $CREDENTIALS"
[ -n "$password" ] || die "no admin password: set MLFLOW_AUTH_ADMIN_PASSWORD or a 'password=' line in $CREDENTIALS (mode 600)"
[ ${#password} -ge 12 ] || die "the admin password has ${#password} characters; at least 12 are required"
command -v mlflow >/dev/null || die "mlflow not found on PATH (activate the project's venv; pip install -e '.[auth]')"

# MLflow reads the auth config in every worker, for the server's whole life: a private file that stays.
# It holds no password of ours (MLflow takes the admin's from the environment), only the database URI.
# Checking a password costs ~0.3 s of CPU (a slow hash, by design) and MLflow checks it on every request:
# a sweep's driver makes thousands. A worker that accepted a user's password accepts it again for
# auth_cache_ttl_seconds without the hash (permissions are still checked per request; a changed password
# or deleted user reaches the other workers within that time; 0 turns the cache off).
mkdir -p "$CONFIG_DIR" && chmod 700 "$CONFIG_DIR"
ini="$CONFIG_DIR/basic_auth.ini"
(umask 077 && cat > "$ini" <<EOF
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${auth_db//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
auth_cache_ttl_seconds = ${HNET_TRACKING_AUTH_CACHE_S:-60}
EOF
)
chmod 600 "$ini"
export MLFLOW_AUTH_CONFIG_PATH=$ini MLFLOW_AUTH_ADMIN_USERNAME=$username MLFLOW_AUTH_ADMIN_PASSWORD=$password
# Users who come through an SSH tunnel count as local to MLflow's Assistant, whose tools would run
# commands on this host for any of them: only in its Docker sandbox (without Docker they fail).
export MLFLOW_ENABLE_ASSISTANT_SANDBOX=${MLFLOW_ENABLE_ASSISTANT_SANDBOX:-true}
# MLflow's server-side jobs (GenAI scorers, trace archival: a dozen worker processes) serve no sweep.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
[ "$host" = 127.0.0.1 ] || [ "$host" = localhost ] || \
    echo "tracking_server: warning: listening on $host: passwords cross the network in clear text unless TLS is in front (docs/cluster.md)" >&2
exec mlflow server --app-name basic-auth --backend-store-uri "$backend" --host "$host" --port "$port" "${rest[@]}"
