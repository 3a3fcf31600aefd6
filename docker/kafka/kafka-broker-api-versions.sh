#!/bin/bash
# The API versions check (the compose healthcheck: exits 0 once the broker answers).
exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
