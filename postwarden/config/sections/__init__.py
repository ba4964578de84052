"""One settings module per service block (see `postwarden.config.schema`)."""
