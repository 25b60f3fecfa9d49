"""Annotated images and slides: finding them, reading their points, cutting them into sources."""
