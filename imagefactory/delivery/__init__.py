"""Delta delivery to disconnected sites: images as signed lists of content-defined chunks
(`chunks`), sites and what they hold, plans, bundles and their import (`sites`)."""
