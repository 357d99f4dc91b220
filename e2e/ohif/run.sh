#!/usr/bin/env bash
# OHIF end to end: a real Tessera (CORS on) loaded with ../shared/testdata, OHIF's prebuilt
# viewer from npm served on loopback, headless Debian Chromium driven by playwright-core.
# Usage: bash e2e/ohif/run.sh [TESSERA_BINARY]   (default target/debug/tessera; build it first)
# Installs what is missing: @ohif/app and playwright-core from npm into .tools/ohif (kept), and
# Debian's chromium when /usr/bin/chromium is missing. Stops everything it started; ≤ 3 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.1
tessera=$(realpath "${1:-target/debug/tessera}")
testdata=$(realpath "${TESSERA_TESTDATA:-../shared/testdata}")
tools=.tools/ohif

# @ohif/app ships its built viewer in dist/; its npm dependencies are only needed to rebuild it,
# so the package itself is unpacked rather than installed.
if [ ! -f "$tools/$OHIF_VERSION/package/dist/index.html" ]; then
  echo "== fetching @ohif/app@$OHIF_VERSION from npm"
  mkdir -p "$tools/$OHIF_VERSION"
  (cd "$tools/$OHIF_VERSION" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null && tar xzf ohif-app-*.tgz && rm ohif-app-*.tgz)
fi
if [ ! -d "$tools/playwright/node_modules/playwright-core" ]; then
  echo "== installing playwright-core@$PLAYWRIGHT_VERSION from npm"
  npm install --silent --no-audit --no-fund --prefix "$tools/playwright" "playwright-core@$PLAYWRIGHT_VERSION"
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian's chromium"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi

workdir=$(mktemp -d -t tessera-ohif.XXXXXX)
tessera_pid=
cleanup() {
  if [ -n "$tessera_pid" ]; then kill "$tessera_pid" 2>/dev/null || true; wait "$tessera_pid" 2>/dev/null || true; fi
  rm -rf "$workdir"
}
trap cleanup EXIT

# Tessera on a free loopback port, with CORS for any origin (the viewer's port is not known yet).
(cd "$workdir" && DicomServer__Cors__Origins__0='*' RUST_LOG=info \
  exec "$tessera" serve --listen 127.0.0.1:0 >"$workdir/tessera.log" 2>&1) &
tessera_pid=$!
address=
for _ in $(seq 1 150); do
  address=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$workdir/tessera.log" 2>/dev/null | head -1 || true)
  [ -n "$address" ] && break
  sleep 0.2
done
if [ -z "$address" ]; then echo "error: Tessera did not start:" >&2; cat "$workdir/tessera.log" >&2; exit 1; fi
url="http://$address"
echo "== Tessera on $url"

# The samples: every distinct instance (the transfer-syntax set shares one SOP Instance UID, so
# one of them).
for f in blue-circle.dcm green-square.dcm red-triangle.dcm case1_008.dcm XRJPEGProcess1.dcm \
  layer1.dcm layer9.dcm transfer-syntaxes/JPEGProcess1.dcm; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/dicom' \
    --data-binary "@$testdata/$f" "$url/v2/studies")
  case "$status" in 200|202) ;; *) echo "error: storing $f answered $status" >&2; exit 1 ;; esac
done

# What the viewer must show, from Tessera's own QIDO.
python3 - "$url" >"$workdir/studies.json" <<'PY'
import json, sys, urllib.request
base = sys.argv[1]
def get(path):
    with urllib.request.urlopen(urllib.request.Request(base + path, headers={"Accept": "application/dicom+json"})) as r:
        return json.loads(r.read() or b"[]")
def value(item, tag, default=""):
    v = item.get(tag, {}).get("Value", [default])[0]
    return v.get("Alphabetic", "") if isinstance(v, dict) else str(v)
studies = []
for s in get("/v2/studies?includefield=all"):
    uid = value(s, "0020000D")
    series = get(f"/v2/studies/{uid}/series?includefield=all")
    modalities = {value(x, "00080060") for x in series}
    studies.append({
        "uid": uid,
        "patientName": value(s, "00100010"),
        "modalities": sorted(modalities),
        "series": [value(x, "0008103E") or value(x, "00080060") for x in series],
        # Plain image studies to open (not whole-slide microscopy, which OHIF opens in another mode).
        "open": modalities in ({"MR"}, {"CR"}),
    })
json.dump(studies, sys.stdout)
PY
echo "== $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$workdir/studies.json") studies stored"

mkdir -p target/ohif
PLAYWRIGHT_CORE="$PWD/$tools/playwright/node_modules/playwright-core" \
  timeout 170 node e2e/ohif/ohif.mjs "$tools/$OHIF_VERSION/package/dist" "$url" "$workdir/studies.json" "$PWD/target/ohif"
