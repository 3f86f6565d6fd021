#!/usr/bin/env bash
# OpenTelemetry traces of `warden serve`, read back with the official OTLP definitions (PyPI
# opentelemetry-proto): the OTLP-JSON file, OTLP/HTTP to a collector the test runs on loopback,
# the span tree and attributes, and the trace id in the audit log. See tests/e2e/otel.py.
#
#   tests/e2e/run_otel.sh [WARDEN_BIN]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/e2e/venv.sh run_otel "${1:-}"
exec "$venv/bin/python" tests/e2e/otel.py "$bin"
