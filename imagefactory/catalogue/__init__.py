"""Publishing: the image catalogue on a store (a directory or S3/MinIO), channels, SBOM, signatures.

- `stores`: the `BlobStore` protocol, `LocalDirStore`, `open_store` (configuration + environment);
- `s3`: `S3Store` through the MinIO SDK (resumable verified multipart uploads, retries, lease lock);
- `manifest`: the published manifest model, image references, durations;
- `signing`: ed25519 keys, canonical-JSON manifest signatures;
- `sbom`: CycloneDX JSON from the build's package list plus RKE2/Zarf components;
- `catalogue`: layout, commit order, index, channels, revoke, prune, index.html, and the consumer
  side (`verify_for_consumer`, `pull`, `verify_image`, `presigned_url`);
- `publish`: a build directory -> blobs + signed manifest + index.

The local build store (`imagefactory.store.local`, `WORKDIR/store`) is a different thing: it
indexes finished builds on the build host; publishing copies a build from there into a catalogue.
"""

from .catalogue import Catalogue, PublishedImage, RevokedImage, pull, verify_for_consumer, verify_image
from .publish import PublishResult, publish
from .signing import SignatureError
from .stores import BlobStore, LocalDirStore, open_store

__all__ = ["BlobStore", "Catalogue", "LocalDirStore", "PublishResult", "PublishedImage", "RevokedImage",
           "SignatureError", "open_store", "publish", "pull", "verify_for_consumer", "verify_image"]
