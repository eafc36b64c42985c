"""Hydra configs of the optlab app (a package so that Hydra finds them once installed)."""
