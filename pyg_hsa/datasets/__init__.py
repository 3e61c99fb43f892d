"""Datasets built offline from data shipped inside installed packages."""
