#!/usr/bin/env bash
# Apache Kafka 4.x for the local stack: one KRaft node (broker + controller in one JVM),
# PLAINTEXT on 127.0.0.1:$KAFKA_PORT, controller on 127.0.0.1:$KAFKA_CONTROLLER_PORT.
# The broker jars come from Maven Central through infra/local/kafka/pom.xml, copied once into
# the stack dir (re-resolved only when the pom changes); storage is formatted once.
#
# Topic auto-creation is ON (Kafka's default) so any local producer works on a fresh stack;
# MSK in production has it off, so code that owns topics must still create them explicitly.
# Set KAFKA_AUTO_CREATE_TOPICS=false to run locally like production.
#
# Production rehearsal: with KAFKA_SASL_SSL_PORT set, the broker also listens with SASL_SSL
# (TLS + SCRAM-SHA-512; MSK's IAM mechanism cannot run here) on 127.0.0.1:$KAFKA_SASL_SSL_PORT.
# A private CA and the broker's certificate are generated once under $STACK_DIR/kafka/tls/;
# clients trust ca.pem (PINKSEA_KAFKA_SSL_CAFILE). The SCRAM user is created when the storage
# is formatted, or through the running broker when an existing storage lacks it (or its password
# changed). PLAINTEXT stays on $KAFKA_PORT for the controller, replication and this script's
# own checks, as MSK keeps its internal listeners apart from the clients' one. No authorizer:
# an authenticated user may do whatever the processes do (create topics, idempotent produce,
# consumer groups), which on MSK the IAM policy grants.
#
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP (1g),
# KAFKA_AUTO_CREATE_TOPICS (true), KAFKA_NUM_PARTITIONS (3), JAVA (java), PINKSEA_STACK_DIR,
# KAFKA_SASL_SSL_PORT (unset: no SASL_SSL listener), KAFKA_SCRAM_USER (pinksea),
# KAFKA_SCRAM_PASSWORD (pinksea-scram-secret).
SERVICE=kafka
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${KAFKA_HEAP:-1g}
KAFKA_AUTO_CREATE_TOPICS=${KAFKA_AUTO_CREATE_TOPICS:-true}
KAFKA_NUM_PARTITIONS=${KAFKA_NUM_PARTITIONS:-3}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-}
KAFKA_SCRAM_USER=${KAFKA_SCRAM_USER:-pinksea}
KAFKA_SCRAM_PASSWORD=${KAFKA_SCRAM_PASSWORD:-pinksea-scram-secret}
JAVA=${JAVA:-java}
POM=$LOCAL_DIR/kafka/pom.xml
KAFKA_HOME=$STACK_DIR/kafka
LIBS=$KAFKA_HOME/libs
DATA=$KAFKA_HOME/data
CONF=$KAFKA_HOME/config
TLS=$KAFKA_HOME/tls
CA_FILE=$TLS/ca.pem
# The rehearsal listener's client settings, for this script's check and for operators
# (kafka-topics --command-config); it holds the password, so only its owner may read it.
SASL_CLIENT_CONF=$CONF/sasl-client.properties
# Holds a hash of cluster id, user and password once that credential is in that storage.
SCRAM_MARKER=$KAFKA_HOME/scram-user.sha1

sasl_enabled() { [ -n "$KAFKA_SASL_SSL_PORT" ]; }

# User and password are spliced into Kafka's bracketed SCRAM syntax and into a JAAS line,
# which have no escapes.
check_scram_credential() {
  case $KAFKA_SCRAM_USER in
    "" | *[!A-Za-z0-9._-]*) die "KAFKA_SCRAM_USER may hold only letters, digits, '.', '_', '-'" ;;
  esac
  case $KAFKA_SCRAM_PASSWORD in
    "" | *[[:space:]\"\'\\,=\;\[\]]*)
      die "KAFKA_SCRAM_PASSWORD must be non-empty, without blanks, quotes, '\\', ',', '=', ';', '[', ']'"
      ;;
  esac
}

# A private CA and a broker certificate for 127.0.0.1 and localhost, generated once: clients
# verify the broker against ca.pem, host name included, as they verify MSK against a public CA.
# Built in a scratch dir and renamed, so an interrupted run never leaves half a CA behind.
ensure_tls() {
  [ -s "$CA_FILE" ] && [ -s "$TLS/broker.pem" ] && return
  command -v openssl >/dev/null || apt_install openssl
  say "generating a local CA and the broker certificate in $TLS"
  local tmp=$TLS.tmp log
  log=$(logfile kafka)
  rm -rf "$tmp"
  mkdir -p "$tmp"
  chmod 700 "$tmp"
  cat >"$tmp/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Pinksea local Kafka CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[broker]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:$HOST, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  {
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 -config "$tmp/openssl.cnf" \
      -extensions ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem" &&
      openssl req -new -newkey rsa:2048 -nodes -sha256 -config "$tmp/openssl.cnf" \
        -subj "/CN=$HOST" -keyout "$tmp/broker.key" -out "$tmp/broker.csr" &&
      openssl x509 -req -in "$tmp/broker.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days 3650 -sha256 -extfile "$tmp/openssl.cnf" -extensions broker \
        -out "$tmp/broker.crt"
  } >>"$log" 2>&1 || {
    say "ERROR: openssl could not create the certificates"
    tail_log kafka
    exit 1
  }
  # Kafka's PEM key store: the unencrypted PKCS#8 key, then the chain up to the CA.
  (umask 077 && cat "$tmp/broker.key" "$tmp/broker.crt" "$tmp/ca.pem" >"$tmp/broker.pem")
  rm -f "$tmp/broker.csr" "$tmp/ca.srl"
  # Anyone may read the certificates (clients trust ca.pem); the keys stay the owner's.
  chmod 755 "$tmp"
  chmod 600 "$tmp/ca.key" "$tmp/broker.key" "$tmp/broker.pem"
  rm -rf "$TLS"
  mv "$tmp" "$TLS"
}

# The listener lines of server.properties: PLAINTEXT alone, or PLAINTEXT and SASL_SSL.
listener_config() {
  local plain=PLAINTEXT://$HOST:$KAFKA_PORT controller=CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
  if ! sasl_enabled; then
    cat <<EOF
listeners=$plain,$controller
advertised.listeners=$plain
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
EOF
    return
  fi
  local sasl=SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT
  cat <<EOF
listeners=$plain,$sasl,$controller
advertised.listeners=$plain,$sasl
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker.pem
listener.name.sasl_ssl.ssl.client.auth=none
EOF
}

write_sasl_client_config() {
  (
    umask 077
    cat >"$SASL_CLIENT_CONF" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SCRAM_USER" password="$KAFKA_SCRAM_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$CA_FILE
EOF
  )
}

# Regenerated on every start so port/env changes take effect; the node id and log dir are fixed.
write_config() {
  mkdir -p "$CONF" "$DATA" "$LOG_DIR/kafka"
  cat >"$CONF/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
$(listener_config)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=$KAFKA_NUM_PARTITIONS
auto.create.topics.enable=$KAFKA_AUTO_CREATE_TOPICS
delete.topic.enable=true
# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
# Consumer groups start at once (tests and local runs, not a rolling deploy).
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  # log4j2 in XML: log4j-core reads it without optional parsers (Kafka ships YAML).
  cat >"$CONF/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
EOF
}

java_tool() {
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$CONF/log4j2.xml" \
    -cp "$LIBS/*" "$@"
}

format_storage() {
  [ -s "$DATA/meta.properties" ] && return
  local cluster_id scram=()
  cluster_id=$(java_tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  if sasl_enabled; then
    # KRaft keeps the credential in the bootstrap metadata: there before the first client.
    scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
  fi
  say "formatting storage (cluster $cluster_id)"
  if ! java_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF/server.properties" \
    "${scram[@]}" >>"$(logfile kafka)" 2>&1; then
    say "ERROR: kafka-storage format failed"
    tail_log kafka
    exit 1
  fi
  if sasl_enabled; then scram_fingerprint >"$SCRAM_MARKER"; fi
}

scram_fingerprint() {
  printf '%s\n' "$(sed -n 's/^cluster.id=//p' "$DATA/meta.properties")" "$KAFKA_SCRAM_USER" \
    "$KAFKA_SCRAM_PASSWORD" | sha1sum | cut -c1-40
}

# A storage formatted earlier (without SASL, or for another user or password) gets the
# credential through the running broker (kafka-configs). A no-op when the marker matches.
ensure_scram_user() {
  [ "$(cat "$SCRAM_MARKER" 2>/dev/null)" = "$(scram_fingerprint)" ] && return
  say "setting the SCRAM-SHA-512 credential of $KAFKA_SCRAM_USER"
  if ! java_tool kafka.admin.ConfigCommand --bootstrap-server "$HOST:$KAFKA_PORT" --alter \
    --entity-type users --entity-name "$KAFKA_SCRAM_USER" \
    --add-config "SCRAM-SHA-512=[password=$KAFKA_SCRAM_PASSWORD]" >>"$(logfile kafka)" 2>&1; then
    say "ERROR: kafka-configs could not set the SCRAM credential"
    tail_log kafka
    exit 1
  fi
  scram_fingerprint >"$SCRAM_MARKER"
}

# The real readiness check: an Admin client lists topics (a metadata request answered by the
# broker, which needs the controller up). Port probe first: a JVM start costs ~1 s.
kafka_answers() {
  port_open "$KAFKA_PORT" && [ -d "$LIBS" ] &&
    timeout 20 "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$CONF/log4j2.xml" -cp "$LIBS/*" \
      org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" --list \
      >/dev/null 2>&1
}

# The same through the rehearsal listener, as its clients connect: TLS verified against
# ca.pem, then a SCRAM login.
sasl_answers() {
  port_open "$KAFKA_SASL_SSL_PORT" &&
    timeout 20 "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$CONF/log4j2.xml" -cp "$LIBS/*" \
      org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_SASL_SSL_PORT" \
      --command-config "$SASL_CLIENT_CONF" --list >/dev/null 2>&1
}

# After the PLAINTEXT check passed: the credential, then a real SASL_SSL round trip.
start_sasl() {
  ensure_scram_user
  write_sasl_client_config
  wait_ready kafka kafka.Kafka sasl_answers
  say "SASL_SSL (SCRAM-SHA-512) on $HOST:$KAFKA_SASL_SSL_PORT, user $KAFKA_SCRAM_USER, CA file $CA_FILE"
}

start() {
  if sasl_enabled; then check_scram_credential; fi
  if kafka_answers; then
    if sasl_enabled; then
      port_open "$KAFKA_SASL_SSL_PORT" ||
        die "running on $HOST:$KAFKA_PORT without a SASL_SSL listener on $KAFKA_SASL_SSL_PORT; stop it first"
      start_sasl
    fi
    say "already running on $HOST:$KAFKA_PORT"
    return
  fi
  if ! live_pid kafka kafka.Kafka >/dev/null; then
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something that is not our broker; set KAFKA_PORT"
    port_open "$KAFKA_CONTROLLER_PORT" && die "port $KAFKA_CONTROLLER_PORT is taken; set KAFKA_CONTROLLER_PORT"
    if sasl_enabled && port_open "$KAFKA_SASL_SSL_PORT"; then
      die "port $KAFKA_SASL_SSL_PORT is taken; set KAFKA_SASL_SSL_PORT"
    fi
    ensure_java "Kafka 4"
    ensure_jars "$POM" "$LIBS" "the Kafka jars"
    if sasl_enabled; then ensure_tls; fi
    write_config
    format_storage
    say "starting on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP)"
    spawn kafka "$JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC \
      -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$CONF/log4j2.xml" -Dkafka.logs.dir="$LOG_DIR/kafka" \
      -cp "$LIBS/*" kafka.Kafka "$CONF/server.properties"
  fi
  wait_ready kafka kafka.Kafka kafka_answers
  if sasl_enabled; then start_sasl; fi
  say "ready on $HOST:$KAFKA_PORT"
}

stop() {
  # A controlled shutdown of a single node takes a few seconds.
  stop_pid kafka kafka.Kafka 30
}

status() {
  if ! kafka_answers; then
    echo "kafka     down  $HOST:$KAFKA_PORT"
    return 1
  fi
  echo "kafka     up    $HOST:$KAFKA_PORT  $(ls "$LIBS" | sed -n 's/^kafka_2\.13-\(.*\)\.jar$/\1/p')  data $DATA"
  sasl_enabled || return 0
  if port_open "$KAFKA_SASL_SSL_PORT"; then
    echo "kafka     up    $HOST:$KAFKA_SASL_SSL_PORT  SASL_SSL SCRAM-SHA-512 user $KAFKA_SCRAM_USER  CA $CA_FILE"
  else
    echo "kafka     down  $HOST:$KAFKA_SASL_SSL_PORT  (SASL_SSL)"
    return 1
  fi
}

main start stop status "$@"
