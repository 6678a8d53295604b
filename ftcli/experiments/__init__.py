"""The paper's experiments as library functions: the engine of `ft ablate` and `scripts/*.sh`.

- `intervene`  Table 1: the causal intervention.
- `text`       Sec. 5.2 / Fig. 3: answer formats and token classes (teacher-forced text).
- `overhead`   Table 6: step time and credit time, none vs flow (fused / separate pass).
- `variants`, `sweep`  Tables 2-5, 7, Figs. 4-6: training sweeps (train, evaluate, aggregate).
- `stats`, `common`, `config`  statistics, shared helpers, every experiment's settings.

Every experiment writes JSON (and CSV) under its `out` folder, plus PNGs (`ftcli.experiments.plots`).
"""
