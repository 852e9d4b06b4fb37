# The budgetwarden worker (processor + sink + web) for the Docker path (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY schemas schemas
COPY streams streams
COPY sinks sinks
COPY ops ops
RUN pip install --no-cache-dir -c requirements.lock '.[worker]' && useradd --create-home budgetwarden
USER budgetwarden
ENV BUDGETWARDEN_DATA_DIR=/home/budgetwarden/var \
    BUDGETWARDEN_HTTP_HOST=0.0.0.0
EXPOSE 8088
ENTRYPOINT ["budgetwarden"]
CMD ["worker"]
