# Channel gateway: web server, workers and scheduler in one container.
#   docker build -t channel-gateway .
#   docker run -p 8080:8080 -v $PWD/config.yaml:/etc/gateway/config.yaml:ro -v gateway-data:/var/lib/gateway \
#     channel-gateway
# The image holds no config (and so no credentials): without one mounted at $GATEWAY_CONFIG it refuses to start.
# The GATEWAY_* values below reach the config only where it names them ("${GATEWAY_LISTEN:-...}").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_CONFIG=/etc/gateway/config.yaml \
    GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_STORAGE_URL=sqlite:////var/lib/gateway/gateway.db \
    GATEWAY_DATA_DIR=/var/lib/gateway \
    GATEWAY_JSONL_PATH=/var/lib/gateway/crm.jsonl

RUN groupadd --system gateway && useradd --system --gid gateway --home-dir /var/lib/gateway gateway \
    && mkdir -p /opt/gateway /var/lib/gateway /etc/gateway && chown gateway:gateway /var/lib/gateway

WORKDIR /opt/gateway
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY connectors ./connectors
COPY mappings ./mappings
RUN pip install .

USER gateway
WORKDIR /var/lib/gateway
EXPOSE 8080
VOLUME ["/var/lib/gateway"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["gateway"]
CMD ["run"]
