"""MLflow runs -> tidy pandas tables -> shift-robustness summaries, plots, report and notebook.

Modules: `load` (MLflow -> tidy frames), `summaries` (pure pandas tables), `plots` (matplotlib
figures), `report` (summary.md + CSV + PNG; `python analysis/report.py`), `mlflow_ui` (UI links).
No Ray; torch only through `idea.data`, imported lazily by `load.load_shift`.
"""
