#!/bin/sh
# Creates deploy/.env (from .env.example) and deploy/secrets/ for docker-compose.yml, once: every empty secret
# in .env gets a random value, and the signing key and an admin API token are generated. Nothing that exists
# is overwritten, so running it again is safe. Needs openssl.
set -eu
cd "$(dirname "$0")"
umask 077
[ -f .env ] || cp .env.example .env

fill() {  # fill NAME VALUE: set NAME=VALUE in .env where NAME is still empty
  if grep -q "^$1=\$" .env; then
    sed -i.bak "s|^$1=\$|$1=$2|" .env && rm -f .env.bak
  fi
}
fill LETHE_SUBJECT_KEY "$(openssl rand -hex 32)"
fill LETHE_EVENT_KEY "$(openssl rand -hex 32)"
fill POSTGRES_PASSWORD "$(openssl rand -hex 24)"
fill MINIO_ROOT_PASSWORD "$(openssl rand -hex 24)"
fill FLOWER_BASIC_AUTH "admin:$(openssl rand -hex 16)"

mkdir -p secrets
[ -f secrets/signing-key.pem ] || openssl genpkey -algorithm ed25519 -out secrets/signing-key.pem
if [ ! -f secrets/api-tokens ]; then
  printf '%s admin first-admin\n' "$(openssl rand -hex 32)" > secrets/api-tokens
  echo "an admin API token is in deploy/secrets/api-tokens"
fi
# Compose bind-mounts secret files as they are: the containers' user (uid 10001) must be able to read them.
# The directory stays 0700, so no other user of this host can.
chmod 0700 secrets
chmod 0444 secrets/signing-key.pem secrets/api-tokens
echo "deploy/.env and deploy/secrets/ are ready; back up LETHE_SUBJECT_KEY and the signing key"
