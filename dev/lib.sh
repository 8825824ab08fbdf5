# shellcheck shell=bash
# Shared helpers for dev/up, dev/test and dev/build-stub-image. Source it; do not run it.
# Everything here is idempotent. Messages go to stderr so that functions which "return" a
# value by printing it (start_throwaway_pg, pg_bindir, ...) can be used in $(...).

# Repository root (the parent of this file's directory).
WS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export WS_ROOT

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# as_root CMD...: run CMD as root (directly when we are root, else through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# Wait up to this long for another apt/dpkg process to release its lock.
APT_LOCK_TIMEOUT="${APT_LOCK_TIMEOUT:-600}"
_WS_APT_UPDATED=0

# ensure_apt_packages PKG...: install the Debian packages that are not installed yet
# (`apt-get update` once per shell, only when something is missing).
ensure_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get to install them"
    if [ "$_WS_APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" update -qq >&2
        _WS_APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------------------------
# Static busybox (for the agent stub image)
# ---------------------------------------------------------------------------------------------

# is_static_binary FILE: true when FILE is a statically linked executable.
is_static_binary() {
    local f="$1"
    [ -x "$f" ] || return 1
    if command -v file >/dev/null 2>&1; then
        file -L "$f" | grep -Eq 'statically linked|static-pie linked'
    else
        # glibc's ldd says "not a dynamic executable" (and fails) for static binaries.
        ! ldd "$f" >/dev/null 2>&1
    fi
}

# ensure_static_busybox: print the path of a static busybox, installing busybox-static
# (which replaces the dynamically linked `busybox` package) when needed.
ensure_static_busybox() {
    local bb=/bin/busybox
    if ! is_static_binary "$bb"; then
        ensure_apt_packages file busybox-static
        is_static_binary "$bb" || die "$bb is not a static binary even after installing busybox-static"
    fi
    echo "$bb"
}

# ---------------------------------------------------------------------------------------------
# Docker
# ---------------------------------------------------------------------------------------------

# docker_available: true when a Docker engine answers.
docker_available() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

# docker_build ARGS...: `docker build ARGS...` with BuildKit when the client has buildx, else
# with the classic builder (recent clients refuse BuildKit without the buildx plugin).
docker_build() {
    if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
        DOCKER_BUILDKIT=0 docker build "$@"
    else
        docker build "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# Throwaway PostgreSQL clusters
# ---------------------------------------------------------------------------------------------

# pg_bindir: print the directory holding initdb/pg_ctl/postgres (newest in
# /usr/lib/postgresql/*/bin first, then PATH); fails when there is none.
pg_bindir() {
    local d
    while IFS= read -r d; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -rV)
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

# ensure_postgres: install PostgreSQL's server from Debian when no initdb is found.
ensure_postgres() {
    if ! pg_bindir >/dev/null; then
        ensure_apt_packages postgresql
        pg_bindir >/dev/null || die "initdb not found after installing postgresql"
    fi
}

# _pg_run DIR CMD...: run CMD (in DIR) as the cluster's owner: user postgres when we are root
# (postgres refuses to run as root), else ourselves.
_pg_run() {
    local dir="$1"
    shift
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

# throwaway_pg_running DIR: true when the cluster in DIR is running.
throwaway_pg_running() {
    local dir="$1" bindir
    [ -f "$dir/data/PG_VERSION" ] || return 1
    bindir="$(pg_bindir)" || return 1
    _pg_run "$dir" "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

# start_throwaway_pg DIR PORT [NAME=VALUE...]: make sure a PostgreSQL cluster lives in DIR
# (data in DIR/data, unix socket in DIR, log in DIR/postgres.log) and runs on 127.0.0.1:PORT
# with trust authentication and max_connections=300; extra NAME=VALUE server settings (e.g.
# fsync=off) may follow. A running cluster with the same settings is reused; one with other
# settings is restarted. Prints postgres://postgres@127.0.0.1:PORT/postgres.
start_throwaway_pg() {
    [ "$#" -ge 2 ] || die "usage: start_throwaway_pg DIR PORT [NAME=VALUE...]"
    local dir="$1" port="$2"
    shift 2
    local bindir data conf settings s
    ensure_postgres
    bindir="$(pg_bindir)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    data="$dir/data"

    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 ||
            useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        chown postgres: "$dir"
        chmod 700 "$dir"
        runuser -u postgres -- test -w "$dir" -a -x "$dir" ||
            die "user postgres cannot reach $dir (a parent directory is not searchable by others); use another directory"
    fi

    if [ ! -f "$data/PG_VERSION" ]; then
        # Left over from an interrupted initdb: it is ours, start again.
        rm -rf "$data"
        log "initdb $data"
        _pg_run "$dir" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C \
            >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            die "initdb failed in $data"
        }
        printf "\ninclude_if_exists = 'throwaway.conf'\n" >>"$data/postgresql.conf"
        # host lines for 127.0.0.1/::1 are trust already (-A trust); make it explicit anyway.
        grep -q '^host all all 127.0.0.1/32 trust' "$data/pg_hba.conf" ||
            echo 'host all all 127.0.0.1/32 trust' >>"$data/pg_hba.conf"
    fi

    settings="# Written by dev/lib.sh start_throwaway_pg; rewritten at every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
"
    for s in "$@"; do
        [[ "$s" == *=* ]] || die "start_throwaway_pg: setting '$s' is not NAME=VALUE"
        settings+="${s%%=*} = '${s#*=}'"$'\n'
    done
    conf="$data/throwaway.conf"

    if throwaway_pg_running "$dir"; then
        if [ "$(cat "$conf" 2>/dev/null)" = "${settings%$'\n'}" ] &&
            "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5; then
            log "PostgreSQL in $dir already running on 127.0.0.1:$port; reusing it"
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            return 0
        fi
        log "PostgreSQL in $dir runs with other settings; restarting it"
        _pg_run "$dir" "$bindir/pg_ctl" -D "$data" -m fast -w stop >&2
    fi

    printf '%s' "$settings" >"$conf"
    [ "$(id -u)" -ne 0 ] || chown -R postgres: "$data"
    log "starting PostgreSQL in $dir on 127.0.0.1:$port (log: $dir/postgres.log)"
    if ! _pg_run "$dir" "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 start >&2; then
        tail -n 30 "$dir/postgres.log" >&2 || true
        die "PostgreSQL did not start in $dir (is port $port taken?)"
    fi

    local deadline=$((SECONDS + 60))
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$dir/postgres.log" >&2 || true
            die "PostgreSQL in $dir did not answer on 127.0.0.1:$port within 60s"
        fi
        sleep 0.2
    done
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}

# stop_throwaway_pg DIR: stop the cluster in DIR if it runs (its data stays).
stop_throwaway_pg() {
    local dir="$1" bindir
    [ -f "$dir/data/PG_VERSION" ] || return 0
    dir="$(cd "$dir" && pwd)"
    bindir="$(pg_bindir)" || return 0
    if throwaway_pg_running "$dir"; then
        log "stopping PostgreSQL in $dir"
        _pg_run "$dir" "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2
    fi
}

# ---------------------------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------------------------

# ensure_cargo: make `cargo` reachable (rustup installs it in ~/.cargo/bin, which a
# non-login shell may not have on PATH).
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo" ]; then
            export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
        else
            die "cargo not found; install the Rust toolchain (https://rustup.rs)"
        fi
    fi
}

# cargo_env: export CARGO_TARGET_DIR, defaulting to ~/.cache/ws-target, and
# SQLX_OFFLINE=true. apalis-postgres checks its queries when it compiles: with DATABASE_URL
# set (dev/up sets it before building) it would check them against that database, which has
# no apalis schema until the first migration, and the build fails. Offline it uses the query
# data it ships. Our own crates check no query at compile time.
cargo_env() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/ws-target}"
    export SQLX_OFFLINE=true
}

# ensure_moto: the EC2 API emulator (moto server, from PyPI) the EC2 tests run against.
MOTO_VERSION=5.2.5
ensure_moto() {
    if command -v moto_server >/dev/null 2>&1 && python3 -c 'import moto, flask' >/dev/null 2>&1; then
        return 0
    fi
    command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || ensure_apt_packages python3-pip
    log "installing moto[server]==$MOTO_VERSION from PyPI"
    local pip=pip3
    command -v pip3 >/dev/null 2>&1 || pip=pip
    "$pip" install --quiet "moto[server]==$MOTO_VERSION" 2>/dev/null ||
        "$pip" install --quiet --break-system-packages "moto[server]==$MOTO_VERSION"
    command -v moto_server >/dev/null 2>&1 || die "moto_server is not on PATH after installing moto[server]"
}

# ensure_schemathesis: the API fuzzer (from PyPI) the openapi suite test runs against a live api,
# in a venv of its own so its dependencies never meet moto's. Exports SCHEMATHESIS_BIN.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
    local venv="${SCHEMATHESIS_VENV:-$HOME/.cache/ws-schemathesis}"
    if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
        rm -rf "$venv"
        # Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            rm -rf "$venv"
            ensure_apt_packages python3-venv
            python3 -m venv "$venv"
        }
        log "installing schemathesis==$SCHEMATHESIS_VERSION from PyPI into $venv"
        "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
        "$venv/bin/schemathesis" --version >/dev/null || die "schemathesis does not run after installing it"
    fi
    export SCHEMATHESIS_BIN="$venv/bin/schemathesis"
}

# start_moto PORT LOGFILE: starts moto_server on 127.0.0.1:PORT in the background, waits until it
# answers (deadline 60 s) and prints its PID.
start_moto() {
    local port="$1" logfile="$2" pid i
    moto_server -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
    pid=$!
    for i in $(seq 1 600); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" >/dev/null 2>&1; then
            echo "$pid"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "moto_server exited"; }
        sleep 0.1
        : "$i"
    done
    kill "$pid" 2>/dev/null || true
    die "moto_server did not answer on 127.0.0.1:$port within 60 s"
}
