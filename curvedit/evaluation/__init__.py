"""Measuring editors against each other on generators whose truth is known."""
