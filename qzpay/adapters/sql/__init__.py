"""What the SQL adapters share: the schema builder, compiled statements, row converters, migrations."""
