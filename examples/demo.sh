#!/usr/bin/env bash
# The whole main job on one machine with Docker and no AWS: build the example app, push it to
# the local directory store, tag it, promote it, pull it back and run it.
#
#   examples/demo.sh            (from the repository root)
#
# Environment:
#   S3DOCK_STORE   where the bucket lives (default: the embedded default local store,
#                  ${XDG_DATA_HOME:-~/.local/share}/s3dock/store)
#   BUSYBOX        a static busybox to put in the image (default /bin/busybox,
#                  from Debian's busybox-static)
#   DEMO_PORT      the host port the demo serves on (default 18480, on 127.0.0.1)
#
# The example is committed into a throw-away git repository with a fixed author and date, so
# every run produces the same commit and the same tag: a second run shows the skips (push up
# to date, tag and promote no-ops).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

command -v docker >/dev/null || die "Docker is required (https://docs.docker.com/engine/install/)"
docker version >/dev/null 2>&1 || die "the Docker engine is not reachable; start it or set DOCKER_HOST"
command -v git >/dev/null || die "git is required"
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "a static busybox is needed for the example image: apt-get install busybox-static (or set BUSYBOX=/path/to/busybox)"
file -L "$busybox" 2>/dev/null | grep -q "statically linked" || echo "demo: warning: $busybox may not be static; the FROM scratch image needs a static binary" >&2

say "building the s3dock CLI"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/s3dock/target}
(cd "$root" && cargo build --quiet --bin s3dock)
s3dock() { "$CARGO_TARGET_DIR/debug/s3dock" "$@"; }

export S3DOCK_STORE=${S3DOCK_STORE:-${XDG_DATA_HOME:-$HOME/.local/share}/s3dock/store}
port=${DEMO_PORT:-18480}
work=$(mktemp -d)
container=""
cleanup() {
  [ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "preparing the example app in a git repository ($work)"
cp -R "$root/examples/hello/." "$work/"
cp "$busybox" "$work/busybox"
git -C "$work" init -q
git -C "$work" add -A
export GIT_AUTHOR_NAME="s3dock demo" GIT_AUTHOR_EMAIL="demo@example.com" GIT_AUTHOR_DATE="2025-07-21T21:18:00Z"
export GIT_COMMITTER_NAME="s3dock demo" GIT_COMMITTER_EMAIL="demo@example.com" GIT_COMMITTER_DATE="2025-07-21T21:18:00Z"
git -C "$work" commit -q -m "hello, s3dock"

say "s3dock build hello"
image=$(s3dock build hello --context "$work")
echo "$image"

say "s3dock push $image"
s3dock push "$image"

say "s3dock tag $image v1.0.0"
s3dock tag "$image" v1.0.0

say "s3dock promote hello v1.0.0 production"
s3dock promote hello v1.0.0 production

say "s3dock current hello production"
s3dock current hello production

say "docker rmi $image, then s3dock pull hello production"
docker rmi -f "$image" >/dev/null
s3dock pull hello production

say "running $image on 127.0.0.1:$port"
container=$(docker run -d --rm -p "127.0.0.1:$port:8080" "$image")
for _ in $(seq 1 50); do
  if page=$(exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3); then
    if grep -q "hello from s3dock" <<<"$page"; then break; fi
  fi
  sleep 0.2
done
grep -q "hello from s3dock" <<<"${page:-}" || die "the container did not answer on 127.0.0.1:$port"
echo "GET http://127.0.0.1:$port/ -> $(grep -o '<h1>.*</h1>' <<<"$page")"

say "s3dock history hello"
s3dock history hello --limit 5

say "done"
echo "the bucket is the directory $S3DOCK_STORE:"
(cd "$S3DOCK_STORE" && find images tags pointers -type f | sort | sed 's/^/  /')
