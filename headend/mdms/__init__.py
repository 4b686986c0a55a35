"""MDMS: ingest into the meter-data store, event routing, exports."""
