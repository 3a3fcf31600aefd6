#!/usr/bin/env bash
# Apache Kafka for the tests, the chaos harness and the benchmarks: one broker in KRaft
# mode (broker and controller in one process) on loopback, from the release's jars on
# Maven Central, fetched once into a cache outside the clone.
#
#   scripts/kafka.sh fetch              the jars, into $AUTHSYNC_TOOLS_DIR/kafka-<version>/libs
#   scripts/kafka.sh libs               prints that directory (fetching first if needed)
#   scripts/kafka.sh run DIR [PORT]     runs a broker in the foreground (exec java)
#   scripts/kafka.sh start DIR [PORT]   the same in the background; waits until it listens
#   scripts/kafka.sh kill DIR           SIGKILL, as a crash would (the log dirs stay)
#   scripts/kafka.sh stop DIR           SIGTERM, then SIGKILL after 30 s
#
# DIR holds the broker's config, its log dirs, its output (broker.log) and its pid. The
# first start formats the log dirs; a later start on the same DIR reuses them, the same
# ports and the same cluster id, as a restarted broker would. PORT is the client port
# (the controller listens on PORT+1); without it a free pair is picked on the first start.
set -euo pipefail

VERSION="${AUTHSYNC_KAFKA_VERSION:-4.1.1}"
TOOLS="${AUTHSYNC_TOOLS_DIR:-$HOME/.cache/authsync-tools}"
HOME_DIR="$TOOLS/kafka-$VERSION"
LIBS="$HOME_DIR/libs"
JAVA="${JAVA:-java}"

fetch() {
    if [ -f "$HOME_DIR/complete" ]; then
        return
    fi
    echo "fetching Apache Kafka $VERSION's jars from Maven Central into $LIBS (about 60 MB, once)" >&2
    local work
    work="$(mktemp -d)"
    # The broker (kafka_2.13), the command-line tools (kafka-tools: the API-versions
    # check the compose healthcheck runs), and log4j's binding for the SLF4J 2 API.
    cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>authsync.tools</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
  </dependencies>
</project>
EOF
    mkdir -p "$HOME_DIR"
    rm -rf "$LIBS.partial"
    (cd "$work" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory="$LIBS.partial" -DincludeScope=runtime) >&2
    # SLF4J 1.7 arrives with an old dependency; with both on the class path the broker
    # logs nothing.
    rm -f "$LIBS.partial"/slf4j-api-1.*.jar
    rm -rf "$LIBS" && mv "$LIBS.partial" "$LIBS"
    # Warnings and errors only, to standard output (broker.log when started here).
    cat >"$HOME_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
EOF
    rm -rf "$work"
    touch "$HOME_DIR/complete"
}

free_pair() {
    python3 - <<'EOF'
import socket
for _ in range(200):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1))
    except OSError:
        a.close(); b.close(); continue
    a.close(); b.close(); print(p); break
EOF
}

# Writes DIR/server.properties and formats DIR/data on the first start.
prepare() {
    local dir="$1" port="${2:-}"
    if [ ! -f "$dir/server.properties" ]; then
        [ -n "$port" ] || port="$(free_pair)"
        if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1024 ] || [ "$port" -gt 65534 ]; then
            echo "PORT must be a number from 1024 to 65534 (the controller takes PORT+1): $port" >&2
            exit 2
        fi
        mkdir -p "$dir"
        cat >"$dir/server.properties" <<EOF
node.id=1
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.voters=1@127.0.0.1:$((port + 1))
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# The log cleaner looks for work every second (15 s by default), so a test sees
# compaction within its bounds.
log.cleaner.backoff.ms=1000
EOF
        echo "$port" >"$dir/port"
    fi
    if [ ! -f "$dir/data/meta.properties" ]; then
        local id
        id="$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)"
        "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool format -t "$id" \
            -c "$dir/server.properties" >"$dir/format.log" 2>&1
    fi
}

# The broker's command line, in the array `java_cmd`.
java_cmd=()
broker_cmd() {
    java_cmd=("$JAVA" -Xms256m "-Xmx${AUTHSYNC_KAFKA_HEAP:-768m}" -XX:+UseG1GC
        "-Dlog4j2.configurationFile=$HOME_DIR/log4j2.properties"
        -cp "$LIBS/*" kafka.Kafka "$1/server.properties")
}

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd="${1:-}"
case "$cmd" in
fetch)
    fetch
    ;;
libs)
    fetch
    echo "$LIBS"
    ;;
run | start)
    [ $# -ge 2 ] || { echo "usage: $0 $cmd DIR [PORT]" >&2; exit 2; }
    fetch
    dir="$(realpath -m "$2")"
    prepare "$dir" "${3:-}"
    broker_cmd "$dir"
    if [ "$cmd" = run ]; then
        exec "${java_cmd[@]}"
    fi
    port="$(cat "$dir/port")"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "a broker already runs from $dir (pid $(cat "$dir/pid"))" >&2
        exit 1
    fi
    nohup "${java_cmd[@]}" >>"$dir/broker.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    for _ in $(seq 600); do
        if listening "$port"; then
            echo "127.0.0.1:$port"
            exit 0
        fi
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "the broker in $dir exited; its log:" >&2
            tail -20 "$dir/broker.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "the broker in $dir did not listen on 127.0.0.1:$port within 60 s" >&2
    exit 1
    ;;
kill | stop)
    [ $# -ge 2 ] || { echo "usage: $0 $cmd DIR" >&2; exit 2; }
    dir="$(realpath -m "$2")"
    [ -f "$dir/pid" ] || exit 0
    pid="$(cat "$dir/pid")"
    if [ "$cmd" = kill ]; then
        kill -KILL "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/pid"
    ;;
*)
    echo "usage: $0 fetch | libs | run DIR [PORT] | start DIR [PORT] | kill DIR | stop DIR" >&2
    exit 2
    ;;
esac
