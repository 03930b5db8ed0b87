#!/usr/bin/env bash
# logferry on embedded defaults, end to end, on one machine:
#   1. builds the release binaries (the backend, the plugin, the flb-host driver);
#   2. starts `logferry serve` (TLS on 127.0.0.1:7777, dev tenant, data in
#      ./logferry-data, or $LOGFERRY_DATA_DIR);
#   3. ships sample logs into it through the real plugin, loaded and driven the way
#      Fluent Bit does it (flb-host), and through `logferry send`;
#   4. shows where the records landed, then keeps serving until Ctrl-C.
#
# With Fluent Bit installed, step 3 is instead:
#   set -a; . logferry-data/dev-credentials.env; set +a
#   LOGFERRY_SPOOL_DIR=$PWD/logferry-data/agent-spool \
#     fluent-bit -e target/release/libout_logferry.so -c fluent-bit-conf/fluent-bit.conf
set -euo pipefail
cd "$(dirname "$0")/.."

data=${LOGFERRY_DATA_DIR:-./logferry-data}
listen=${LOGFERRY_LISTEN:-127.0.0.1:7777}
lines=${QUICKSTART_LINES:-100000}
bin=target/release

echo "==> building (cargo build --release --workspace)"
cargo build --release --workspace

mkdir -p "$data"
serve_log="$data/serve.log"
rm -f "$data/dev-credentials.env"
echo "==> starting logferry serve --data-dir $data --listen $listen (log: $serve_log)"
"$bin/logferry" serve --data-dir "$data" --listen "$listen" 2> >(tee "$serve_log" >&2) &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 300); do
  grep -q "listening on" "$serve_log" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "logferry serve exited; see $serve_log" >&2; exit 1; }
  sleep 0.1
done
grep -q "listening on" "$serve_log" || { echo "logferry serve did not start in 30s" >&2; exit 1; }

sample=$(mktemp)
trap 'rm -f "$sample"; kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true' EXIT INT TERM
awk -v n="$lines" 'BEGIN { for (i = 1; i <= n; i++)
  printf "%s level=info msg=\"quickstart event %d\" user=u%d latency_ms=%d\n", "2026-01-01T00:00:00Z", i, i % 97, i % 250 }' > "$sample"

count_records() {
  [ -d "$data/files" ] || { echo 0; return; }
  find "$data/files" -name '*.jsonl' -exec cat {} + | wc -l
}
before=$(count_records)

echo "==> shipping $lines lines through the plugin (libout_logferry.so, driven like Fluent Bit)"
"$bin/flb-host" --plugin "$bin/libout_logferry.so" \
  --env-file "$data/dev-credentials.env" \
  --buffer-path "$data/agent-spool" \
  --lines "$sample" --tag quickstart.plugin >/dev/null

echo "==> shipping the same $lines lines with logferry send"
set -a; . "$data/dev-credentials.env"; set +a
"$bin/logferry" send "$sample" --tag quickstart.send

# Acked means stored durably in the buffer; the router writes the files right after.
want=$((before + 2 * lines))
for _ in $(seq 1 600); do
  [ "$(count_records)" -ge "$want" ] && break
  sleep 0.1
done
echo
echo "==> records in the file sink ($data/files/<tenant>/<access key>/):"
find "$data/files" -name '*.jsonl' -exec wc -l {} +
echo
echo "==> the first record:"
head -n 1 "$(find "$data/files" -name '*.jsonl' | head -n 1)"
echo
echo "==> logferry verify: the sink files against their hash chains (signed every 10 s)"
"$bin/logferry" verify --data-dir "$data" || true
echo
echo "logferry serve keeps running; Ctrl-C stops it."
wait "$serve_pid"
