#!/usr/bin/env bash
# Smoke test of the built image (make image-smoke): inside a container of
# IMAGE, `relay version` must print the same line as bin/relay,
# `relay serve` must answer /healthz on loopback, and the image's
# HEALTHCHECK (relay healthcheck on /readyz) must pass while it serves and
# fail once it is gone. buildah runs it with chroot
# isolation and the host network, so the relay binds 127.0.0.1 only.
set -euo pipefail
IMAGE=${1:?image}; BIN=${2:?bin/relay}; BUILDAH=${BUILDAH:-buildah --storage-driver vfs}
ctr=$($BUILDAH from -q "$IMAGE")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; $BUILDAH rm "$ctr" >/dev/null; }
trap cleanup EXIT

want=$("$BIN" version)
got=$($BUILDAH run --isolation chroot "$ctr" -- /relay version)
[ "$got" = "$want" ] || { echo "image: relay version says '$got', bin/relay says '$want'"; exit 1; }
echo "image: $got"

port=$(( 20000 + RANDOM % 20000 ))
log=$(mktemp)
$BUILDAH run --isolation chroot "$ctr" -- /relay serve --insecure-listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if body=$(curl -fsS "http://127.0.0.1:$port/healthz" 2>/dev/null); then break; fi
  sleep 0.1
done
echo "image: /healthz -> ${body:-nothing}"
grep -q '"status":"ok"' <<<"${body:-}" || { echo "image: serve smoke test failed; relay log:"; cat "$log"; exit 1; }
grep -q '"event":"started"' "$log" || { echo "image: no started line in the relay's log"; cat "$log"; exit 1; }

# The image's own HEALTHCHECK command (scratch has no curl: relay
# healthcheck), run as the image configures it, against this relay's
# metrics listener (the image's RELAY_METRICS_LISTEN, 127.0.0.1:9090).
mapfile -t hcargs < <($BUILDAH inspect --type image --format '{{range .Docker.Config.Healthcheck.Test}}{{println .}}{{end}}' "$IMAGE")
echo "image: HEALTHCHECK ${hcargs[*]:-none}"
[ "${hcargs[0]:-}" = CMD ] && [ "${hcargs[2]:-}" = healthcheck ] || { echo "image: no CMD relay healthcheck HEALTHCHECK (docker format?)"; exit 1; }
hcargs=("${hcargs[@]:1}")
ok=""
for _ in $(seq 1 50); do
  if $BUILDAH run --isolation chroot "$ctr" -- "${hcargs[@]}" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { echo "image: the HEALTHCHECK command did not pass against a serving relay"; cat "$log"; exit 1; }
echo "image: HEALTHCHECK passes while the relay is ready"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
if $BUILDAH run --isolation chroot "$ctr" -- "${hcargs[@]}" >/dev/null 2>&1; then
  echo "image: the HEALTHCHECK command passed with no relay running"; exit 1
fi
echo "image: HEALTHCHECK fails with the relay gone"

# Autocert in production mode: the relay (uid 65532, no capabilities) must
# accept the image's /var/lib/relay/certs (0700, its own) as its cache and
# start listening; RELAY_PRODUCTION=1 refuses root or extra capabilities.
p1=$(( port + 1 )); p2=$(( port + 2 ))
$BUILDAH run --isolation chroot -e RELAY_PRODUCTION=1 "$ctr" -- /relay serve --domain relay.example.test \
  --cert-cache /var/lib/relay/certs --https-listen "127.0.0.1:$p1" --http-listen "127.0.0.1:$p2" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q '"event":"started"' "$log" && break; sleep 0.1; done
grep -q '"event":"started"' "$log" || { echo "image: autocert start as uid 65532 failed; relay log:"; cat "$log"; exit 1; }
echo "image: autocert (RELAY_PRODUCTION=1, cache /var/lib/relay/certs) started"
rm -f "$log"
echo "image: smoke test passed"
