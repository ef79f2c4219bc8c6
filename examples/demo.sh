#!/usr/bin/env bash
# The whole main job on one machine with Docker and no AWS: build the example app, push it to
# the local directory store, tag it, promote it, pull it back and deploy it blue-green.
#
#   examples/demo.sh            (from the repository root)
#
# Environment:
#   S3DOCK_STORE   where the bucket lives (default: the embedded default local store,
#                  ${XDG_DATA_HOME:-~/.local/share}/s3dock/store)
#   BUSYBOX        a static busybox to put in the image (default /bin/busybox,
#                  from Debian's busybox-static)
#   DEMO_PORT      the host ports the demo serves on: DEMO_PORT (blue) and DEMO_PORT+1 (green),
#                  on 127.0.0.1 (default 18480)
#   DEMO_KEEP=1    leave the deployed container running at the end
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
state=${XDG_STATE_HOME:-$HOME/.local/state}/s3dock/demo
mkdir -p "$state"
cleanup() {
  if [ "${DEMO_KEEP:-0}" != 1 ]; then
    for c in $(docker ps -aq --filter label=io.s3dock.app=hello --filter label=io.s3dock.env=production); do
      docker rm -f "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$state"
  fi
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

say "s3dock deploy --blue-green hello production"
# The service spec a host agent would have in its [[service]] table: container port, the two
# colors' host ports, the health check, and the traffic driver ("none" here: the demo reads the
# serving port from the result; on a host it is nginx or a command).
cat > "$work/service.toml" <<TOML
app = "hello"
env = "production"
container_port = 8080
ports = { blue = $port, green = $((port + 1)) }
drain = "1s"
[health]
path = "/health"
deadline = "30s"
[traffic]
driver = "none"
TOML
result=$(s3dock deploy --blue-green hello production --service "$work/service.toml" --state-dir "$state" --json)
color=$(grep -o '"color": *"[a-z]*"' <<<"$result" | grep -o '[a-z]*"$' | tr -d '"')
served=$port
[ "$color" = green ] && served=$((port + 1))
echo "$result" | grep -E '"(result|color|image)"' | sed 's/^ */  /'
for _ in $(seq 1 50); do
  if page=$(exec 3<>"/dev/tcp/127.0.0.1/$served" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3); then
    if grep -q "hello from s3dock" <<<"$page"; then break; fi
  fi
  sleep 0.2
done
grep -q "hello from s3dock" <<<"${page:-}" || die "the deployed container did not answer on 127.0.0.1:$served"
echo "GET http://127.0.0.1:$served/ ($color) -> $(grep -o '<h1>.*</h1>' <<<"$page")"

say "s3dock history hello"
s3dock history hello --limit 5

say "done"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "hello keeps running on 127.0.0.1:$served (state in $state); run the demo again to see the skips"
else
  echo "the deployed container was removed (DEMO_KEEP=1 keeps it)"
fi
echo "the bucket is the directory $S3DOCK_STORE:"
(cd "$S3DOCK_STORE" && find images tags pointers -type f | sort | sed 's/^/  /')
