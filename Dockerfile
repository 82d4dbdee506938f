# One image for web, worker, beat and the MQTT bridge.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1 \
    EDGEFLEET_VAR_DIR=/var/lib/edgefleet
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fleet fleet
COPY compression compression
COPY devices devices
COPY ota ota
COPY templates templates
COPY locale locale
COPY manage.py ./
RUN pip install --no-cache-dir . && mkdir -p /var/lib/edgefleet \
    && python manage.py compile_locale \
    && python manage.py collectstatic --noinput -v0
RUN useradd --system --home /var/lib/edgefleet edgefleet && chown -R edgefleet /var/lib/edgefleet
USER edgefleet
EXPOSE 8000
CMD ["gunicorn", "-c", "python:fleet.gunicorn", "fleet.wsgi:application"]
