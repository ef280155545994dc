#!/usr/bin/env bash
# The Redis tests start their own redis-server processes; make sure the binaries exist.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "redis-server not found: installing it with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  exit 0
fi
echo "redis-server is required for the tests: install it (e.g. 'sudo apt-get install redis-server')" >&2
exit 1
