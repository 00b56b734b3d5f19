"""Video sampling, dataset ingest, model-ready shards and the synthetic long-video benchmark."""
