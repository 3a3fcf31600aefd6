# Prometheus for the compose cluster on a machine that cannot pull prom/prometheus:
# Debian's prometheus package's binaries (2.42; they link only glibc), laid out like the
# official image: /bin/prometheus as the entrypoint, the config at
# /etc/prometheus/prometheus.yml, the working directory and data at /prometheus (the
# compose file's volume), run as nobody. Debian's build stores its data by default in
# /var/lib/prometheus/metrics2/ (the official one in data/, under /prometheus there):
# a link puts it in /prometheus too, for a `command:` that sets no storage path, as the
# compose file's does not.
#   scripts/compose.sh builds it as prom/prometheus:v2.53.2, the tag docker-compose.yml names.
FROM debian:bookworm-slim
COPY prometheus promtool /bin/
COPY web /usr/share/prometheus/web
RUN mkdir -p /etc/prometheus /prometheus /var/lib/prometheus \
 && ln -s /prometheus /var/lib/prometheus/metrics2 \
 && printf 'global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ["localhost:9090"]\n' \
      >/etc/prometheus/prometheus.yml \
 && chown -R nobody:nogroup /etc/prometheus /prometheus
USER nobody
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
# The official image's; compose replaces them with its own `command`.
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
