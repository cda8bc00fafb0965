"""Click commands, one module per pipeline area; each imports the heavy library lazily."""
