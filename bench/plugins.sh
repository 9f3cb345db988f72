#!/usr/bin/env bash
# bench/plugins.sh — the router plugin in each language, side by side: proxy requests/s and the
# CPU time the plugin adds to each request, for Rust, JavaScript (componentize-js) and Python
# (componentize-py), each with reused instances and with a fresh instance per request.
#
# A preset of bench/proxy.sh: one Mediary per target (--workers 1, pinned to PROXY_CPU), the same
# public channel and upstream, the router plugin (plugins/{rust,js,python}/router) on the channel,
# and "mediary" (no plugin) as the baseline. Every request path (/1k) has no FHIR resource type,
# so each router takes its fallback route after the whole decision (config, path, log line). The
# report's "Router plugins by language" table is the one plugins/README.md quotes.
#
# Environment: everything bench/proxy.sh takes (DURATION, ROUNDS, MEDIARY_BIN, ROUTER_WASM,
# JS_ROUTER_WASM, PY_ROUTER_WASM, ...); the defaults here are
#   TARGETS  mediary and the six router targets
#   SIZES    1k
#   CONNS    64
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export TARGETS=${TARGETS:-"mediary mediary-router mediary-router-fresh mediary-router-js mediary-router-js-fresh mediary-router-py mediary-router-py-fresh"}
export SIZES=${SIZES:-1k}
export CONNS=${CONNS:-64}
exec "$SCRIPT_DIR/proxy.sh" "$@"
