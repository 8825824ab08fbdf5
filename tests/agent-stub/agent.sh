#!/bin/sh
# agent-stub: a minimal stand-in for a workspace agent (busybox sh, with common.sh and the CGI
# script a2a.cgi). What a test can rely on:
#
#  1. A2A endpoint. Before registering, it starts busybox httpd on 127.0.0.1:<port>, the port
#     picked at random in 20000-39999 (host network is shared with other stubs; up to 20 ports are
#     tried, then the stub exits 1). Its JSON-RPC endpoint is http://127.0.0.1:<port>/cgi-bin/a2a
#     (a2a.cgi): every POST appends "<messageId> <body on one line>" to /tmp/inbox.log and is
#     answered 200 {"jsonrpc":"2.0","id":<request id>,"result":{"kind":"message","role":"agent",
#     "messageId":"reply-<messageId>","parts":[{"kind":"text","text":"ack <messageId>"}]}};
#     other methods get 405. The server runs whatever the delivery mode.
#  2. Registration: POST $PLATFORM_URL/registry/register
#       {"id":"<WORKSPACE_ID>","url":"http://127.0.0.1:<port>/cgi-bin/a2a","agent_card":{"name":"agent-stub"}}
#     retried every second until accepted.
#  3. Delivery mode: GET $PLATFORM_URL/workspaces/<WORKSPACE_ID> right after registering (retried
#     every second; after 10 failures poll is assumed) and again after every heartbeat;
#     "delivery_mode":"push" means push, "poll"/null/absent mean poll.
#  4. Heartbeat: POST $PLATFORM_URL/registry/heartbeat
#       {"workspace_id":"<WORKSPACE_ID>","uptime_seconds":<n>,"active_tasks":0}
#     every HEARTBEAT_INTERVAL_SECONDS (give or take a second), forever; failures are logged.
#  5. Poll mode only: about every second,
#       GET $PLATFORM_URL/workspaces/<WORKSPACE_ID>/activity?type=a2a_receive&since_id=<cursor>&limit=1
#     starting at cursor 0. A row (the answer is [] or [<row>]) is appended to /tmp/inbox.log as
#     "<row id> <row JSON on one line>", the cursor becomes its id and the stub asks again at once.
#     410 (cursor gone): logged, cursor back to 0, rows up to the last one handled are skipped.
#     The cursor is kept in /tmp/agent-stub.cursor, so `docker restart` carries on from it.
#  6. Delegations, either mode: a message/send whose params.message.metadata has
#     "delegation_id":"<id>" (and no "method":"delegate_result" anywhere) makes the stub
#       POST $PLATFORM_URL/workspaces/<WORKSPACE_ID>/delegations/<id>/update {"status":"in_progress"}
#       POST (same path) {"status":"completed","response_preview":"done: <first text part>"}
#     each tried up to 3 times 1 s apart (failures logged). In push mode this happens after the
#     HTTP answer. A delegation id is handled once per container (/tmp/agent-stub.delegations).
#     Anything else (e.g. delegate_result) is only logged in /tmp/inbox.log.
# All platform requests after registration carry "Authorization: Bearer <workspace token>".
#
# Environment:
#   WORKSPACE_ID                 required
#   PLATFORM_URL                 required, e.g. http://127.0.0.1:8080 (containers use network mode host)
#   HEARTBEAT_INTERVAL_SECONDS   optional, default 5
# The credential is read from /configs/.auth_token when present (no Authorization header
# otherwise): at first the single-use bootstrap secret the platform wrote there before start.
# The register response then carries {"auth_token":"..."}, the workspace token, which is used
# from then on and saved over the secret (best effort), so a restarted container reuses it; it
# is also written to /tmp/agent-stub.token for the CGI script.
#
# Notes on busybox:
#   * Debian's busybox (< 1.36.1-5) is built without FEATURE_WGET_TIMEOUT and `wget -T N`
#     segfaults, so requests are bounded with the `timeout` applet instead.
#   * A foreground command delays trap handling until it ends, so every sleep and request runs
#     in the background followed by `wait $!`; SIGTERM then stops the stub at once. httpd is
#     killed on the way out; it could not keep the container alive anyway, as this shell is
#     PID 1.
#   * JSON is read with grep/sed (see common.sh). The activity row's id is its first "id" key
#     with an integer value: the row's own id comes before its request_body (the platform puts it
#     first), and ids inside the JSON-RPC envelope that might come earlier are not looked at.

. /common.sh

INTERVAL="${HEARTBEAT_INTERVAL_SECONDS:-5}"
WWW=/www                          # httpd's home; the CGI script is $WWW/cgi-bin/a2a
A2A_PATH=/cgi-bin/a2a
CURSOR_FILE=/tmp/agent-stub.cursor
HTTPD_PID=
PORT=

on_term() {
    log "received $1, exiting"
    [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null
    [ -n "$HTTPD_PID" ] && kill "$HTTPD_PID" 2>/dev/null
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
# A token from an earlier run of this container is not the CGI's to use before we register.
rm -f "$RUN_TOKEN_FILE"

START="$(date +%s)"
log "starting: platform=$PLATFORM_URL heartbeat_interval=${INTERVAL}s"

# --- A2A endpoint: busybox httpd on a random free port ----------------------------------------
# start_httpd PORT: start httpd on 127.0.0.1:PORT; 0 once it serves there. It exits at once when
# the port is taken; to be sure the server answering is ours (not another stub's) it must return
# our nonce from $WWW/stub-id.
NONCE="$WORKSPACE_ID-$$-$RANDOM-$START"
printf '%s\n' "$NONCE" >"$WWW/stub-id"
start_httpd() {
    httpd -f -p "127.0.0.1:$1" -h "$WWW" &
    HTTPD_PID=$!
    _try=0
    while [ "$_try" -lt 20 ]; do
        _try=$((_try + 1))
        _got="$(timeout 2 wget -q -Y off -O - "http://127.0.0.1:$1/stub-id" 2>/dev/null)"
        [ "$_got" = "$NONCE" ] && return 0
        # Another server answered on that port, or ours has exited (bind failed).
        [ -n "$_got" ] && break
        kill -0 "$HTTPD_PID" 2>/dev/null || break
        pause 0.1
    done
    kill "$HTTPD_PID" 2>/dev/null
    wait "$HTTPD_PID" 2>/dev/null
    HTTPD_PID=
    return 1
}

attempt=0
while :; do
    attempt=$((attempt + 1))
    PORT=$((20000 + $RANDOM % 20000))
    if start_httpd "$PORT"; then
        break
    fi
    if [ "$attempt" -ge 20 ]; then
        log "could not start the A2A server (tried 20 ports); exiting"
        exit 1
    fi
    log "A2A server could not start on port $PORT; trying another"
done
A2A_URL="http://127.0.0.1:$PORT$A2A_PATH"
log "A2A server (httpd pid $HTTPD_PID) listening at $A2A_URL"

# check_httpd: restart httpd on the same (registered) port should it have died.
check_httpd() {
    if [ -n "$HTTPD_PID" ] && kill -0 "$HTTPD_PID" 2>/dev/null; then
        return 0
    fi
    log "A2A server is gone; restarting it on port $PORT"
    if start_httpd "$PORT"; then
        log "A2A server restarted (httpd pid $HTTPD_PID)"
    else
        log "A2A server could not be restarted on port $PORT; will try again"
    fi
}

# --- register, retrying every second until the platform accepts it ---------------------------
REGISTER_BODY="{\"id\":\"$WORKSPACE_ID\",\"url\":\"$A2A_URL\",\"agent_card\":{\"name\":\"agent-stub\"}}"
attempt=0
while :; do
    attempt=$((attempt + 1))
    load_token
    if [ -n "$TOKEN" ]; then auth="with token"; else auth="without token"; fi
    if request POST /registry/register "$REGISTER_BODY"; then
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
load_token
if [ -n "$TOKEN" ]; then
    (umask 077 && printf '%s\n' "$TOKEN" >"$RUN_TOKEN_FILE")
fi

# --- delivery mode ----------------------------------------------------------------------------
MODE=
MODE_FAILS=0
# fetch_mode: read the workspace's delivery_mode into MODE (push|poll); on failure MODE stays
# as it was (after 10 failures in a row with no mode known yet, poll is assumed).
fetch_mode() {
    if request GET "/workspaces/$WORKSPACE_ID"; then
        MODE_FAILS=0
        case "$(tr -d '\r\n' <"$RESP" | json_str delivery_mode)" in
            push) _mode=push ;;
            *) _mode=poll ;; # "poll", null or absent
        esac
        if [ "$_mode" != "$MODE" ]; then
            log "delivery mode: $_mode${MODE:+ (was $MODE)}"
            MODE=$_mode
        fi
        return 0
    fi
    MODE_FAILS=$((MODE_FAILS + 1))
    log "reading the workspace's delivery mode failed: $(why)"
    if [ -z "$MODE" ] && [ "$MODE_FAILS" -ge 10 ]; then
        MODE=poll
        log "delivery mode: assuming poll after $MODE_FAILS failures"
    fi
    return 1
}

# --- poll mode --------------------------------------------------------------------------------
CURSOR=0    # since_id for the next poll
LAST_ID=0   # highest row id logged and handled
if [ -r "$CURSOR_FILE" ]; then
    read -r _c _l <"$CURSOR_FILE"
    case "$_c:$_l" in
        :* | *: | *[!0-9:]*) ;;
        *) CURSOR=$_c LAST_ID=$_l; log "resuming polling after row $CURSOR" ;;
    esac
fi
POLL_FAILS=0

# poll_once: ask for the next a2a_receive row. 0 when one came (ask again at once), else 1.
poll_once() {
    if ! request GET "/workspaces/$WORKSPACE_ID/activity?type=a2a_receive&since_id=$CURSOR&limit=1"; then
        if [ "$(http_status)" = 410 ]; then
            log "poll: since_id=$CURSOR is gone (410); starting over from 0, skipping rows up to $LAST_ID"
            CURSOR=0
            echo "$CURSOR $LAST_ID" >"$CURSOR_FILE"
        else
            # Logged when it starts failing and then every 30th time.
            [ $((POLL_FAILS % 30)) -eq 0 ] && log "poll failed (${POLL_FAILS} before): $(why)"
            POLL_FAILS=$((POLL_FAILS + 1))
        fi
        return 1
    fi
    if [ "$POLL_FAILS" -gt 0 ]; then
        log "poll ok again after $POLL_FAILS failures"
        POLL_FAILS=0
    fi
    # [] or [{"id":42,...}] (limit=1), possibly spread over several lines.
    _row="$(tr -d '\r\n' <"$RESP" | sed -e 's/^[[:space:]]*\[[[:space:]]*//' -e 's/[[:space:]]*\][[:space:]]*$//')"
    [ -n "$_row" ] || return 1
    _id="$(printf '%s' "$_row" | json_int id)"
    if [ -z "$_id" ]; then
        log "poll: no row id in the answer: $(printf '%s' "$_row" | head -c 300)"
        return 1
    fi
    CURSOR=$_id
    if [ "$_id" -le "$LAST_ID" ]; then
        echo "$CURSOR $LAST_ID" >"$CURSOR_FILE"
        return 0
    fi
    LAST_ID=$_id
    echo "$CURSOR $LAST_ID" >"$CURSOR_FILE"
    printf '%s %s\n' "$_id" "$_row" >>"$INBOX"
    _delegation="$(delegation_of "$_row")"
    log "poll: received row $_id${_delegation:+ (delegation $_delegation)}"
    if [ -n "$_delegation" ]; then
        # The message's first text part: the first "text" after "request_body".
        handle_delegation "$_delegation" "$(printf '%s' "${_row#*\"request_body\"}" | json_str text)"
    fi
    return 0
}

# --- main loop: poll (in poll mode) about every second, heartbeat every INTERVAL --------------
NEXT_HEARTBEAT=$(($(date +%s) + INTERVAL))
while :; do
    [ -n "$MODE" ] || fetch_mode
    more=
    if [ "$MODE" = poll ]; then
        _n=0
        while poll_once; do
            _n=$((_n + 1))
            # Drain, but let a heartbeat through every 50 rows.
            if [ "$_n" -ge 50 ]; then more=1; break; fi
        done
    fi
    now="$(date +%s)"
    if [ "$now" -ge "$NEXT_HEARTBEAT" ]; then
        NEXT_HEARTBEAT=$((now + INTERVAL))
        uptime=$((now - START))
        if request POST /registry/heartbeat "{\"workspace_id\":\"$WORKSPACE_ID\",\"uptime_seconds\":$uptime,\"active_tasks\":0}"; then
            log "heartbeat ok (uptime ${uptime}s)"
        else
            log "heartbeat failed (uptime ${uptime}s): $(why)"
        fi
        check_httpd
        fetch_mode
    fi
    [ -n "$more" ] || pause 1
done
