#!/usr/bin/env bash
# Quickstart: builds Skiff, starts `skiff server` in the background, makes a small demo image
# (busybox httpd) as a docker archive, imports it, deploys it, and asks its URL.
# Needs root (Skiff creates namespaces, overlay mounts and cgroups) and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "error: run as root (sudo): skiff server creates namespaces, overlay mounts and cgroups" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! [ -x /bin/busybox ] || ! command -v curl >/dev/null || ! command -v nft >/dev/null \
  || ! dpkg-query -W libseccomp-dev >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq busybox-static curl nftables libseccomp-dev
fi
cargo build --release --bin skiff
BIN="$PWD/target/release/skiff"
export SKIFF_DATA_DIR="${SKIFF_DATA_DIR:-/var/lib/skiff}"

if ! curl -fs http://127.0.0.1:8081/healthz >/dev/null 2>&1; then
  mkdir -p "$SKIFF_DATA_DIR"
  nohup "$BIN" server >"$SKIFF_DATA_DIR/server.log" 2>&1 &
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:8081/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "skiff server is running (pid $!, log $SKIFF_DATA_DIR/server.log)"
fi

# A docker archive (the `docker save` format) built by hand: one uncompressed layer.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/www" "$work/image"
cp /bin/busybox "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
echo "Hello from Skiff!" >"$work/rootfs/www/index.html"
tar --sort=name --owner=0 --group=0 --mtime=@0 -C "$work/rootfs" -cf "$work/image/layer.tar" .
diff_id=$(sha256sum "$work/image/layer.tar" | cut -d' ' -f1)
cat >"$work/image/config.json" <<JSON
{"architecture":"amd64","os":"linux",
 "config":{"Entrypoint":["/bin/sh","-c"],
           "Cmd":["/bin/busybox httpd -f -p \$PORT -h /www & trap 'kill \$!; exit 0' TERM; wait"],
           "Env":["PATH=/bin"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
echo '[{"Config":"config.json","RepoTags":["hello:latest"],"Layers":["layer.tar"]}]' >"$work/image/manifest.json"
tar -C "$work/image" -cf "$work/hello.tar" manifest.json config.json layer.tar

"$BIN" images import "$work/hello.tar"
"$BIN" deploy hello --image hello --allow-unauthenticated
echo
echo "curl http://hello.localhost:8080"
curl -s http://hello.localhost:8080
