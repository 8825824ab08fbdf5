#!/bin/sh
# a2a.cgi: the agent stub's A2A (JSON-RPC) endpoint, a CGI script for busybox httpd, installed
# as /www/cgi-bin/a2a and reached at http://127.0.0.1:<port>/cgi-bin/a2a (see agent.sh).
#
# For every POST: append "<messageId> <body>" to /tmp/inbox.log (the body with CR/LF removed, so
# on one line; messageId is the first "messageId" string in the body, "-" when there is none),
# then answer 200 with a JSON-RPC result
#   {"jsonrpc":"2.0","id":<the request's id>,"result":{"kind":"message","role":"agent",
#    "messageId":"reply-<messageId>","parts":[{"kind":"text","text":"ack <messageId>"}]}}
# The request's id is the first "id" key of the body (a string, number or null; null when
# absent): the envelope's own id comes before anything in params unless the sender orders its
# keys otherwise, and A2A messages use messageId/taskId/contextId, not "id".
# When the body is a delegation (see delegation_of in common.sh) the delegation updates are made
# in the background after the answer, so they don't delay it. Other methods: 405.
#
# httpd passes its environment on (WORKSPACE_ID, PLATFORM_URL); the token comes from
# /tmp/agent-stub.token, written by agent.sh once registered.

. /common.sh

# Our stdout is the HTTP response: keep it on fd 3 and send everything else (logs) to stderr,
# which is httpd's, i.e. the container's log.
exec 3>&1 1>&2

# respond STATUS JSON [HEADER]
respond() {
    _len="$(printf '%s' "$2" | wc -c)"
    {
        printf 'Status: %s\r\nContent-Type: application/json\r\n' "$1"
        [ -n "$3" ] && printf '%s\r\n' "$3"
        printf 'Content-Length: %s\r\nConnection: close\r\n\r\n%s' "$_len" "$2"
    } >&3
}

if [ "$REQUEST_METHOD" != POST ]; then
    respond "405 Method Not Allowed" \
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"only POST is supported"}}' \
        "Allow: POST"
    exit 0
fi

# httpd closes our stdin after CONTENT_LENGTH bytes; head -c is belt and braces.
case "$CONTENT_LENGTH" in
    '' | *[!0-9]*) body="$(cat | tr -d '\r\n')" ;;
    *) body="$(head -c "$CONTENT_LENGTH" | tr -d '\r\n')" ;;
esac

mid="$(printf '%s' "$body" | json_str messageId)"
rpc_id="$(printf '%s' "$body" \
    | grep -oE '"id"[[:space:]]*:[[:space:]]*("([^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|null)' \
    | head -n 1 | sed 's/^"id"[[:space:]]*:[[:space:]]*//')"
[ -n "$rpc_id" ] || rpc_id=null

# One printf, so one append per message (concurrent CGIs don't interleave short lines).
printf '%s %s\n' "${mid:--}" "$body" >>"$INBOX"

delegation="$(delegation_of "$body")"
log "push: received message ${mid:--}${delegation:+ (delegation $delegation)}"

respond "200 OK" "{\"jsonrpc\":\"2.0\",\"id\":$rpc_id,\"result\":{\"kind\":\"message\",\"role\":\"agent\",\"messageId\":\"reply-$mid\",\"parts\":[{\"kind\":\"text\",\"text\":\"ack $mid\"}]}}"

if [ -n "$delegation" ]; then
    text="$(printf '%s' "$body" | json_str text)"
    if [ -r "$RUN_TOKEN_FILE" ]; then
        TOKEN="$(tr -d ' \t\r\n' <"$RUN_TOKEN_FILE")"
        BOOTSTRAPPED=1
    fi
    # Off the response pipe (fd 3 closed, stdin from /dev/null) so httpd finishes the answer now.
    (
        RESP="$(mktemp /tmp/agent-stub-cgi.XXXXXX)"
        ERR="$(mktemp /tmp/agent-stub-cgi.XXXXXX)"
        handle_delegation "$delegation" "$text"
        rm -f "$RESP" "$ERR"
    ) </dev/null 3>&- &
fi
exit 0
