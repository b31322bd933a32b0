"""MLflow runs -> tidy pandas tables -> shift-robustness summaries, plots, report and notebook.

Modules: `load` (MLflow -> tidy frames), `summaries` (pure pandas tables), `plots` (matplotlib
figures), `report` (summary.md + CSV + PNG; `python -m analysis.report`), `mlflow_ui` (UI links).
Reads MLflow only: imports neither Ray nor torch nor `idea`, bar its standard-library argument parser
(`idea.argparsing`) and naming contract (`idea.contract`, the names `studies` writes by).
"""
