"""`fp4lab compare` (many runs, same data/schedule/initial weights) and `fp4lab report`."""
from fp4lab.experiments.compare import compare, parse_recipes
from fp4lab.experiments.report import write_report

__all__ = ["compare", "parse_recipes", "write_report"]
