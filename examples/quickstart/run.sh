#!/usr/bin/env bash
# Runs rvs on this directory with two `rvs echo` backends (pods hello-a and hello-b).
# No cluster, no root. Then, in another terminal: curl http://127.10.0.1:8080/ (L4), or
# curl -H "Host: hello.local" http://127.0.0.1:8880/ (the L7 gateway, Ingress hello).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
cargo build -q -p rvs
bin=target/debug/rvs
"$bin" echo --name hello-a --listen 127.0.0.1:18081 --udp 127.0.0.1:18091 &
"$bin" echo --name hello-b --listen 127.0.0.1:18082 --udp 127.0.0.1:18092 &
trap 'kill $(jobs -p) 2>/dev/null' EXIT
"$bin" run -f "$here" --admin 127.0.0.1:9090 --nodeport-addresses 127.0.0.1/32 \
    --http-listen 127.0.0.1:8880 --https-listen 127.0.0.1:8443 "$@"
