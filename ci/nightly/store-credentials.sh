# shellcheck shell=bash
# Source this (never run it): writes the catalogue store's S3 credentials and the manifest signing
# key from CI secrets into 0600 files, then removes the secrets from the environment, so that no
# build tool (mmdebstrap, packer, qemu, the test suites) inherits them and nothing secret is ever
# on a command line. Point the configuration ($IMAGEFACTORY_CONFIG) at the files:
#
#   stores:   {nightly: {type: s3, ..., credentials_file: /run/imagefactory/s3-credentials.yaml}}
#   signing:  {public_key: ..., private_key: /run/imagefactory/signing.key}
#
# Inputs (all optional; a job without them only reads a public or local catalogue):
#   NIGHTLY_S3_ACCESS_KEY, NIGHTLY_S3_SECRET_KEY, NIGHTLY_S3_SESSION_TOKEN   masked CI variables
#   NIGHTLY_SIGNING_KEY      path of a file holding the PEM private key (a GitLab "File" variable;
#                            the GitHub workflow writes the key file itself) - publishing jobs only
#   IMAGEFACTORY_CREDENTIALS_FILE (default /run/imagefactory/s3-credentials.yaml)
#   IMAGEFACTORY_SIGNING_KEY_FILE (default /run/imagefactory/signing.key)

: "${IMAGEFACTORY_CREDENTIALS_FILE:=/run/imagefactory/s3-credentials.yaml}"
: "${IMAGEFACTORY_SIGNING_KEY_FILE:=/run/imagefactory/signing.key}"

if [ -n "${NIGHTLY_S3_ACCESS_KEY:-}" ] || [ -n "${NIGHTLY_S3_SECRET_KEY:-}" ]; then
  install -d -m 0700 "$(dirname "$IMAGEFACTORY_CREDENTIALS_FILE")"
  # JSON is YAML; python reads the secrets from its environment (not argv) and quotes them safely.
  (umask 077 && python3 -c '
import json, os, sys
doc = {"access_key": os.environ["NIGHTLY_S3_ACCESS_KEY"], "secret_key": os.environ["NIGHTLY_S3_SECRET_KEY"]}
if os.environ.get("NIGHTLY_S3_SESSION_TOKEN"):
    doc["session_token"] = os.environ["NIGHTLY_S3_SESSION_TOKEN"]
with open(sys.argv[1], "w") as f:
    json.dump(doc, f)
' "$IMAGEFACTORY_CREDENTIALS_FILE")
  chmod 0600 "$IMAGEFACTORY_CREDENTIALS_FILE"
fi
unset NIGHTLY_S3_ACCESS_KEY NIGHTLY_S3_SECRET_KEY NIGHTLY_S3_SESSION_TOKEN

if [ -n "${NIGHTLY_SIGNING_KEY:-}" ]; then
  install -d -m 0700 "$(dirname "$IMAGEFACTORY_SIGNING_KEY_FILE")"
  install -m 0600 "$NIGHTLY_SIGNING_KEY" "$IMAGEFACTORY_SIGNING_KEY_FILE"
fi
unset NIGHTLY_SIGNING_KEY
