"""ADCS logic: registration, read groups, schedules, on-demand reads, time service."""
