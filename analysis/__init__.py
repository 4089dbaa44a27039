"""Comparison reports: does algorithm A solve a task in fewer episodes than B, and how sure are we?

Data, then functions, then plots: :mod:`analysis.collect` reads MLflow runs into tidy tables,
:mod:`analysis.stats` holds pure statistics (unsolved runs kept as right-censored),
:mod:`analysis.plots` draws them and :mod:`analysis.report` writes the HTML/Markdown page.
"""
