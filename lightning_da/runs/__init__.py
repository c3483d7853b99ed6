"""One module per command, named after it, holding its run: `lightning_da.cli` hands each command's config over."""
