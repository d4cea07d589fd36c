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
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP (512m),
# KAFKA_AUTO_CREATE_TOPICS (true), KAFKA_NUM_PARTITIONS (3), JAVA (java), PINKSEA_STACK_DIR.
SERVICE=kafka
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
KAFKA_AUTO_CREATE_TOPICS=${KAFKA_AUTO_CREATE_TOPICS:-true}
KAFKA_NUM_PARTITIONS=${KAFKA_NUM_PARTITIONS:-3}
JAVA=${JAVA:-java}
POM=$LOCAL_DIR/kafka/pom.xml
KAFKA_HOME=$STACK_DIR/kafka
LIBS=$KAFKA_HOME/libs
DATA=$KAFKA_HOME/data
CONF=$KAFKA_HOME/config

ensure_java() {
  if ! command -v "$JAVA" >/dev/null; then
    apt_install openjdk-17-jre-headless
  fi
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major:-0}" -ge 17 ] 2>/dev/null || die "Kafka 4 needs Java 17+, $JAVA is ${major:-unknown}"
}

# Copy the broker's runtime classpath from the local Maven repository (~/.m2, downloading from
# Maven Central on first use). A marker holding the pom's hash makes this a no-op afterwards.
ensure_jars() {
  local want
  want=$(sha1sum "$POM" | cut -c1-40)
  if [ "$(cat "$LIBS/.pom.sha1" 2>/dev/null)" = "$want" ]; then
    return
  fi
  command -v mvn >/dev/null || apt_install maven
  say "resolving broker jars with Maven (first run downloads from Maven Central)"
  rm -rf "$LIBS"
  mkdir -p "$LIBS"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIBS" >"$LOG_DIR/kafka-mvn.log" 2>&1; then
    say "ERROR: Maven could not resolve the Kafka jars"
    tail -n 40 "$LOG_DIR/kafka-mvn.log" >&2
    exit 1
  fi
  echo "$want" >"$LIBS/.pom.sha1"
}

# Regenerated on every start so port/env changes take effect; the node id and log dir are fixed.
write_config() {
  mkdir -p "$CONF" "$DATA" "$LOG_DIR/kafka"
  cat >"$CONF/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
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
  local cluster_id
  cluster_id=$(java_tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  say "formatting storage (cluster $cluster_id)"
  if ! java_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF/server.properties" \
    >>"$(logfile kafka)" 2>&1; then
    say "ERROR: kafka-storage format failed"
    tail_log kafka
    exit 1
  fi
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

start() {
  if kafka_answers; then
    say "already running on $HOST:$KAFKA_PORT"
    return
  fi
  if ! live_pid kafka kafka.Kafka >/dev/null; then
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something that is not our broker; set KAFKA_PORT"
    port_open "$KAFKA_CONTROLLER_PORT" && die "port $KAFKA_CONTROLLER_PORT is taken; set KAFKA_CONTROLLER_PORT"
    ensure_java
    ensure_jars
    write_config
    format_storage
    say "starting on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP)"
    spawn kafka "$JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC \
      -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$CONF/log4j2.xml" -Dkafka.logs.dir="$LOG_DIR/kafka" \
      -cp "$LIBS/*" kafka.Kafka "$CONF/server.properties"
  fi
  wait_ready kafka kafka.Kafka kafka_answers
  say "ready on $HOST:$KAFKA_PORT"
}

stop() {
  # A controlled shutdown of a single node takes a few seconds.
  stop_pid kafka kafka.Kafka 30
}

status() {
  if kafka_answers; then
    echo "kafka     up    $HOST:$KAFKA_PORT  $(ls "$LIBS" | sed -n 's/^kafka_2\.13-\(.*\)\.jar$/\1/p')  data $DATA"
  else
    echo "kafka     down  $HOST:$KAFKA_PORT"
    return 1
  fi
}

main start stop status "$@"
