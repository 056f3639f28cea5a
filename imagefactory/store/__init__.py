"""The local build store (`WORKDIR/store`): finished builds on the build host. Publishing to a
catalogue (a directory or S3/MinIO) is `imagefactory.catalogue`."""
