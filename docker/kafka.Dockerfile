# Apache Kafka for the compose cluster on a machine that cannot pull apache/kafka: a
# bookworm rootfs with Debian's OpenJDK 17 JRE (authsync-local/debian-jre:bookworm,
# imported by scripts/compose.sh), the release's jars from Maven Central
# (scripts/kafka.sh libs), and an entrypoint that reads the same environment as the
# official image's (kafka/run). Laid out like the official image: /opt/kafka/libs,
# /opt/kafka/bin, /opt/kafka/config, user appuser (uid 1000).
#   scripts/compose.sh builds it as apache/kafka:4.1.1 from a context holding libs/ and
#   the files of docker/kafka/.
FROM authsync-local/debian-jre:bookworm
COPY libs /opt/kafka/libs
COPY run kafka-run-class.sh kafka-broker-api-versions.sh kafka-storage.sh kafka-topics.sh /opt/kafka/bin/
COPY log4j2.properties tools-log4j2.properties /opt/kafka/config/
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/appuser appuser \
 # The log dir the compose file mounts a volume on, owned by the broker's user so a
 # fresh named volume is writable; config/ holds the server.properties written at start.
 && mkdir -p /var/lib/kafka/data \
 && chown -R appuser:appuser /var/lib/kafka /opt/kafka/config \
 && chmod 0755 /opt/kafka/bin/*
USER appuser
WORKDIR /home/appuser
ENV PATH=/opt/kafka/bin:$PATH
EXPOSE 9092 9093
ENTRYPOINT ["/opt/kafka/bin/run"]
