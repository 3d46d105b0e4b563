#!/usr/bin/env bash
# Build the test image pyhistory-test-redis:7 from the host's own redis-server, FROM scratch,
# so the testcontainers path works where no image can be pulled.
#
#   tests/docker/build-image.sh [TAG]        (default TAG: pyhistory-test-redis:7)
#   REDIS_SERVER=/path/to/redis-server tests/docker/build-image.sh pyhistory-test-redis:8
#
# Needs: a running Docker engine (`docker info` works), ldd, and a dynamically linked
# redis-server (default /usr/bin/redis-server, Debian's redis-server package).
set -euo pipefail

TAG="${1:-pyhistory-test-redis:7}"
BINARY="${REDIS_SERVER:-/usr/bin/redis-server}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[ -x "$BINARY" ] || { echo "no redis-server at $BINARY (apt-get install redis-server)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (is dockerd running?)" >&2; exit 1; }

CTX="$(mktemp -d -t pyhistory-image-XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
ROOT="$CTX/rootfs"
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc" "$ROOT/data" "$ROOT/tmp"

install -m 0755 "$(readlink -f "$BINARY")" "$ROOT/usr/local/bin/redis-server"

# Every shared object ldd lists ("name => /path (addr)" and the loader "/path (addr)"), copied
# with symlinks resolved to the path the binary asks for.
ldd "$BINARY" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' |
while read -r lib; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done

cat > "$ROOT/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
redis:x:999:999:redis:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat > "$ROOT/etc/group" <<'GROUP'
root:x:0:
redis:x:999:
nogroup:x:65534:
GROUP
chown 999:999 "$ROOT/data" 2>/dev/null || chmod 0777 "$ROOT/data"
chmod 1777 "$ROOT/tmp"

cp "$HERE/Dockerfile" "$CTX/Dockerfile"
# The legacy builder needs no buildx plugin; DOCKER_BUILDKIT=1 in the environment still wins.
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build --tag "$TAG" "$CTX"

# Smoke test: the binary runs inside the image.
docker run --rm "$TAG" redis-server --version
echo "built $TAG from $BINARY"
