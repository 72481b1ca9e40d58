#!/usr/bin/env bash
# make docker-smoke: build both images, train a bundle, serve it with Redis + 2 API replicas behind
# the gateway, and check what a deployment must do. Prints each step and a summary; exits non-zero
# on the first failure (the stack is torn down either way). Needs a Docker engine and root or the
# docker group; minutes, so not part of .ci/run.
#
# Environment: TORCH_INDEX (trainer build arg; empty: the package index's torch), SMOKE_WHEELS (a
# folder of wheels offered to pip inside the builds, e.g. an offline torch), SMOKE_LOG (a copy of
# the output), SMOKE_EPOCHS (2; on 300 synthetic users: the smoke proves the plumbing, not quality).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} COMPOSE_PROJECT_NAME=causerec-smoke
[ -n "${SMOKE_LOG:-}" ] && exec > >(tee "$SMOKE_LOG") 2>&1

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
env_file=$(mktemp)
cat >"$env_file" <<EOF
REDIS_PASSWORD=smoke-$RANDOM$RANDOM
REDIS_APPENDFSYNC=always
API_REPLICAS=2
API_WORKERS=1
API_PORT=${API_PORT:-18000}
TRAIN_EPOCHS=${SMOKE_EPOCHS:-2}
TRAIN_ARGS=--synthetic-users 300
LOCUST_USERS=8
LOCUST_TIME=15s
EOF
dc() { "${compose[@]}" --env-file "$env_file" "$@"; }
url=http://127.0.0.1:${API_PORT:-18000}
started=$(date +%s)
summary=()
step() { echo; echo "=== [$(($(date +%s) - started))s] $*"; }
ok() { echo "    ok: $*"; summary+=("ok   $*"); }
fail() { echo "    FAILED: $*"; summary+=("FAIL $*"); exit 1; }
finish() {
  code=$?
  step "tear down (volumes included)"
  dc --profile train --profile loadtest down -v --remove-orphans >/dev/null 2>&1 || true
  rm -f "$env_file"
  echo; echo "=== summary ($(date -u '+%Y-%m-%d %H:%M UTC'); $(python3 -c 'import platform;print(platform.node())' 2>/dev/null || true))"
  printf '  %s\n' "${summary[@]}"
  [ "$code" = 0 ] && echo "  PASSED in $(($(date +%s) - started))s" || echo "  FAILED (exit $code)"
}
trap finish EXIT

wait_ready() {  # wait_ready URL SECONDS
  for _ in $(seq $(($2 * 5))); do
    curl -fsS "$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

step "compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || "${compose[@]}" version | sed -n 1p))"
rm -f deploy/wheels/*.whl  # the serving image gets none: a copied wheel would stay in its layers

step "build the serving image (default target)"
docker build --network host -t causerec:serving-cpu-0.1.0 . >/tmp/smoke-build-serving.log 2>&1 \
  || { tail -30 /tmp/smoke-build-serving.log; fail "serving image build"; }
ok "serving image $(docker image inspect -f '{{.Size}}' causerec:serving-cpu-0.1.0 | awk '{printf "%.0f MB", $1/1e6}')"
docker run --rm --entrypoint python causerec:serving-cpu-0.1.0 -c \
  "import service.app, sys; assert 'torch' not in sys.modules; import onnxruntime; print(onnxruntime.get_available_providers())" \
  || fail "serving image imports torch or lacks onnxruntime"
ok "serving image: no torch"

step "build the trainer image (CPU torch) and the gateway"
if [ -n "${SMOKE_WHEELS:-}" ]; then cp "$SMOKE_WHEELS"/*.whl deploy/wheels/; fi
docker build --network host -f deploy/trainer.Dockerfile --build-arg "TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}" \
  -t causerec:trainer-0.1.0 . >/tmp/smoke-build-trainer.log 2>&1 \
  || { tail -30 /tmp/smoke-build-trainer.log; fail "trainer image build"; }
rm -f deploy/wheels/*.whl
ok "trainer image $(docker image inspect -f '{{.Size}}' causerec:trainer-0.1.0 | awk '{printf "%.0f MB", $1/1e6}')"
docker build --network host -f deploy/gateway.Dockerfile -t causerec:gateway-0.1.0 . >/tmp/smoke-build-gateway.log 2>&1 \
  || { tail -30 /tmp/smoke-build-gateway.log; fail "gateway image build"; }
ok "gateway image $(docker image inspect -f '{{.Size}}' causerec:gateway-0.1.0 | awk '{printf "%.0f MB", $1/1e6}')"

step "train + export a bundle (trainer profile)"
dc --profile train run --rm trainer >/tmp/smoke-train.log 2>&1 || { tail -30 /tmp/smoke-train.log; fail "trainer run"; }
ok "bundle $(grep -o '"version": "[0-9a-f]*"' /tmp/smoke-train.log | tail -1 | cut -d'"' -f4) trained and exported"

step "bring up redis + 2 api replicas + gateway"
t0=$(date +%s.%N)
dc up -d gateway >/dev/null 2>&1 || { dc logs --tail 30; fail "compose up"; }
wait_ready "$url" 180 >/dev/null || { dc logs --tail 30 api; fail "gateway not ready"; }
ok "ready through the gateway $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")s after 'up' ($(dc ps -q api | wc -l) api replicas)"
api1=$(dc ps -q api | sed -n 1p)
t0=$(date +%s.%N)
docker restart "$api1" >/dev/null
until docker exec "$api1" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=1)" 2>/dev/null; do
  sleep 0.1
  python3 -c "import sys; sys.exit($(date +%s.%N) - $t0 > 120)" || fail "restarted replica not ready in 120 s"
done
ok "cold start of an api replica (docker restart to /readyz 200): $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
version1=$(curl -fsS "$url/v1/model" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')

step "post events, get recommendations through the gateway"
python3 - "$url" <<'EOF' || fail "events / recommend"
import json, sys, urllib.request
url = sys.argv[1]
def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))
events = [{"user_id": f"smoke{u}", "item_id": f"i{(7 * u + n) % 2000}", "action": "like",
           "timestamp": 1_700_000_000 + n, "event_id": f"smoke-{u}-{n}"} for u in range(20) for n in range(5)]
got = post("/events", {"events": events})
assert got["accepted"] == 100, got
for u in range(20):
    rec = post("/recommend", {"user_id": f"smoke{u}", "k": 10})
    assert len(rec["items"]) == 10 and rec["recent_events"] == 5, rec
print("    100 events acknowledged for 20 users; 20 x 10 recommendations")
EOF
ok "100 events acknowledged, recommendations for every user"

step "restart redis: every acknowledged event is still there"
dc restart redis >/dev/null 2>&1
for _ in $(seq 60); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 1; done
python3 - "$url" <<'EOF' || fail "events lost across a Redis restart"
import json, sys, urllib.request
url = sys.argv[1]
for u in range(20):
    user = json.load(urllib.request.urlopen(f"{url}/users/smoke{u}", timeout=10))
    assert user["events"] == 5 and len(user["recent"]) == 5, user
print("    20 users x 5 events read back after the restart")
EOF
ok "redis restarted (AOF volume): 100/100 acknowledged events kept"

step "locust profile, 15 s, through the gateway"
dc --profile loadtest run --rm locust >/tmp/smoke-locust.log 2>&1 \
  || { tail -30 /tmp/smoke-locust.log; fail "locust reported failures"; }
grep -E '^ *(POST +/(recommend|events)|Aggregated) +[0-9]+ +[0-9]+\(' /tmp/smoke-locust.log | tail -3 | sed 's/^/    /'
# The last request-statistics table (the one with "# fails") is the final one.
ok "locust 15 s: $(grep -E '^ *Aggregated +[0-9]+ +[0-9]+\(' /tmp/smoke-locust.log | tail -1 | awk '{print $2" requests, "$3" failures"}')"

step "the GPU image on this GPU-less machine: serves on the CPU and says so"
docker build --network host --build-arg ORT=gpu -t causerec:serving-gpu-0.1.0 . >/tmp/smoke-build-gpu.log 2>&1 \
  || { tail -30 /tmp/smoke-build-gpu.log; fail "GPU image build"; }
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$api1")
password=$(grep REDIS_PASSWORD "$env_file" | cut -d= -f2)
gpu=$(docker run -d --network "$network" -v "${COMPOSE_PROJECT_NAME}_bundles:/bundles:ro" \
  causerec:serving-gpu-0.1.0 --bundle /bundles/current --redis-url "redis://:$password@redis:6379/0")
for _ in $(seq 120); do
  docker exec "$gpu" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=1)" 2>/dev/null && break
  sleep 0.5
done
device=$(docker exec "$gpu" python -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:8000/v1/model'))['device'])" || true)
warned=$(docker logs "$gpu" 2>&1 | grep -c "CUDA is not active" || true)
providers=$(docker exec "$gpu" python -c "import onnxruntime as o; print(o.get_available_providers())" || true)
docker rm -f "$gpu" >/dev/null
echo "    providers in the image: $providers; serving device: $device; fallback warnings logged: $warned"
[ "$device" = cpu ] && [ "$warned" -ge 1 ] || fail "GPU image did not fall back to the CPU with a warning"
ok "GPU image $(docker image inspect -f '{{.Size}}' causerec:serving-gpu-0.1.0 | awk '{printf "%.0f MB", $1/1e6}'): CUDA provider present, no GPU here: serves on the CPU with a logged warning"

step "hot reload: a second bundle on every replica (SIGHUP)"
dc --profile train run --rm -e TRAIN_SEED=1 trainer >/tmp/smoke-train2.log 2>&1 \
  || { tail -30 /tmp/smoke-train2.log; fail "second trainer run"; }
dc kill -s HUP api >/dev/null 2>&1
sleep 5
versions=$(for c in $(dc ps -q api); do
  docker exec "$c" python -c "import json,urllib.request;print(json.load(urllib.request.urlopen('http://127.0.0.1:8000/v1/model'))['version'])"
done | sort -u)
echo "    before: $version1; replicas now: $(echo $versions)"
[ "$(echo "$versions" | wc -l)" = 1 ] && [ "$versions" != "$version1" ] || fail "replicas did not all reload"
ok "both replicas serve the second bundle $versions (was $version1)"
