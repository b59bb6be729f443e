"""Experiments over run folders: `vr compare` (curves, tables, worst classes side by side) and
`vr sweep` (a grid of `vr train` runs, resumable, then compared)."""
