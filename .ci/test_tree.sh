#!/usr/bin/env bash
# Usage: .ci/test_tree.sh DEST
# Copy the checkout without the timm_cct/ package into DEST, so that tests run there import the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$1
rm -rf "$dest"
mkdir -p "$dest"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | grep -zv '^timm_cct/' \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 cp --parents -t "$dest"
else
    tar -cf - --exclude=./timm_cct --exclude=./.git --exclude=./.timm-tests --exclude=./dist --exclude=./build . \
        | tar -xf - -C "$dest"
fi
