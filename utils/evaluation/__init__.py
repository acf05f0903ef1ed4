"""The paper's metrics and their printed report."""
from utils.evaluation.metrics import MetricsError, Report, evaluate  # noqa: F401
from utils.evaluation.report import format_report, report_to_dict  # noqa: F401
