# fxcu in a container: the same install as README (`pip install -e .` of this checkout, pinned
# versions from pyproject.toml), run as a non-root user, with all state in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg \
    FXCU_DATA_DIR=/data

RUN useradd --create-home --uid 1000 fxcu && mkdir -p /app /data && chown fxcu:fxcu /data
WORKDIR /app
COPY pyproject.toml README.md fxcu.py ./
# the shipped seed history: a first run with no network still forecasts (data/seed/README.md)
COPY data/seed/ ./data/seed/
RUN pip install -e .

USER fxcu
VOLUME ["/data"]
ENTRYPOINT ["fxcu"]
CMD ["run", "7d"]
