"""Point-in-time training sets on Ray Data, from the offline Iceberg tables (docs/training.md)."""
