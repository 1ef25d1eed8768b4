# The Gatepass worker image: `docker compose up` builds it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEPASS_SCHEMAS_DIR=/app/schemas \
    GATEPASS_POLICY_DIR=/app/policies \
    GATEPASS_HOME=/var/lib/gatepass \
    GATEPASS_WEB_HOST=0.0.0.0

WORKDIR /app

# Sources first, then one install: pyproject.toml pins every runtime dependency.
COPY pyproject.toml ./
COPY streams/ streams/
COPY schemas/ schemas/
COPY policies/ policies/
RUN pip install . \
    && useradd --create-home --uid 10001 gatepass \
    && mkdir -p /var/lib/gatepass && chown gatepass /var/lib/gatepass

USER gatepass

ENTRYPOINT ["gatepass"]
CMD ["worker"]
