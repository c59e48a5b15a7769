"""Processors: stream reassembly, span building, selection."""
