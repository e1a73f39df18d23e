#!/usr/bin/env bash
# Installs the pinned packages of package.json from the npm registry (package-lock.json keeps
# their integrity hashes) and copies what the browser loads next to this script, with each
# package's license. Run after changing a version in package.json; commit what it writes.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp package.json "$work/"
[ -f package-lock.json ] && cp package-lock.json "$work/"
(cd "$work" && npm install --no-audit --no-fund --ignore-scripts >/dev/null)
cp "$work/package-lock.json" .
modules="$work/node_modules"
# The source map comments point at files not served; without them browsers ask for nothing.
strip_map() { sed '/^\/\/# sourceMappingURL=/d' "$1" > "$2"; }
strip_map "$modules/graphiql/graphiql.min.js" graphiql.min.js
cp "$modules/graphiql/graphiql.min.css" graphiql.min.css
strip_map "$modules/react/umd/react.production.min.js" react.production.min.js
strip_map "$modules/react-dom/umd/react-dom.production.min.js" react-dom.production.min.js
strip_map "$modules/graphql-ws/umd/graphql-ws.min.js" graphql-ws.min.js
mkdir -p licenses
cp "$modules/graphiql/LICENSE" licenses/graphiql.LICENSE
cp "$modules/react/LICENSE" licenses/react.LICENSE
cp "$modules/react-dom/LICENSE" licenses/react-dom.LICENSE
cp "$modules/graphql-ws/LICENSE.md" licenses/graphql-ws.LICENSE
cp "$modules/graphql/LICENSE" licenses/graphql.LICENSE
echo "vendored: $(node -p "Object.entries(require('$work/package.json').dependencies).map(([n, v]) => n + '@' + v).join(' ')")"
