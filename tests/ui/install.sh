#!/usr/bin/env bash
# Installs what the browser test of the web page (tests/ui/ui.mjs) needs: Debian's Chromium and
# playwright-core, which drives it. Idempotent and silent when all is there, so the integration
# test and CI can call it before every run. Playwright never downloads a browser of its own: the
# machines reach package registries only, so it drives /usr/bin/chromium.
set -euo pipefail

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x /usr/bin/chromium ]]; then
    export DEBIAN_FRONTEND=noninteractive
    # A stale package list is the usual reason the install fails; updating costs time, so only then.
    if ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
fi

module="$here/node_modules/playwright-core"
if [[ ! -d "$module" || "$here/package-lock.json" -nt "$module" ]]; then
    (cd "$here" && npm ci --no-audit --no-fund --silent)
    # npm ci may keep the module's own mtime from the tarball; mark it as installed now.
    touch "$module"
fi
