#!/bin/bash
# kafka-run-class.sh CLASS ARGS...: runs a Kafka tool on the image's jars, logging
# warnings only, to standard error. A short-lived JVM (serial GC, the C1 compiler only)
# starts in about a second, which matters for a healthcheck run every 10 s.
# KAFKA_OPTS is a word list (JVM options), split on spaces on purpose.
# shellcheck disable=SC2086
exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 ${KAFKA_OPTS:-} \
    -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties \
    -cp '/opt/kafka/libs/*' "$@"
