"""Cells: projects placed on several PostgreSQL databases, any instance serving any project.

The control database (``DATABASE_URL``) is also the cell ``home`` and holds the directory
(``gateway.cells``, ``gateway.project_cells``, ``gateway.key_cells``, migration 0018);
docs/cells.md describes the design.
"""
