#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the services the integration tests use when we can (root:
# PostgreSQL on loopback, headless Chromium), then run the default test suite (not the slow tier).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if pg_env=$(bash .ci/postgres.sh); then
    eval "$pg_env"
  else
    echo "scripts/test.sh: PostgreSQL could not be started; its tests will skip"
  fi
  if ! command -v chromium >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
      || echo "scripts/test.sh: chromium could not be installed; the browser test will skip"
  fi
fi
if [ "${CI:-}" = "true" ]; then  # CI must exercise the server and browser tests, not skip them
  [ -n "${RLEXP_TEST_POSTGRES_URL:-}" ] || { echo "scripts/test.sh: CI needs PostgreSQL"; exit 1; }
  command -v chromium >/dev/null || { echo "scripts/test.sh: CI needs chromium"; exit 1; }
fi
. .venv/bin/activate
ruff check rlexp analysis benchmarks tests hydra_plugins
mypy
set +e
python -m pytest -q -rs -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected: that is a failure here, not a pass
exit $rc
