# common.sh: shell functions shared by agent.sh and the A2A CGI script (a2a.cgi), sourced by both
# (busybox sh; it defines variables and functions and has no other effect). In the image it lives
# at /common.sh. See agent.sh for what the stub does as a whole.
#
# JSON is read with busybox grep/sed only (no jq). What that relies on:
#   * A string value is matched as "KEY" : "..." with JSON escapes (\" \\ \n ...) allowed inside;
#     the value is returned still escaped, so it can be pasted back into JSON unchanged.
#   * "The first KEY" means the first occurrence in the text, at any depth. The callers only ask
#     for keys whose first occurrence is the one they mean (see there).

WORKSPACE_ID="${WORKSPACE_ID:-}"
PLATFORM_URL="${PLATFORM_URL:-}"
PLATFORM_URL="${PLATFORM_URL%/}"
TOKEN_FILE=/configs/.auth_token
RUN_TOKEN_FILE=/tmp/agent-stub.token   # the workspace token once registered, for the CGI
INBOX=/tmp/inbox.log                   # one line per received message (see agent.sh)
HANDLED=/tmp/agent-stub.delegations    # delegation ids already handled, one a line
REQUEST_TIMEOUT=5
RESP=/tmp/agent-stub.resp              # response body of the last request(); callers may change
ERR=/tmp/agent-stub.err                # wget's stderr of the last request()
CHILD=
TOKEN=
BOOTSTRAPPED=
rc=0

log() {
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) agent-stub[$WORKSPACE_ID]: $*"
}

# run_bg CMD...: run CMD in the background and wait for it, so that a trap (SIGTERM) is handled
# at once instead of after CMD. Status (also left in $rc): CMD's.
run_bg() {
    "$@" &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=
    return "$rc"
}

# pause SECONDS: an interruptible sleep.
pause() {
    run_bg sleep "$1"
}

# load_token: the file's token, unless the platform handed us one at registration.
load_token() {
    [ -n "$BOOTSTRAPPED" ] && return 0
    if [ -r "$TOKEN_FILE" ]; then
        TOKEN="$(tr -d ' \t\r\n' <"$TOKEN_FILE")"
    else
        TOKEN=
    fi
}

# request GET|POST PATH [JSON]: a request to the platform with the bearer token (when there is
# one); the response body goes to $RESP. Status (also in $rc): wget's (non-zero on connection
# and HTTP errors) or timeout's (143 on timeout). Busybox's `wget -T` segfaults (Debian's
# busybox < 1.36.1-5 lacks FEATURE_WGET_TIMEOUT), hence the `timeout` applet.
request() {
    _method=$1
    _url="$PLATFORM_URL$2"
    _data=$3
    load_token
    set -- -q -O -
    if [ -n "$TOKEN" ]; then
        set -- "$@" --header "Authorization: Bearer $TOKEN"
    fi
    if [ "$_method" = POST ]; then
        set -- "$@" --header "Content-Type: application/json" --post-data "$_data"
    fi
    run_bg timeout "$REQUEST_TIMEOUT" wget "$@" "$_url" >"$RESP" 2>"$ERR"
}

# why: the reason for the last failed request, for the log.
why() {
    _reason="$(tail -n 1 "$ERR" 2>/dev/null)"
    [ -n "$_reason" ] || _reason="exit $rc"
    [ "$rc" = 143 ] && _reason="timed out after ${REQUEST_TIMEOUT}s"
    echo "$_reason"
}

# http_status: the HTTP status of the last failed request when the server answered one
# (busybox wget says "server returned error: HTTP/1.1 410 Gone"), else nothing.
http_status() {
    sed -n 's/.*server returned error: HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$ERR" 2>/dev/null | head -n 1
}

# json_str KEY: the first string value of KEY in stdin, still JSON-escaped; nothing when absent
# or not a string (null, number...).
json_str() {
    grep -oE "\"$1\"[[:space:]]*:[[:space:]]*\"([^\"\\\\]|\\\\.)*\"" | head -n 1 \
        | sed -e 's/^[^:]*:[[:space:]]*"//' -e 's/"$//'
}

# json_int KEY: the first non-negative integer value of KEY in stdin (string values don't count).
json_int() {
    grep -oE "\"$1\"[[:space:]]*:[[:space:]]*[0-9]+" | head -n 1 | sed 's/^[^:]*:[[:space:]]*//'
}

# delegation_of TEXT: print the delegation id when TEXT (a JSON-RPC envelope, or an activity row
# holding one) is a delegation to work on: it has "method":"message/send" and a
# "delegation_id":"<id>" (params.message.metadata), and no "method":"delegate_result" anywhere
# (the row's method or the message's metadata: a delegation result is only logged).
delegation_of() {
    printf '%s' "$1" | grep -qE '"method"[[:space:]]*:[[:space:]]*"message/send"' || return 0
    printf '%s' "$1" | grep -qE '"method"[[:space:]]*:[[:space:]]*"delegate_result"' && return 0
    printf '%s' "$1" | json_str delegation_id
}

# update_delegation ID JSON WHAT: POST JSON to the delegation's update path, at most 3 attempts
# 1 s apart; failures are logged.
update_delegation() {
    _n=0
    while :; do
        _n=$((_n + 1))
        if request POST "/workspaces/$WORKSPACE_ID/delegations/$1/update" "$2"; then
            log "delegation $1: update $3 ok (attempt $_n)"
            return 0
        fi
        if [ "$_n" -ge 3 ]; then
            log "delegation $1: update $3 failed (attempt $_n): $(why); giving up"
            return 1
        fi
        log "delegation $1: update $3 failed (attempt $_n): $(why); retrying in 1s"
        pause 1
    done
}

# handle_delegation ID TEXT: work on a delegation: report in_progress, then completed with
# response_preview "done: TEXT" (TEXT as found in the JSON, i.e. still escaped). A delegation id
# is handled once per container (listed in $HANDLED), whichever way it arrived.
handle_delegation() {
    if grep -qxF "$1" "$HANDLED" 2>/dev/null; then
        log "delegation $1: already handled; skipping"
        return 0
    fi
    echo "$1" >>"$HANDLED"
    log "delegation $1: working on it"
    update_delegation "$1" '{"status":"in_progress"}' in_progress
    update_delegation "$1" "{\"status\":\"completed\",\"response_preview\":\"done: $2\"}" completed
}
