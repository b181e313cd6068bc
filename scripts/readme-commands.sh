#!/usr/bin/env bash
# Runs the shell commands of README.md, so that the README cannot promise a
# command that does not work. Every line of every ```sh block is either run
# here, against a daemon this script starts, or named with the place that
# exercises it instead; a line that is neither fails the script, so a new
# README command forces a decision. The ```sql blocks (runbook queries) run
# against the daemon's database too.
#
#   scripts/readme-commands.sh          # run them (needs PostgreSQL, RabbitMQ, curl, psql)
#   scripts/readme-commands.sh --list   # only say what would happen to each
#
# Isolation: the daemon gets a database, an amqp.prefix, HTTP and simulator
# ports and a key directory of its own (the README's 127.0.0.1:8080,
# 127.0.0.1:8090 and `-d payrecon` are rewritten to them), so the script runs
# beside other daemons and tests; all of it is removed at the end, also on
# failure. The binary is $PAYRECON_BIN, else target/debug/payrecon (built if
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# What happens to a README command line: "run", or "skip: <where it is exercised>".
disposition() {
  case "$1" in
    "cargo run --release -- run"*) echo "skip: the daemon itself; this script starts it as \`payrecon run\`" ;;
    "cargo test"*) echo "skip: .ci/run runs it" ;;
    "payrecon gateway-sim"* | "PAYRECON__SIMULATOR__EMBEDDED=false"*) echo "skip: long-running; tests/shared_simulator/binary.rs runs gateway-sim and two \`payrecon run\` with embedded=false" ;;
    "payrecon dlq replay --id"*) echo "skip: the id is an example; tests/dlq.rs replays by id" ;;
    "cargo run --release -- demo"*) echo "skip: tests/demo.rs runs \`payrecon demo\` (the same binary, a debug build)" ;;
    "docker compose"*) echo "skip: needs a Docker engine; this script checks compose.yaml with \`docker compose config\` when a compose client is installed" ;;
    *"--bill-file"*) echo "skip: needs a bill file from the gateway's portal; tests/recon.rs runs --bill-file on real-format files" ;;
    "curl "* | "payrecon "* | "ORDER_ID="* | "RUN_ID="* | "rabbitmqctl list_queues"*) echo "run" ;;
    *) echo "unclassified" ;;
  esac
}

# Every command line of the README's ```sh blocks, as "BLOCK<TAB>LINE".
extract() {
  awk '
    /^```sh[[:space:]]*$/ { inside = 1; block++; next }
    /^```/ { inside = 0; next }
    inside && $0 !~ /^[[:space:]]*(#|$)/ { printf "%d\t%s\n", block, $0 }
  ' "$ROOT/README.md"
}

LIST_ONLY=false
[ "${1:-}" = "--list" ] && LIST_ONLY=true

unclassified=0
while IFS=$'\t' read -r block line; do
  d=$(disposition "$line")
  if [ "$d" = unclassified ]; then
    unclassified=$((unclassified + 1))
    echo "UNCLASSIFIED (block $block): $line" >&2
  elif $LIST_ONLY; then
    printf '%-5s block %s: %s\n' "${d%%:*}" "$block" "$line"
    [ "$d" = run ] || printf '      %s\n' "${d#skip: }"
  fi
done < <(extract)
if [ "$unclassified" -gt 0 ]; then
  echo "add the lines above to disposition() in $0" >&2
  exit 1
fi
$LIST_ONLY && exit 0

log() { printf '\n== %s\n' "$*"; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

BIN=${PAYRECON_BIN:-$ROOT/target/debug/payrecon}
if [ ! -x "$BIN" ]; then
  log "building the binary"
  cargo build --bin payrecon
fi

ID="readme_$(date +%s)_$$"
WORK=$(mktemp -d)
HTTP_PORT=$(free_port)
SIM_PORT=$(free_port)
mkdir -p "$WORK/bin"
ln -s "$BIN" "$WORK/bin/payrecon"

export PAYRECON__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$ID"
export PAYRECON__AMQP__PREFIX="$ID"
export PAYRECON__HTTP__LISTEN="127.0.0.1:$HTTP_PORT"
export PAYRECON__SIMULATOR__LISTEN="127.0.0.1:$SIM_PORT"
export PAYRECON__SIMULATOR__KEYS_DIR="$WORK/sim-keys"
export PAYRECON__GATEWAYS__WECHAT_PAY__NOTIFY_URL="http://127.0.0.1:$HTTP_PORT/notify/wechat_pay"
export PAYRECON__GATEWAYS__ALIPAY__NOTIFY_URL="http://127.0.0.1:$HTTP_PORT/notify/alipay"

DAEMON=""
cleanup() {
  status=$?
  if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
    kill -TERM "$DAEMON" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DAEMON" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -f "$WORK/daemon.log" ]; then
    echo "-- the daemon's last log lines:" >&2
    tail -n 30 "$WORK/daemon.log" >&2 || true
  fi
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS \"$ID\" WITH (FORCE)" >/dev/null 2>&1 || true
  python3 "$ROOT/scripts/amqp.py" delete-queue "$ID.requests" "$ID.notifications" "$ID.requests.dlq" "$ID.notifications.dlq" || true
  python3 "$ROOT/scripts/amqp.py" delete-exchange "$ID.events" "$ID.dlx" || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

log "the daemon: database and prefix $ID, HTTP 127.0.0.1:$HTTP_PORT, simulator 127.0.0.1:$SIM_PORT"
(cd "$WORK" && exec "$BIN" run) >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
ready=false
for _ in $(seq 1 240); do
  if curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; then ready=true; break; fi
  kill -0 "$DAEMON" 2>/dev/null || break
  sleep 0.5
done
$ready || { echo "the daemon did not become ready" >&2; exit 1; }

log "an order, placed the way an upstream app does (docs/contract.md §3.1)"
python3 "$ROOT/scripts/amqp.py" publish "$ID.requests" \
  '{"type":"order.place","request_id":"readme-order-1","data":{"user_id":"u1","items":[{"product_id":"p1","quantity":2,"unit_price":1999}],"currency":"CNY","payment_method":"wechat_pay"}}'
for _ in $(seq 1 120); do
  n=$(psql -h 127.0.0.1 -U postgres -d "$ID" -Atc "SELECT count(*) FROM orders" 2>/dev/null || echo 0)
  [ "$n" -ge 1 ] && break
  sleep 0.5
done
[ "$n" -ge 1 ] || { echo "the order did not arrive" >&2; exit 1; }

log "compose.yaml"
if docker compose version >/dev/null 2>&1; then
  docker compose -f "$ROOT/compose.yaml" --profile monitoring config -q
elif command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f "$ROOT/compose.yaml" --profile monitoring config -q
else
  echo "no compose client: compose.yaml not checked here"
fi

# Each block runs as one script (a variable set on one line is used on the
# next), with curl failing on an HTTP error so a 503 or 404 fails the block.
ran=0
skipped=0
for block in $(extract | cut -f1 | sort -un); do
  script="$WORK/block-$block.sh"
  {
    echo 'curl() { command curl --fail-with-body "$@"; }'
    while IFS=$'\t' read -r b line; do
      [ "$b" = "$block" ] || continue
      d=$(disposition "$line")
      if [ "$d" = run ]; then
        line=${line//127.0.0.1:8080/127.0.0.1:$HTTP_PORT}
        line=${line//127.0.0.1:8090/127.0.0.1:$SIM_PORT}
        line=${line//-d payrecon /-d $ID }
        printf '%s\n' "$line"
        ran=$((ran + 1))
      else
        printf ': %q  # %s\n' "$line" "$d"
        skipped=$((skipped + 1))
      fi
    done < <(extract)
  } >"$script"
  log "README block $block"
  (cd "$WORK" && PATH="$WORK/bin:$PATH" bash -v -euo pipefail "$script")
done

# The runbook's ```sql blocks, against the daemon's schema: a renamed column
# would otherwise leave an operator with a query that fails mid-incident.
sql=0
while IFS= read -r -d '' query; do
  log "README sql block"
  printf '%s\n' "$query"
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d "$ID" -c "$query" >/dev/null
  sql=$((sql + 1))
done < <(awk '
  /^```sql[[:space:]]*$/ { inside = 1; text = ""; next }
  inside && /^```/ { inside = 0; printf "%s%c", text, 0; next }
  inside { text = text $0 "\n" }
' "$ROOT/README.md")

log "done: $ran README commands ran, $sql sql blocks ran, $skipped commands exercised elsewhere (scripts/readme-commands.sh --list)"
