#!/bin/sh
# agent-stub: a minimal stand-in for a workspace agent (busybox sh). It registers the workspace
# with the platform, then sends a heartbeat every HEARTBEAT_INTERVAL_SECONDS, forever.
#
# Environment:
#   WORKSPACE_ID                 required
#   PLATFORM_URL                 required, e.g. http://127.0.0.1:8080 (containers use network mode host)
#   HEARTBEAT_INTERVAL_SECONDS   optional, default 5
# The token is read from /configs/.auth_token when present (no Authorization header otherwise).
# When the register response carries {"auth_token":"..."} (bootstrap), that token is used from
# then on and saved to /configs/.auth_token (best effort), so a restarted container reuses it.
#
# Notes on busybox:
#   * Debian's busybox (< 1.36.1-5) is built without FEATURE_WGET_TIMEOUT and `wget -T N`
#     segfaults, so requests are bounded with the `timeout` applet instead.
#   * A foreground command delays trap handling until it ends, so every sleep and request runs
#     in the background followed by `wait $!`; SIGTERM then stops the stub at once.

WORKSPACE_ID="${WORKSPACE_ID:-}"
PLATFORM_URL="${PLATFORM_URL:-}"
PLATFORM_URL="${PLATFORM_URL%/}"
INTERVAL="${HEARTBEAT_INTERVAL_SECONDS:-5}"
TOKEN_FILE=/configs/.auth_token
REQUEST_TIMEOUT=5
RESP=/tmp/agent-stub.resp
ERR=/tmp/agent-stub.err
CHILD=

log() {
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) agent-stub[$WORKSPACE_ID]: $*"
}

on_term() {
    log "received $1, exiting"
    [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null
    exit 0
}
trap 'on_term SIGTERM' TERM
trap 'on_term SIGINT' INT

if [ -z "$WORKSPACE_ID" ] || [ -z "$PLATFORM_URL" ]; then
    log "WORKSPACE_ID and PLATFORM_URL must be set"
    exit 2
fi
case "$INTERVAL" in
    '' | *[!0-9]*) log "HEARTBEAT_INTERVAL_SECONDS=$INTERVAL is not a whole number; using 5"; INTERVAL=5 ;;
esac
[ "$INTERVAL" -gt 0 ] || INTERVAL=1

mkdir -p /tmp 2>/dev/null

TOKEN=
BOOTSTRAPPED=
# The file's token, unless the platform handed us one at registration.
load_token() {
    [ -n "$BOOTSTRAPPED" ] && return 0
    if [ -r "$TOKEN_FILE" ]; then
        TOKEN="$(tr -d ' \t\r\n' <"$TOKEN_FILE")"
    else
        TOKEN=
    fi
}

# pause SECONDS: an interruptible sleep.
pause() {
    sleep "$1" &
    CHILD=$!
    wait "$CHILD"
    CHILD=
}

# post PATH JSON: POST to the platform; the response body goes to $RESP. Status (also left in
# $rc): wget's (non-zero on connection and HTTP errors) or timeout's (143 on timeout).
post() {
    load_token
    if [ -n "$TOKEN" ]; then
        timeout "$REQUEST_TIMEOUT" wget -q -O - \
            --header "Content-Type: application/json" \
            --header "Authorization: Bearer $TOKEN" \
            --post-data "$2" "$PLATFORM_URL$1" >"$RESP" 2>"$ERR" &
    else
        timeout "$REQUEST_TIMEOUT" wget -q -O - \
            --header "Content-Type: application/json" \
            --post-data "$2" "$PLATFORM_URL$1" >"$RESP" 2>"$ERR" &
    fi
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=
    return "$rc"
}

# why: the reason for the last failed request, for the log.
why() {
    reason="$(tail -n 1 "$ERR" 2>/dev/null)"
    [ -n "$reason" ] || reason="exit $rc"
    [ "$rc" = 143 ] && reason="timed out after ${REQUEST_TIMEOUT}s"
    echo "$reason"
}

START="$(date +%s)"
log "starting: platform=$PLATFORM_URL heartbeat_interval=${INTERVAL}s"

# --- register, retrying every second until the platform accepts it ---------------------------
REGISTER_BODY="{\"id\":\"$WORKSPACE_ID\",\"url\":\"http://127.0.0.1:8000\",\"agent_card\":{\"name\":\"agent-stub\"}}"
attempt=0
while :; do
    attempt=$((attempt + 1))
    load_token
    if [ -n "$TOKEN" ]; then auth="with token"; else auth="without token"; fi
    if post /registry/register "$REGISTER_BODY"; then
        log "register ok (attempt $attempt, $auth)"
        break
    fi
    log "register failed (attempt $attempt, $auth): $(why); retrying in 1s"
    pause 1
done

NEW_TOKEN="$(sed -n 's/.*"auth_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$RESP" | head -n 1)"
if [ -n "$NEW_TOKEN" ]; then
    TOKEN="$NEW_TOKEN"
    BOOTSTRAPPED=1
    log "received auth token at registration; using it from now on"
    if mkdir -p "${TOKEN_FILE%/*}" 2>/dev/null && (umask 077 && printf '%s\n' "$TOKEN" >"$TOKEN_FILE") 2>/dev/null; then
        log "saved auth token to $TOKEN_FILE"
    fi
fi

# --- heartbeat forever; failures are logged and ignored ---------------------------------------
while :; do
    pause "$INTERVAL"
    uptime=$(($(date +%s) - START))
    if post /registry/heartbeat "{\"workspace_id\":\"$WORKSPACE_ID\",\"uptime_seconds\":$uptime,\"active_tasks\":0}"; then
        log "heartbeat ok (uptime ${uptime}s)"
    else
        log "heartbeat failed (uptime ${uptime}s): $(why)"
    fi
done
