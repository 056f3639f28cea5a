"""Image stores: the local directory store now; S3/MinIO comes with publishing."""
