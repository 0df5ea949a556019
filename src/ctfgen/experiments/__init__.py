"""Experiments: each runs the pipeline end to end for a result (a report, a table, a figure) on a
`Workspace` (workspace.py): the demo, the quality bench, the scaling study (with the long
study, scaling/lasting/) and the codebook analysis."""
