#!/usr/bin/env bash
# A real OpenID Connect provider for the local stack: NAV's mock-oauth2-server (standalone, from
# Maven Central through infra/local/oidc/pom.xml, copied once into the stack dir) on
# 127.0.0.1:$OIDC_PORT, issuing RS256 tokens in the shapes of a Cognito user pool.
#
# Issuer http://127.0.0.1:$OIDC_PORT/pinksea-pool (any other first path segment is another
# issuer with keys of its own: the "wrong issuer" of the tests); its JWKS is <issuer>/jwks and its
# discovery document <issuer>/.well-known/openid-configuration. infra/local/oidc/config.json
# gives the tokens Cognito's claims, chosen by the token request:
#   - authorization code (the hosted sign-in page, PKCE optional): the ID token has
#     aud = the client id, token_use "id", cognito:username, email;
#   - password grant: the access token has no aud, token_use "access" and client_id;
#   - users named admin-* are in the cognito:groups "admin" in both.
# Any client id is accepted: a token asked for another client is the "wrong audience".
#
# Env: OIDC_PORT (8090), OIDC_CONFIG (infra/local/oidc/config.json), OIDC_HEAP (128m),
# JAVA (java), PINKSEA_STACK_DIR.
SERVICE=oidc
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OIDC_PORT=${OIDC_PORT:-8090}
OIDC_CONFIG=${OIDC_CONFIG:-$LOCAL_DIR/oidc/config.json}
OIDC_HEAP=${OIDC_HEAP:-128m}
OIDC_ISSUER_ID=pinksea-pool
JAVA=${JAVA:-java}
POM=$LOCAL_DIR/oidc/pom.xml
LIBS=$STACK_DIR/oidc/libs
MAIN_CLASS=no.nav.security.mock.oauth2.StandaloneMockOAuth2ServerKt

# The real readiness check: the issuer's discovery document names the issuer.
oidc_answers() {
  curl -sf --max-time 3 "http://$HOST:$OIDC_PORT/$OIDC_ISSUER_ID/.well-known/openid-configuration" \
    2>/dev/null | grep -qE "\"issuer\" *: *\"http://$HOST:$OIDC_PORT/$OIDC_ISSUER_ID\""
}

start() {
  command -v curl >/dev/null || apt_install curl
  if oidc_answers; then
    say "already running on $HOST:$OIDC_PORT"
    return
  fi
  if ! live_pid oidc "$MAIN_CLASS" >/dev/null; then
    port_open "$OIDC_PORT" && die "port $OIDC_PORT is taken by something that is not the OIDC provider; set OIDC_PORT"
    [ -r "$OIDC_CONFIG" ] || die "no token configuration at $OIDC_CONFIG"
    ensure_java "mock-oauth2-server 6"
    ensure_jars "$POM" "$LIBS" "mock-oauth2-server"
    say "starting on $HOST:$OIDC_PORT (issuer /$OIDC_ISSUER_ID, config $OIDC_CONFIG)"
    # SERVER_HOSTNAME binds loopback only; the config is read from JSON_CONFIG_PATH at start.
    SERVER_HOSTNAME=$HOST SERVER_PORT=$OIDC_PORT JSON_CONFIG_PATH=$OIDC_CONFIG LOG_LEVEL=INFO \
      spawn oidc "$JAVA" -Xms32m -Xmx"$OIDC_HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.awt.headless=true -cp "$LIBS/*" "$MAIN_CLASS"
  fi
  wait_ready oidc "$MAIN_CLASS" oidc_answers
  say "ready on $HOST:$OIDC_PORT"
}

stop() {
  stop_pid oidc "$MAIN_CLASS" 10
}

status() {
  if oidc_answers; then
    echo "oidc      up    $HOST:$OIDC_PORT  issuer http://$HOST:$OIDC_PORT/$OIDC_ISSUER_ID  $(ls "$LIBS" | sed -n 's/^mock-oauth2-server-\(.*\)\.jar$/mock-oauth2-server \1/p')"
  else
    echo "oidc      down  $HOST:$OIDC_PORT"
    return 1
  fi
}

main start stop status "$@"
