"""The paper's metrics and their printed report."""
from pipeline.data.labels import TableRows
from utils.evaluation.metrics import MetricsError, Report  # noqa: F401
from utils.evaluation.metrics import evaluate as evaluate_dense
from utils.evaluation.report import format_report, report_to_dict  # noqa: F401


def evaluate(scores, targets, threshold: float = 0.5, voc=None, paths=None, pr_convention: str = "ours") -> Report:
    """``metrics.evaluate`` for a target matrix; ``sparse.evaluate_table`` for a table's rows
    (``pipeline.data.labels.TableRows``: OpenImages-size data), which gives the same numbers."""
    if isinstance(targets, TableRows):
        from utils.evaluation.sparse import evaluate_table
        return evaluate_table(scores, targets.table, targets.rows, threshold, pr_convention, paths)
    return evaluate_dense(scores, targets, threshold, voc, paths, pr_convention)
