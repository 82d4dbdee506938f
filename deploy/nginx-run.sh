#!/bin/sh
# Render deploy/nginx.conf.template and run nginx in the foreground.
# Usage: NGINX_LISTEN=8080 NGINX_UPSTREAM_SERVERS="server web:8000;" nginx-run.sh TEMPLATE
# Only EdgeFleet's placeholders are substituted (envsubst with an explicit list),
# so nginx's own $variables reach nginx untouched.
set -eu
template=${1:?usage: nginx-run.sh TEMPLATE}
: "${NGINX_LISTEN:=8080}"
: "${NGINX_UPSTREAM_SERVERS:=server web:8000;}"
: "${NGINX_RUN_DIR:=/tmp/edgefleet-nginx}"
export NGINX_LISTEN NGINX_UPSTREAM_SERVERS NGINX_RUN_DIR
mkdir -p "$NGINX_RUN_DIR"
envsubst '${NGINX_LISTEN} ${NGINX_UPSTREAM_SERVERS} ${NGINX_RUN_DIR}' \
    <"$template" >"$NGINX_RUN_DIR/nginx.conf"
nginx -t -q -c "$NGINX_RUN_DIR/nginx.conf"
exec nginx -c "$NGINX_RUN_DIR/nginx.conf" -g 'daemon off;'
